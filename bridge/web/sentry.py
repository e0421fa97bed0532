"""Sentry cron check-ins, as the SDKs send them: a DSN pointed at the bridge is the migration.

    POST /api/<project>/envelope/                       envelopes, with check_in items
    GET|POST /api/<project>/cron/<monitor_slug>/<key>/  ?status=in_progress|ok|error[&check_in_id=...]

A check-in's ``monitor_slug`` is its task, its ``check_in_id`` the execution; ``in_progress``
starts a run, ``ok`` and ``error`` end it, and ``monitor_config`` declares the task (as a
heartbeat's ``task_schedule`` does). Every other envelope item (errors, transactions,
sessions, client reports) is accepted and dropped, so an application's SDK never errors
for it. Bodies may be gzip, deflate or brotli encoded. The public key comes from
``X-Sentry-Auth`` or ``?sentry_key=``, and must be one of ``BRIDGE_SENTRY_KEYS`` when that
is set. Refusals are Sentry's: a JSON ``{"detail": ...}`` with a 4xx status.
"""

from __future__ import annotations

import re
import uuid
import zlib
from typing import Any

import brotli
from flask import Blueprint, Response, jsonify, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import MethodNotAllowed

from ..core import inputs
from ..core.declarations import (
    MAX_GRACE_SECONDS,
    MAX_PERIOD_SECONDS,
    MAX_RUNTIME_SECONDS,
    TaskDeclaration,
    parse_declaration,
)
from ..core.errors import BridgeError, InvalidInput, InvalidJSON, RequestTimeout, TooLarge, UnsupportedMediaType
from ..core.events import RunReport
from .errors import refusals
from .extension import current_bridge
from .validation import parse_json

__all__ = ["bp"]

bp = Blueprint("sentry", __name__)

_AUTH_KEY = re.compile(r"sentry_key\s*=\s*([^,\s]+)")
_PHASES = {"in_progress": "start", "ok": "success", "error": "failure"}
#: Seconds in each unit of an interval schedule (Sentry counts a month as 30 days).
_UNITS = {"minute": 60, "hour": 3600, "day": 86_400, "week": 7 * 86_400, "month": 30 * 86_400, "year": 365 * 86_400}
#: Check-ins one envelope may carry: one small request never makes more executions than this.
MAX_CHECK_INS = 100
#: The run id Sentry's HTTP form takes for the monitor's newest open check-in.
LATEST = "latest"
MAX_DURATION_SECONDS = 1e9


def _refused(exc: BridgeError, status: int) -> Response:
    response = jsonify(detail=exc.message, field=exc.field)
    response.status_code = status
    return response


refusals(bp, "sentry", _refused)


def _key() -> str | None:
    """Return the public key the request carries (``X-Sentry-Auth``, ``Authorization`` or ``?sentry_key=``)."""
    found = _AUTH_KEY.search(request.headers.get("X-Sentry-Auth", "")) or _AUTH_KEY.search(
        request.headers.get("Authorization", "")
    )
    return found.group(1) if found else request.args.get("sentry_key")


def _body(limit: int) -> bytes:
    """Return the request body, decoded from its Content-Encoding, at most ``limit`` bytes.

    Raises :class:`TooLarge`, :class:`UnsupportedMediaType` for an unknown encoding, and
    :class:`InvalidJSON` for a body that does not decompress.
    """
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(f"body is larger than {limit} bytes", "body")
    try:
        raw = request.stream.read(limit + 1)
    except OSError:  # a long body that stalled past the read deadline (bridge.server.worker)
        raise RequestTimeout("the body was not received in time", "body") from None
    if len(raw) > limit:
        raise TooLarge(f"body is larger than {limit} bytes", "body")
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    try:
        if encoding in ("", "identity"):
            return raw
        if encoding in ("gzip", "x-gzip", "deflate"):
            # gzip's header, zlib's, or raw deflate (some clients send that as "deflate")
            window = (
                16 + zlib.MAX_WBITS
                if encoding != "deflate"
                else (zlib.MAX_WBITS if raw[:1] == b"\x78" else -zlib.MAX_WBITS)
            )
            decompressor = zlib.decompressobj(window)
            body = decompressor.decompress(raw, limit + 1)
        elif encoding == "br":
            body = brotli.Decompressor().process(raw, output_buffer_limit=limit + 1)
        else:
            raise UnsupportedMediaType(
                f"Content-Encoding {encoding[:40]!r} is not gzip, deflate or br", "Content-Encoding"
            )
    except (zlib.error, brotli.error):
        raise InvalidJSON(f"the body is not valid {encoding}", "body") from None
    if len(body) > limit:
        raise TooLarge(f"body is larger than {limit} bytes once decoded", "body")
    return body


