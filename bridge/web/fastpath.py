"""The hot path: a plain heartbeat answered below Flask's per-request machinery.

Nearly all of the bridge's traffic is single heartbeats, and Flask's request context, URL
matching and response object cost about as much as everything the bridge itself does
with a heartbeat (measured: see docs/performance.md). This WSGI middleware
takes ``POST /api/v1/monitoring/heartbeat`` with a JSON body of declared length and does
what the Flask view does, through the same functions: the token, the parser, the
monitor, the answer. Everything else goes to Flask as it came.

So does every failure, which keeps one place that answers and counts them. Input the
fast path refuses is handed to the view with its body, to be refused there again (nothing
was applied yet). An error raised once the heartbeat went to the store travels in the
environ (:data:`bridge.web.ingest.FAST_PATH_ERROR`), and the view answers it without applying
the heartbeat a second time.

The gunicorn worker (:mod:`bridge.server.worker`) calls :meth:`HeartbeatFastPath.answer` itself
for a plain heartbeat on a kept-alive connection, below gunicorn's WSGI. What the fast path
does not answer there goes through gunicorn to this middleware and the view; a store's error
is carried to them (:meth:`HeartbeatFastPath.carry`) on the request thread.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask
from werkzeug.http import parse_options_header

from ..core.jsoncodec import encode_answer
from .extension import EXTENSION_KEY
from .ingest import FAST_PATH_ERROR, bp, heartbeat_answer, is_json_mimetype
from .validation import parse_heartbeat, parse_json

__all__ = ["HeartbeatFastPath", "init_app"]

HEARTBEAT_PATH = f"{bp.url_prefix}/heartbeat"

StartResponse = Callable[..., Any]

# A store's error for a heartbeat the worker answers below gunicorn's WSGI (bridge.server.worker),
# kept for the request thread's next call: the same request, read again by gunicorn.
_carried = threading.local()


def init_app(app: Flask) -> None:
    """Put the fast path in front of ``app``'s WSGI callable."""
    app.wsgi_app = HeartbeatFastPath(app)  # type: ignore[method-assign]


class HeartbeatFastPath:
    """WSGI middleware over a Flask app's ``wsgi_app`` (kept as :attr:`wrapped`)."""

    def __init__(self, app: Flask):
        self.app = app
        self.wrapped = app.wsgi_app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        error = _carried.__dict__.pop("error", None)
        if error is not None:  # the worker already gave this heartbeat to the store
            environ[FAST_PATH_ERROR] = error
            return self.wrapped(environ, start_response)
        body = self.plain_heartbeat_body(environ)
        if body is None:
            return self.wrapped(environ, start_response)
        try:
            answer = self.answer(environ, body)
        except Exception as exc:  # CapacityError, StoreUnavailable, or a fault: the view answers it
            return self._to_flask(environ, start_response, body, exc)
        if answer is None:
            return self._to_flask(environ, start_response, body)
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(answer)))])
        return [answer]

    def answer(self, environ: dict[str, Any], body: bytes) -> bytes | None:
        """Return the body of the 200 answer to the heartbeat ``body``, once it is committed;
        None when it is refused before anything was applied (the view answers and counts that).

        Raises what the store raised once the heartbeat went to it (``CapacityError``,
        ``StoreUnavailable``, or a fault): the view answers it without applying the
        heartbeat again (:data:`~bridge.web.ingest.FAST_PATH_ERROR`, or :meth:`carry`).
        """
        bridge = self.app.extensions[EXTENSION_KEY]
        try:
            grant = bridge.authorizer.ingest(environ.get("HTTP_AUTHORIZATION"))
            hb = parse_heartbeat(parse_json(body), bridge.limits, environ.get("HTTP_TRACEPARENT"))
            bridge.authorizer.check(grant, hb.execution_id)
        except Exception:  # refused input, or a fault: nothing is applied yet
            return None
        return encode_answer(heartbeat_answer(hb.execution_id, bridge.monitor.heartbeat(hb)))

    @staticmethod
    def carry(error: Exception | None) -> None:
        """Hand the next request this thread serves, the same heartbeat read again by gunicorn,
        to the view with ``error``, the store's error that :meth:`answer` raised for it; None
        drops an error no request took."""
        if error is None:
            _carried.__dict__.pop("error", None)
        else:
            _carried.error = error

    def plain_heartbeat_body(self, environ: dict[str, Any]) -> bytes | None:
        """Return the body of a heartbeat the fast path takes; None leaves the request to Flask."""
        if (
            environ.get("PATH_INFO") != HEARTBEAT_PATH
            or environ.get("REQUEST_METHOD") != "POST"
            or "HTTP_TRANSFER_ENCODING" in environ
            or self.app.debug
        ):  # Flask's debugger, and its indented answers
            return None
        declared = environ.get("CONTENT_LENGTH", "")
        if not (declared.isascii() and declared.isdigit()):
            return None
        length = int(declared)
        limit = self.app.extensions[EXTENSION_KEY].settings.max_body_bytes
        flask_limit = self.app.config.get("MAX_CONTENT_LENGTH")
        if length > (limit if flask_limit is None else min(limit, flask_limit)):
            return None
        if not is_json_mimetype(parse_options_header(environ.get("CONTENT_TYPE", ""))[0].lower()):
            return None
        body = environ["wsgi.input"].read(length)
        if len(body) != length:  # the client went away: Flask says so
            environ["wsgi.input"] = io.BytesIO(body)
            return None
        return body

    def _to_flask(
        self, environ: dict[str, Any], start_response: StartResponse, body: bytes, error: Exception | None = None
    ) -> Iterable[bytes]:
        environ["wsgi.input"] = io.BytesIO(body)
        if error is not None:
            environ[FAST_PATH_ERROR] = error
        return self.wrapped(environ, start_response)
