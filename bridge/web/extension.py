"""The per-app bundle of settings, store, monitor, metrics registry and background work."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import current_app

from ..store import StoreUnavailable

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from ..service.alertmanager import AlertmanagerView
    from ..service.config import Settings
    from ..service.monitor import Monitor
    from ..service.reaper import Reaper
    from ..telemetry.metrics import Exposition
    from .auth import Authorizer
    from .validation import Limits

__all__ = ["Bridge", "current_bridge"]

log = logging.getLogger(__name__)

EXTENSION_KEY = "heartbeat_bridge"


@dataclass
class Bridge:
    """What the views need; one per app, kept in ``app.extensions``."""

    settings: Settings
    monitor: Monitor
    exposition: Exposition
    reaper: Reaper
    limits: Limits
    authorizer: Authorizer
    tracer_provider: TracerProvider | None = None
    #: the alerts the status pages show, with BRIDGE_ALERTMANAGER_URL
    alertmanager: AlertmanagerView | None = None

    def start(self) -> None:
        """Start this process's background work: tracing from ``OTEL_*``, then the reaper.

        Called once per gunicorn worker after the fork, so no thread or exporter
        connection is ever inherited. Raises :class:`~bridge.telemetry.tracing.TracingConfigError`.
        """
        from ..telemetry import tracing  # the OpenTelemetry SDK loads only where tracing may run

        if self.monitor.spans is None:
            self.tracer_provider = tracing.provider_from_env(
                on_export_failure=lambda spans: self.monitor.telemetry_error("export", spans)
            )
            if self.tracer_provider is not None:
                self.monitor.spans = tracing.ExecutionSpans(
                    self.tracer_provider, on_error=lambda: self.monitor.telemetry_error("build")
                )
        try:
            self.monitor.refresh_tasks_file()
        except StoreUnavailable as exc:  # the reaper's rounds try again
            log.warning("could not apply BRIDGE_TASKS_FILE yet: %s", exc)
        self.reaper.start()

    def stop(self) -> None:
        """Stop the reaper, then flush and close the exporters."""
        self.reaper.stop()
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()


def current_bridge() -> Bridge:
    """Return the :class:`Bridge` of the app handling the current request."""
    return current_app.extensions[EXTENSION_KEY]
