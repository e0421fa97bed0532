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
from collections.abc import Callable
from typing import Any

import brotli
from flask import Blueprint, Response, jsonify, request

from ..core import jsoncodec
from ..core.declarations import TaskDeclaration
from ..core.events import RunReport
from ..core.ids import normalise_id
from ..store import CapacityError, StoreUnavailable
from .errors import ApiError, InvalidInput, RequestTimeout, TooLarge, Unauthorized, UnsupportedMediaType
from .extension import current_bridge
from .validation import declaration

__all__ = ["bp"]

bp = Blueprint("sentry", __name__)

_AUTH_KEY = re.compile(r"sentry_key\s*=\s*([^,\s]+)")
_PHASES = {"in_progress": "start", "ok": "success", "error": "failure"}
_MAX_SLUG = 128
#: Seconds in each unit of an interval schedule (Sentry counts a month as 30 days).
_UNITS = {"minute": 60, "hour": 3600, "day": 86_400, "week": 7 * 86_400, "month": 30 * 86_400,
          "year": 365 * 86_400}


def _key() -> str:
    """Return the public key the request carries. Raises :class:`Unauthorized`."""
    found = _AUTH_KEY.search(request.headers.get("X-Sentry-Auth", "")) or \
        _AUTH_KEY.search(request.headers.get("Authorization", ""))
    key = found.group(1) if found else request.args.get("sentry_key")
    if not key:
        raise Unauthorized("missing authorization information", "X-Sentry-Auth")
    return key


def _check_key(key: str) -> None:
    allowed = current_bridge().settings.sentry_keys
    if allowed and key not in allowed:
        raise Unauthorized("the public key is not one of BRIDGE_SENTRY_KEYS", "sentry_key")


def _body(limit: int) -> bytes:
    """Return the request body, decoded from its Content-Encoding, at most ``limit`` bytes.

    Raises :class:`TooLarge`, :class:`UnsupportedMediaType` for an unknown encoding, and
    :class:`InvalidInput` for a body that does not decompress.
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
            window = 16 + zlib.MAX_WBITS if encoding != "deflate" else \
                (zlib.MAX_WBITS if raw[:1] == b"\x78" else -zlib.MAX_WBITS)
            decompressor = zlib.decompressobj(window)
            body = decompressor.decompress(raw, limit + 1)
        elif encoding == "br":
            body = brotli.Decompressor().process(raw, output_buffer_limit=limit + 1)
        else:
            raise UnsupportedMediaType(f"Content-Encoding {encoding[:40]!r} is not gzip, deflate or br",
                                       "Content-Encoding")
    except (zlib.error, brotli.error):
        raise InvalidInput(f"the body is not valid {encoding}", "body", reason="invalid_json") from None
    if len(body) > limit:
        raise TooLarge(f"body is larger than {limit} bytes once decoded", "body")
    return body


def _items(body: bytes) -> tuple[dict, list[tuple[Any, bytes]]]:
    """Return an envelope's header and its items as (type, payload). Raises :class:`InvalidInput`."""
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
            payload, position = rest[position:position + length], position + length
            if rest[position:position + 1] == b"\n":
                position += 1
        else:
            raise InvalidInput("an item's length runs past the envelope", "body", reason="invalid_json")
        items.append((item.get("type"), payload))
    return header, items


def _json_object(data: bytes, what: str) -> dict:
    try:
        value = jsoncodec.loads(data)
    except ValueError:
        raise InvalidInput(f"the {what} is not JSON", "body", reason="invalid_json") from None
    if not isinstance(value, dict):
        raise InvalidInput(f"the {what} is not a JSON object", "body", reason="invalid_json")
    return value


