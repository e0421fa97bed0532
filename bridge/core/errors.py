"""The bridge's errors: one root, :class:`BridgeError`, and one class per kind of refusal.

Every layer raises these and only these for what it refuses; the stores translate their
backends' errors into :class:`StoreUnavailable` in one place each, and the web surface maps
each class to its HTTP status in one table (:mod:`bridge.web.errors`). ``field`` names the
input at fault, ``reason`` is the label the refusal is counted under in
``bridge_requests_rejected_total``.
"""

from __future__ import annotations

__all__ = [
    "BridgeError",
    "CapacityError",
    "ConfigError",
    "Conflict",
    "Forbidden",
    "InvalidInput",
    "InvalidJSON",
    "NotFound",
    "RequestTimeout",
    "StoreUnavailable",
    "TooLarge",
    "Unauthorized",
    "UnsupportedMediaType",
]


class BridgeError(Exception):
    """Anything the bridge refuses or cannot do: ``message`` for people, ``field`` at fault,
    ``reason`` as counted."""

    reason = "error"

    def __init__(self, message: str, field: str | None = None, *, reason: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        if reason is not None:
            self.reason = reason


class InvalidInput(BridgeError):
    """A value is missing, of the wrong type, or outside its rule."""

    reason = "invalid_field"


class InvalidJSON(InvalidInput):
    """The body is not JSON (or an envelope) the bridge can read."""

    reason = "invalid_json"


class TooLarge(InvalidInput):
    """A body, a field or a batch is larger than its rule allows."""

    reason = "too_large"


class UnsupportedMediaType(BridgeError):
    """The body's type or encoding is not one the endpoint reads."""

    reason = "unsupported_media_type"


class RequestTimeout(BridgeError):
    """The body did not arrive in time."""

    reason = "timeout"


class Unauthorized(BridgeError):
    """No credential, or a wrong one."""

    reason = "unauthorized"


class Forbidden(BridgeError):
    """The credential is valid but does not reach this execution, task or project."""

    reason = "forbidden"


class NotFound(BridgeError):
    """No such execution or task (or none this credential may know of)."""

    reason = "not_found"


class Conflict(BridgeError):
    """The request contradicts what the bridge holds: another task's or protocol's execution,
    a ping uuid another task holds, a declaration owned by the tasks file."""

    reason = "conflict"


class CapacityError(BridgeError):
    """A new execution or task name would pass its limit; clients retry later."""

    reason = "capacity"


class ConfigError(BridgeError, ValueError):
    """The configuration (a ``BRIDGE_*`` or ``OTEL_*`` variable, the tasks file at start) holds a
    value the bridge cannot use; the start stops with the message."""

    reason = "configuration"


class StoreUnavailable(BridgeError):
    """The store cannot be reached or written right now; clients retry later."""

    reason = "unavailable"