def _items(body: bytes) -> tuple[dict[str, Any], list[tuple[Any, bytes]]]:
    """Return an envelope's header and its items as (type, payload). Raises :class:`InvalidJSON`."""
    header_line, _, rest = body.partition(b"\n")
    header = _json_object(header_line, "envelope header")
    items: list[tuple[Any, bytes]] = []
    position = 0
    while position < len(rest):
        end = rest.find(b"\n", position)
        line, position = (rest[position:], len(rest)) if end < 0 else (rest[position:end], end + 1)
        if not line.strip():
            continue
        item = _json_object(line, "item header")
        length = item.get("length")
        if length is None:
            end = rest.find(b"\n", position)
            payload, position = (rest[position:], len(rest)) if end < 0 else (rest[position:end], end + 1)
        elif isinstance(length, int) and not isinstance(length, bool) and 0 <= length <= len(rest) - position:
            payload, position = rest[position : position + length], position + length
            if rest[position : position + 1] == b"\n":
                position += 1
        else:
            raise InvalidJSON("an item's length runs past the envelope", "body")
        items.append((item.get("type"), payload))
    return header, items


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    """Return the JSON object in ``data``, read as every JSON body is (depth and number limits included)."""
    try:
        value = parse_json(data)
    except InvalidJSON as exc:
        raise InvalidJSON(f"the {what} is not JSON: {exc.message}", "body") from None
    if not isinstance(value, dict):
        raise InvalidJSON(f"the {what} is not a JSON object", "body")
    return value


def _minutes(config: dict[str, Any], name: str, low: float, high: float) -> float | None:
    """Return a ``monitor_config`` field given in minutes, as seconds."""
    value = inputs.number(config.get(name), f"monitor_config.{name}", low / 60, high / 60)
    return value * 60 if value is not None else None


def _monitor_config(config: Any, slug: str) -> TaskDeclaration:
    """Return the task declaration a check-in's ``monitor_config`` makes. Raises :class:`InvalidInput`."""
    config = inputs.object_of(config, "monitor_config")
    fields: dict[str, Any] = {}
    schedule = config.get("schedule")
    if isinstance(schedule, dict) and schedule.get("type") == "crontab":
        fields["schedule"] = inputs.text(schedule.get("value"), "monitor_config.schedule.value", 256, required=True)
    elif isinstance(schedule, dict) and schedule.get("type") == "interval":
        unit = schedule.get("unit")
        if not isinstance(unit, str) or unit not in _UNITS:
            raise InvalidInput(
                f"monitor_config.schedule.unit must be one of {', '.join(_UNITS)}", "monitor_config.schedule.unit"
            )
        value = inputs.number(
            schedule.get("value"), "monitor_config.schedule.value", 1, MAX_PERIOD_SECONDS / _UNITS[unit]
        )
        if value is None:
            raise InvalidInput("monitor_config.schedule.value is required", "monitor_config.schedule.value")
        fields["period_seconds"] = value * _UNITS[unit]
    elif schedule is not None:
        raise InvalidInput("monitor_config.schedule must be a crontab or an interval", "monitor_config.schedule")
    fields["start_grace_seconds"] = _minutes(config, "checkin_margin", 0, MAX_GRACE_SECONDS)
    fields["max_runtime_seconds"] = _minutes(config, "max_runtime", 60, MAX_RUNTIME_SECONDS)
    fields["failure_threshold"] = config.get("failure_issue_threshold")
    fields["recovery_threshold"] = config.get("recovery_threshold")
    fields["timezone"] = config.get("timezone")
    owner = inputs.text(config.get("owner"), "monitor_config.owner", inputs.MAX_LABEL_VALUE)
    if owner is not None and ":" in owner:  # "team:data" or "user:ann@example.com"
        kind, _, who = owner.partition(":")
        fields["labels"] = {"team" if kind == "team" else "owner": who}
    declared = {name: value for name, value in fields.items() if value is not None}
    try:
        return parse_declaration(declared, slug, "monitor_config.")
    except InvalidInput as exc:  # Sentry's names for the fields it renamed
        renamed = {
            "monitor_config.failure_threshold": "monitor_config.failure_issue_threshold",
            "monitor_config.labels": "monitor_config.owner",
        }.get(exc.field or "", exc.field)
        raise InvalidInput(exc.message.replace(exc.field or "", renamed or "", 1), renamed) from None


