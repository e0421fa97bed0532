"""Healthchecks pings, as its docs and clients send them: a changed base URL is the migration.

    GET|HEAD|POST /ping/<uuid>[/start|/fail|/log|/<exit status 0-255>][?rid=<uuid>]
    GET|HEAD|POST /ping/<ping key>/<slug>[/start|/fail|/log|/<exit status>][?rid=...&create=1]

A uuid names the task declared with that ``ping_uuid``; a slug names a task created under
that ping key of ``BRIDGE_PING_KEYS`` (``?create=1``) or declared with it (``ping_key``).
A ``rid`` reaches only the runs pings made for the same task. Answers are Healthchecks'
own: ``OK`` in plain text with a ``Ping-Body-Limit`` header, ``Created`` (201) for a task
made by ``?create=1``, ``not found`` (404), ``invalid url format`` and ``invalid uuid
format`` (400), with what is wrong after them; a ``rid`` of another task's run is 409. The
request body (its first ``BRIDGE_PING_BODY_BYTES``) is the run's log line or its failure's
error message, cut to their limits (the ``Bridge-Warning`` header then says so). Pings need
no bearer token: as at Healthchecks, the uuid or the ping key is the secret.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import Blueprint, Response, request
from flask.typing import ResponseReturnValue

from ..core import inputs, jsoncodec
from ..core.errors import (
    BridgeError,
    CapacityError,
    Conflict,
    InvalidInput,
    NotFound,
    RequestTimeout,
    StoreUnavailable,
)
from ..core.events import RunReport
from .errors import refusals
from .extension import current_bridge

__all__ = ["bp"]

bp = Blueprint("pings", __name__)

_ACTIONS = {"": "success", "start": "start", "fail": "failure", "log": "log"}
MAX_EXIT_STATUS = 255
#: Healthchecks' words for each refusal (a rule's refusal adds what is wrong after them).
_WORDS: tuple[tuple[type[BridgeError], str], ...] = (
    (NotFound, "not found"),
    (Conflict, "conflict"),
    (CapacityError, "rate limit exceeded"),
    (StoreUnavailable, "service unavailable"),
    (RequestTimeout, "request timeout"),
)


def _text(status: int, text: str) -> Response:
    response = Response(text, status=status, content_type="text/plain; charset=utf-8")
    response.headers["Ping-Body-Limit"] = str(current_bridge().settings.ping_body_bytes)
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response


def _refused(exc: BridgeError, status: int) -> Response:
    words = next((text for kind, text in _WORDS if isinstance(exc, kind)), None)
    if words is None:  # a rule's refusal: Healthchecks' words, then the field and what is wrong
        words = "invalid uuid format" if exc.field in ("rid", "uuid") else "invalid url format"
        if exc.message not in (words, ""):
            words = f"{words}: {exc.message}"
    return _text(status, words)


refusals(bp, "ping", _refused)


@dataclass(frozen=True)
class _Ping:
    """What a ping URL says: the check (a uuid, or a ping key and slug), the phase and exit status."""

    phase: str
    uuid: str | None = None
    key: str | None = None
    slug: str | None = None
    exit_status: int | None = None


def _action(segment: str) -> tuple[str, int | None]:
    """Return the run phase and exit status a URL's last segment names."""
    if segment in _ACTIONS:
        return _ACTIONS[segment], None
    if segment.isascii() and segment.isdigit() and len(segment) <= 10:
        status = int(segment)
        if status > MAX_EXIT_STATUS:
            raise InvalidInput("invalid url format", "exit_status")
        return ("success" if status == 0 else "failure"), status
    raise NotFound("not found", "path")


def _parse_path(path: str) -> _Ping:
    """Return what a ping path says. Raises :class:`InvalidInput` or :class:`NotFound` as Healthchecks does."""
    parts = path.split("/")
    if inputs.UUID.fullmatch(parts[0]) and len(parts) <= 2:
        phase, status = _action(parts[1] if len(parts) == 2 else "")
        return _Ping(phase, uuid=inputs.uuid(parts[0], "uuid"), exit_status=status)
    if len(parts) in (2, 3) and inputs.URL_WORD.fullmatch(parts[0]) and inputs.URL_WORD.fullmatch(parts[1]):
        phase, status = _action(parts[2] if len(parts) == 3 else "")
        if parts[1] != parts[1].lower():
            raise InvalidInput("invalid url format", "slug")
        return _Ping(phase, key=parts[0], slug=inputs.task_name(parts[1], "slug"), exit_status=status)
    raise NotFound("not found", "path")


def _message(body: bytes, ping: _Ping, max_field_bytes: int) -> tuple[str | None, tuple[str, ...]]:
    """Return the body as the run's log line or error message, cut to that field's limit,
    and the warnings that say what was cut."""
    message = body.decode("utf-8", "replace").strip() or None
    if ping.phase == "failure" and message is None and ping.exit_status is not None:
        return f"exited with code {ping.exit_status}", ()
    field = "error_message" if ping.phase == "failure" else "progress.log"
    message, cut = inputs.cut(message, field)
    # A log line is kept in progress, whose limit is in bytes of JSON: halve until it fits.
    while message and ping.phase == "log" and len(jsoncodec.dumps({"log": message}).encode()) > max_field_bytes:
        message, cut = message[: len(message) // 2 - 1] + "…", f"{field} was cut to fit {max_field_bytes} bytes"
    return message, (cut,) if cut else ()


def _body(limit: int) -> bytes:
    """Return the first ``limit`` bytes of a POST's body. Raises :class:`RequestTimeout`."""
    if request.method != "POST":
        return b""
    try:
        return request.stream.read(limit)
    except OSError:  # a body that stalled past the read deadline (bridge.server.worker)
        raise RequestTimeout("request timeout", "body") from None


@bp.route("/ping/<path:path>", methods=["GET", "HEAD", "POST"])
def ping(path: str) -> ResponseReturnValue:
    """Record a ping as a run of its task: a start, a success, a failure, or a log line."""
    bridge = current_bridge()
    ping = _parse_path(path)
    run_id = inputs.uuid(request.args.get("rid"), "rid")
    message, warnings = _message(_body(bridge.settings.ping_body_bytes), ping, bridge.limits.max_field_bytes)
    if ping.key is not None:
        bridge.authorizer.ping_key(ping.key)
    task, created = bridge.monitor.ping_task(
        ping_uuid=ping.uuid, key=ping.key, slug=ping.slug, create=request.args.get("create") == "1"
    )
    bridge.monitor.report(RunReport(task, ping.phase, "hc", run_id, message, ping.exit_status, run_field="rid"))
    response = _text(201, "Created") if created else _text(200, "OK")
    if warnings:
        response.headers["Bridge-Warning"] = "; ".join(warnings)
    return response
