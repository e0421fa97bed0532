"""The API's refusals as error types, answered in JSON: ``{"error": "...", "field": "..."}``.

Every refusal is an :class:`ApiError` carrying its HTTP status, the field at fault and
the reason counted in ``bridge_requests_rejected_total``; the store's errors are mapped
here too, so that no view or validator answers an error itself, and nothing is ever an
HTML page.
"""

from __future__ import annotations

import logging

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from ..store import CapacityError, StoreUnavailable
from .extension import current_bridge

__all__ = ["ApiError", "Conflict", "Forbidden", "InvalidInput", "InvalidJSON", "NotFound", "RequestTimeout", "TooLarge",
           "Unauthorized", "UnsupportedMediaType", "error_response", "init_app"]

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "5"
#: Refusals of requests no endpoint took, by status: their reason in the rejection counter.
_COUNTED = {404: "not_found", 405: "method_not_allowed"}


class ApiError(Exception):
    """A refused request: ``status``, the ``field`` at fault, the ``reason`` it is counted under."""

    status = 400
    reason = "invalid_field"

    def __init__(self, message: str, field: str | None = None, *, reason: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        if reason is not None:
            self.reason = reason


class InvalidInput(ApiError):
    """400: a field is missing or wrong."""


class InvalidJSON(InvalidInput):
    """400: the body is not JSON the bridge can read."""

    reason = "invalid_json"


class Unauthorized(ApiError):
    """401: no bearer token, or a wrong one."""

    status, reason = 401, "unauthorized"


class Forbidden(ApiError):
    """403: the token does not grant this execution."""

    status, reason = 403, "forbidden"


class NotFound(ApiError):
    """404: no such execution."""

    status, reason = 404, "not_found"


class Conflict(ApiError):
    """409: the request contradicts what the bridge already holds."""

    status, reason = 409, "conflict"


class RequestTimeout(ApiError):
    """408: the body did not arrive in time."""

    status, reason = 408, "timeout"


class TooLarge(ApiError):
    """413: a body, a field or a batch is larger than allowed."""

    status, reason = 413, "too_large"


class UnsupportedMediaType(ApiError):
    """415: the body is not ``application/json``."""

    status, reason = 415, "unsupported_media_type"


def error_response(status: int, message: str, field: str | None = None):
    """Return a Flask response with the JSON error body and ``status``."""
    body = {"error": message}
    if field is not None:
        body["field"] = field
    response = jsonify(body)
    response.status_code = status
    return response


def init_app(app: Flask) -> None:
    """Register the error handlers on ``app``."""

    @app.errorhandler(ApiError)
    def refused(exc: ApiError):
        response = error_response(exc.status, exc.message, exc.field)
        if isinstance(exc, Unauthorized):
            response.headers["WWW-Authenticate"] = 'Bearer realm="heartbeat-bridge"'
        return response

    @app.errorhandler(CapacityError)
    def capacity(exc: CapacityError):
        response = error_response(429, f"the bridge is at its limit: {exc}")
        response.headers["Retry-After"] = RETRY_AFTER_SECONDS
        return response

    @app.errorhandler(StoreUnavailable)
    def store_unavailable(exc: StoreUnavailable):
        log.warning("store unavailable: %s", exc)
        response = error_response(503, "the store is unavailable; retry later")
        response.headers["Retry-After"] = RETRY_AFTER_SECONDS
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        code = exc.code or 500
        if code in _COUNTED:  # no endpoint of the bridge took the request: counted as "http"
            current_bridge().monitor.reject("http", _COUNTED[code])
        message = exc.description or exc.name
        if code == 404:
            message = f"no endpoint at {request.path[:200]}" + (
                " (an empty segment: does the base URL end with '/'?)" if "//" in request.path else "")
        response = error_response(code, message)
        for name, value in exc.get_headers():  # such as Allow on a 405
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal error")
