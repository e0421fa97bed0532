"""JSON errors for every failure: ``{"error": "...", "field": "..."}``, never an HTML page."""

from __future__ import annotations

import logging

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from .extension import current_bridge
from ..store import CapacityError, StoreUnavailable
from .validation import InvalidInput

__all__ = ["error_response", "init_app"]

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "5"
#: Refusals of requests no endpoint took, by status: their reason in the rejection counter.
_COUNTED = {404: "not_found", 405: "method_not_allowed"}


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

    @app.errorhandler(InvalidInput)
    def invalid_input(exc: InvalidInput):
        response = error_response(exc.status, exc.message, exc.field)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="heartbeat-bridge"'
        return response

    @app.errorhandler(CapacityError)
    def capacity(exc: CapacityError):
        response = error_response(429, f"the bridge tracks its maximum of executions: {exc}")
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