def _check_in(payload: Any) -> tuple[RunReport, TaskDeclaration | None]:
    """Return the run a check-in reports, and the declaration it carries. Raises :class:`InvalidInput`."""
    if not isinstance(payload, dict):
        raise InvalidInput("a check-in must be a JSON object", "body")
    slug = inputs.task_name(payload.get("monitor_slug"), "monitor_slug", required=True)
    assert slug is not None
    status = payload.get("status")
    if not isinstance(status, str) or status not in _PHASES:
        raise InvalidInput(f"status must be one of {', '.join(_PHASES)}", "status")
    raw_id = payload.get("check_in_id")
    run_id = None if raw_id in (None, LATEST) else inputs.execution_id(raw_id, "check_in_id")
    duration = inputs.number(payload.get("duration"), "duration", 0, MAX_DURATION_SECONDS)
    config = payload.get("monitor_config")
    phase = _PHASES[status]
    report = RunReport(
        slug,
        phase,
        "sentry",
        run_id,
        message="the check-in reported an error" if phase == "failure" else None,
        result_data={"duration": duration} if duration is not None else None,
        run_field="check_in_id",
    )
    return report, _monitor_config(config, slug) if config is not None else None


@bp.post("/api/<int:project_id>/envelope/")
def envelope(project_id: int) -> ResponseReturnValue:
    """Take an envelope: apply its check-ins, whole or not at all; drop every other item."""
    bridge = current_bridge()
    bridge.authorizer.sentry(_key(), str(project_id))
    header, items = _items(_body(bridge.settings.max_batch_body_bytes))
    payloads = [payload for kind, payload in items if kind == "check_in"]
    if len(payloads) > MAX_CHECK_INS:
        raise TooLarge(f"an envelope carries at most {MAX_CHECK_INS} check-ins, not {len(payloads)}", "body")
    check_ins = [_check_in(_json_object(payload, "check-in")) for payload in payloads]
    bridge.monitor.check_in(str(project_id), check_ins)
    event_id = header.get("event_id")
    return jsonify(id=event_id if isinstance(event_id, str) else uuid.uuid4().hex)


@bp.route("/api/<int:project_id>/cron/<monitor_slug>/<key>/", methods=["GET", "POST"])
def cron(project_id: int, monitor_slug: str, key: str) -> ResponseReturnValue:
    """A check-in by plain HTTP: the status (and check_in_id) in the query, a JSON body with a
    ``monitor_config`` allowed. Answers 202 with the check-in's id, to close it with."""
    if request.method == "HEAD":  # a probe of the URL is no check-in
        raise MethodNotAllowed(valid_methods=["GET", "POST"])
    bridge = current_bridge()
    bridge.authorizer.sentry(key, str(project_id))
    payload: dict[str, Any] = {}
    if request.method == "POST" and request.content_length:
        payload = _json_object(_body(bridge.settings.max_body_bytes), "body")
    payload = {
        **payload,
        "monitor_slug": monitor_slug,
        **{name: request.args[name] for name in ("status", "check_in_id") if name in request.args},
    }
    [run_id] = bridge.monitor.check_in(str(project_id), [_check_in(payload)])
    response = jsonify(id=run_id)
    response.status_code = 202
    return response