def _slug(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > _MAX_SLUG \
            or any(ord(c) < 32 or ord(c) == 127 for c in value) or value == "_other":
        raise InvalidInput("monitor_slug must be text of 1 to 128 characters", "monitor_slug")
    return value


def _monitor_config(config: Any, slug: str) -> TaskDeclaration:
    """Return the task declaration a check-in's ``monitor_config`` makes. Raises :class:`InvalidInput`."""
    if not isinstance(config, dict):
        raise InvalidInput("monitor_config must be an object", "monitor_config")
    fields: dict[str, Any] = {}
    schedule = config.get("schedule")
    if isinstance(schedule, dict) and schedule.get("type") == "crontab":
        fields["schedule"] = schedule.get("value")
    elif isinstance(schedule, dict) and schedule.get("type") == "interval":
        value, unit = schedule.get("value"), schedule.get("unit")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or unit not in _UNITS:
            raise InvalidInput(f"an interval schedule needs a number and a unit ({', '.join(_UNITS)})",
                               "monitor_config.schedule")
        fields["period_seconds"] = value * _UNITS[unit]
    elif schedule is not None:
        raise InvalidInput("schedule must be a crontab or an interval", "monitor_config.schedule")
    for name, field, scale in (("checkin_margin", "start_grace_seconds", 60),
                               ("max_runtime", "max_runtime_seconds", 60),
                               ("failure_issue_threshold", "failure_threshold", 1)):
        value = config.get(name)
        if value is not None:
            fields[field] = value * scale if not isinstance(value, bool) and isinstance(value, (int, float)) else value
    if config.get("timezone") is not None:
        fields["timezone"] = config["timezone"]
    owner = config.get("owner")
    if isinstance(owner, str) and ":" in owner:  # "team:data" or "user:ann@example.com"
        kind, _, who = owner.partition(":")
        fields["labels"] = {"team" if kind == "team" else "owner": who}
    return declaration(fields, slug, "monitor_config.")


def _check_in(payload: Any) -> tuple[RunReport, TaskDeclaration | None]:
    """Return the run a check-in reports, and the declaration it carries. Raises :class:`InvalidInput`."""
    if not isinstance(payload, dict):
        raise InvalidInput("a check-in must be a JSON object", "body")
    slug = _slug(payload.get("monitor_slug"))
    phase = _PHASES.get(payload.get("status"))  # type: ignore[arg-type]
    if phase is None:
        raise InvalidInput(f"status must be one of {', '.join(_PHASES)}", "status")
    raw_id = payload.get("check_in_id")
    run_id = normalise_id(raw_id) if isinstance(raw_id, str) else None
    if raw_id is not None and run_id is None:
        raise InvalidInput("check_in_id must be 1 to 128 characters of A-Z a-z 0-9 . _ : -", "check_in_id")
    duration = payload.get("duration")
    if duration is not None and (isinstance(duration, bool) or not isinstance(duration, (int, float))
                                 or not 0 <= duration < 10**9):
        raise InvalidInput("duration must be a number of seconds", "duration")
    config = payload.get("monitor_config")
    report = RunReport(slug, phase, "sentry", run_id,
                       message="the check-in reported an error" if phase == "failure" else None,
                       result_data={"duration": duration} if duration is not None else None)
    return report, _monitor_config(config, slug) if config is not None else None


def _apply(report: RunReport, declared: TaskDeclaration | None) -> str | None:
    monitor = current_bridge().monitor
    if declared is not None:
        monitor.declare_task(report.task_name, declared, "inband")
    run_id, _ = monitor.report(report)
    return run_id


def _answered(take: Callable[[], Response]) -> Response:
    """Return ``take()``'s answer, or Sentry's refusal for what it raised: ``{"detail": ...}``
    with the status, counted under ``endpoint="sentry"``; 429 and 503 with ``Retry-After``."""
    monitor = current_bridge().monitor
    try:
        return take()
    except ApiError as exc:
        monitor.reject("sentry", exc.reason)
        status, detail, retry = exc.status, exc.message, False
    except CapacityError:
        monitor.reject("sentry", "capacity")
        status, detail, retry = 429, "the bridge is at its limit of executions or task names", True
    except StoreUnavailable:
        status, detail, retry = 503, "the store is unavailable; retry later", True
    response = jsonify(detail=detail)
    response.status_code = status
    if retry:
        response.headers["Retry-After"] = "5"
    return response


@bp.post("/api/<int:project_id>/envelope/")
def envelope(project_id: int):
    """Take an envelope: apply its check-ins in order, drop every other item."""

    def take() -> Response:
        _check_key(_key())
        header, items = _items(_body(current_bridge().settings.max_batch_body_bytes))
        check_ins = [_check_in(_json_object(payload, "check-in")) for kind, payload in items if kind == "check_in"]
        for report, declared in check_ins:
            _apply(report, declared)
        event_id = header.get("event_id")
        return jsonify(id=event_id if isinstance(event_id, str) else uuid.uuid4().hex)

    return _answered(take)


@bp.route("/api/<int:project_id>/cron/<monitor_slug>/<key>/", methods=["GET", "POST"])
def cron(project_id: int, monitor_slug: str, key: str):
    """A check-in by plain HTTP: the status (and check_in_id) in the query, a JSON body with a
    ``monitor_config`` allowed. Answers 202 with the check-in's id, to close it with."""

    def take() -> Response:
        _check_key(key)
        payload: dict[str, Any] = {}
        if request.method == "POST" and request.content_length:
            payload = _json_object(_body(current_bridge().settings.max_body_bytes), "body")
        payload = {**payload, "monitor_slug": monitor_slug,
                   **{name: request.args[name] for name in ("status", "check_in_id") if name in request.args}}
        response = jsonify(id=_apply(*_check_in(payload)))
        response.status_code = 202
        return response

    return _answered(take)
