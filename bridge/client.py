"""The client library under its short name: ``from bridge.client import HeartbeatClient``."""

from .container.client import *  # noqa: F403
from .container.client import __all__  # noqa: F401
