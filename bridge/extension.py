"""The per-app bundle of settings, store, monitor and metrics registry."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app
from prometheus_client import CollectorRegistry

from .config import Settings
from .monitor import Monitor
from .reaper import Reaper
from .validation import Limits

__all__ = ["Bridge", "current_bridge"]

EXTENSION_KEY = "heartbeat_bridge"


@dataclass
class Bridge:
    """What the views need; one per app, kept in ``app.extensions``."""

    settings: Settings
    monitor: Monitor
    registry: CollectorRegistry
    reaper: Reaper
    limits: Limits


def current_bridge() -> Bridge:
    """Return the :class:`Bridge` of the app handling the current request."""
    return current_app.extensions[EXTENSION_KEY]
