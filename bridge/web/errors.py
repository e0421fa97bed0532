"""The refusals as HTTP answers: each kind of :class:`~bridge.core.errors.BridgeError` has one status.

Views raise; they never answer an error themselves. Each protocol blueprint registers one
handler with :func:`refusals`, which counts the refusal in ``bridge_requests_rejected_total``
under the blueprint's endpoint label and renders it in the protocol's own style (JSON
``{"error", "field"}`` for the native API, Healthchecks' plain text, Sentry's
``{"detail"}``, an HTML page). The app-wide handlers here answer what no blueprint took.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask import Blueprint, Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from ..core.errors import (
    BridgeError,
    CapacityError,
    Conflict,
    Forbidden,
    InvalidInput,
    InvalidJSON,
    NotFound,
    RequestTimeout,
    StoreUnavailable,
    TooLarge,
    Unauthorized,
    UnsupportedMediaType,
)
from .extension import current_bridge

__all__ = [
    "ApiError",
    "Conflict",
    "Forbidden",
    "InvalidInput",
    "InvalidJSON",
    "NotFound",
    "RequestTimeout",
    "TooLarge",
    "Unauthorized",
    "UnsupportedMediaType",
    "error_response",
    "http_status",
    "init_app",
    "refusals",
]

log = logging.getLogger(__name__)

#: What the web surface refuses with: every error of the bridge.
ApiError = BridgeError
RETRY_AFTER_SECONDS = "5"
#: Each kind of error's status, the most specific first.
_STATUS: tuple[tuple[type[BridgeError], int], ...] = (
    (TooLarge, 413),
    (InvalidInput, 400),
    (UnsupportedMediaType, 415),
    (RequestTimeout, 408),
    (Unauthorized, 401),
    (Forbidden, 403),
    (NotFound, 404),
    (Conflict, 409),
    (CapacityError, 429),
    (StoreUnavailable, 503),
)
#: Refusals of requests no endpoint took, by status: their reason in the rejection counter.
_COUNTED = {404: "not_found", 405: "method_not_allowed"}

Render = Callable[[BridgeError, int], Response]


def http_status(exc: BridgeError) -> int:
    """Return the HTTP status that answers ``exc``."""
    return next((status for kind, status in _STATUS if isinstance(exc, kind)), 500)


def error_response(status: int, message: str, field: str | None = None) -> Response:
    """Return a Flask response with the JSON error body and ``status``."""
    body = {"error": message}
    if field is not None:
        body["field"] = field
    response = jsonify(body)
    response.status_code = status
    return response


def _json(exc: BridgeError, status: int) -> Response:
    return error_response(status, exc.message, exc.field)


def _finish(response: Response, exc: BridgeError) -> Response:
    """Add what every refusal of its kind carries: the challenge of a 401, when to retry a 429 or 503."""
    if isinstance(exc, Unauthorized) and "WWW-Authenticate" not in response.headers:
        response.headers["WWW-Authenticate"] = 'Bearer realm="heartbeat-bridge"'
    if isinstance(exc, (CapacityError, StoreUnavailable)) and "Retry-After" not in response.headers:
        response.headers["Retry-After"] = RETRY_AFTER_SECONDS
    return response


def refusals(bp: Blueprint, endpoint: str | Callable[[], str], render: Render = _json) -> None:
    """Answer every :class:`BridgeError` a view of ``bp`` raises with ``render``, counting it
    under ``endpoint`` (a label, or a function of the request that returns one).

    A store that is down is logged, not counted: it is no refusal of the request.
    """

    @bp.errorhandler(BridgeError)
    def refused(exc: BridgeError) -> Response:
        if isinstance(exc, StoreUnavailable):
            log.warning("store unavailable: %s", exc)
        else:
            current_bridge().monitor.reject(endpoint if isinstance(endpoint, str) else endpoint(), exc.reason)
        return _finish(render(exc, http_status(exc)), exc)


def by_view(labels: dict[str, str] | None = None) -> Callable[[], str]:
    """Return an endpoint label function: the view's name, or its entry in ``labels``."""

    def label() -> str:
        view = (request.endpoint or "").rpartition(".")[2]
        return (labels or {}).get(view, view)

    return label


def init_app(app: Flask) -> None:
    """Register the app-wide error handlers on ``app``: what no blueprint's handler took."""

    @app.errorhandler(BridgeError)
    def refused(exc: BridgeError) -> Response:
        return _finish(_json(exc, http_status(exc)), exc)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        code = exc.code or 500
        if code in _COUNTED:  # no endpoint of the bridge took the request: counted as "http"
            current_bridge().monitor.reject("http", _COUNTED[code])
        message = exc.description or exc.name
        if code == 404:
            message = f"no endpoint at {request.path[:200]}" + (
                " (an empty segment: does the base URL end with '/'?)" if "//" in request.path else ""
            )
        response = error_response(code, message)
        for name, value in exc.get_headers():  # such as Allow on a 405
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(500, "internal error")
