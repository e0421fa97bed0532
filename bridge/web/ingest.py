"""The ingest API the task containers post to: heartbeats and completions."""

from __future__ import annotations

from collections import Counter
from typing import Any

from flask import Blueprint, Response, jsonify, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import RequestEntityTooLarge

from ..core.errors import BridgeError, InvalidInput, RequestTimeout, TooLarge, UnsupportedMediaType
from ..core.events import Heartbeat
from ..core.executions import Outcome
from .errors import by_view, http_status, refusals
from .extension import current_bridge
from .validation import parse_completion, parse_container_event, parse_heartbeat, parse_json

__all__ = ["FAST_PATH_ERROR", "bp", "event_answer", "heartbeat_answer", "is_json_mimetype", "json_body"]

bp = Blueprint("monitoring", __name__, url_prefix="/api/v1/monitoring")
refusals(bp, by_view())

#: The environ key in which :mod:`bridge.web.fastpath` hands the heartbeat view the error of a
#: heartbeat it already gave the store, for the view to answer without applying it again.
FAST_PATH_ERROR = "bridge.fast_path_error"


def _too_large(max_bytes: int) -> TooLarge:
    return TooLarge(f"body is larger than {max_bytes} bytes", "body")


def _read_body(max_bytes: int) -> bytes:
    """Return the raw body of a request whose Content-Length, if any, is within ``max_bytes``.

    Raises :class:`TooLarge` for a chunked body over the limit.
    """
    if request.content_length is not None:
        return request.get_data(cache=False)
    if "wsgi.input_terminated" in request.environ:
        # Chunked: werkzeug would stop quietly at the limit and hand on a truncated
        # body, so read one byte more than allowed to tell "exactly" from "larger".
        body = request.environ["wsgi.input"].read(max_bytes + 1)
        if len(body) > max_bytes:
            raise _too_large(max_bytes)
        return body
    return request.get_data(cache=False)  # no length, no framing: werkzeug reads nothing


def is_json_mimetype(mimetype: str) -> bool:
    """Return True when a request's (lower-case) ``mimetype`` says its body is JSON."""
    return mimetype == "application/json" or mimetype.endswith("+json")


def json_body(max_bytes: int) -> Any:
    """Return the decoded JSON body. Raises an :class:`ApiError` (413, 415, 408 or 400)."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise _too_large(max_bytes)
    if not is_json_mimetype(request.mimetype):
        raise UnsupportedMediaType("Content-Type must be application/json", "Content-Type")
    try:
        body = _read_body(max_bytes)
    except RequestEntityTooLarge:
        raise _too_large(max_bytes) from None
    except OSError:  # a long body that stalled past the read deadline (bridge.server.worker)
        raise RequestTimeout("the body was not received in time", "body") from None
    return parse_json(body)


def heartbeat_answer(execution_id: str, outcome: Outcome) -> dict[str, Any]:
    """Return the body of the 200 answer to a committed heartbeat."""
    if outcome.record is None:
        return {"status": "ok", "execution_id": execution_id, "ignored": True}
    return {
        "status": "ok",
        "execution_id": execution_id,
        "execution_status": outcome.record.status,
        "interval_seconds": outcome.record.interval_seconds,
    }


@bp.post("/heartbeat")
def heartbeat() -> ResponseReturnValue:
    """Record one heartbeat; 200 ``{"status": "ok"}`` once it is committed.

    Most heartbeats are answered by :mod:`bridge.web.fastpath` before they reach Flask; this
    view serves the others, and answers the errors the fast path hands it.
    """
    bridge = current_bridge()
    grant = bridge.authorizer.ingest(request.headers.get("Authorization"))
    hb = parse_heartbeat(json_body(bridge.settings.max_body_bytes), bridge.limits, request.headers.get("traceparent"))
    bridge.authorizer.check(grant, hb.execution_id)
    error = request.environ.pop(FAST_PATH_ERROR, None)
    if error is not None:
        raise error
    return jsonify(heartbeat_answer(hb.execution_id, bridge.monitor.heartbeat(hb)))


@bp.post("/completion")
def completion() -> ResponseReturnValue:
    """Record a completion; a repeat answers 200 with ``"duplicate": true`` and changes nothing."""
    bridge = current_bridge()
    grant = bridge.authorizer.ingest(request.headers.get("Authorization"))
    done = parse_completion(json_body(bridge.settings.max_body_bytes), bridge.limits)
    bridge.authorizer.check(grant, done.execution_id)
    return event_answer(done.execution_id, bridge.monitor.complete(done), done.warnings)


def event_answer(execution_id: str, outcome: Outcome, warnings: tuple[str, ...] = ()) -> Response:
    """Return the 200 answer to an event that may repeat: ``duplicate`` says whether it did,
    ``warnings`` what of it was cut or dropped."""
    body: dict[str, Any] = {"status": "ok", "execution_id": execution_id, "duplicate": outcome.result == "duplicate"}
    if outcome.record is not None:
        body["execution_status"] = outcome.record.status
    if warnings:
        body["warnings"] = list(warnings)
    return jsonify(body)


@bp.post("/container-events")
def container_event() -> ResponseReturnValue:
    """Record a Docker agent's start, die or oom report; a repeat after the end is a duplicate."""
    bridge = current_bridge()
    grant = bridge.authorizer.ingest(request.headers.get("Authorization"))
    event = parse_container_event(json_body(bridge.settings.max_body_bytes))
    bridge.authorizer.check(grant, event.execution_id)
    return event_answer(event.execution_id, bridge.monitor.container_event(event))


#: What a heartbeat of a batch refused after parsing is answered: (status, reason, message).
_ITEM_REFUSALS = {
    "capacity": (429, "capacity", "the bridge tracks as many executions as BRIDGE_MAX_EXECUTIONS allows"),
    "conflict": (409, "conflict", "task_schedule.ping_uuid is held by another task"),
}


@bp.post("/heartbeats")
def heartbeats() -> ResponseReturnValue:
    """Record many heartbeats (a JSON array); 200 with one result per item, in order.

    A bad item is refused on its own (its result carries ``error``, ``field`` and the
    ``code`` a single heartbeat would have got) and changes nothing; the others are
    applied together.
    """
    bridge = current_bridge()
    settings = bridge.settings
    grant = bridge.authorizer.ingest(request.headers.get("Authorization"))
    body = json_body(settings.max_batch_body_bytes)
    if not isinstance(body, list):
        raise InvalidInput("body must be a JSON array of heartbeats", "body")
    if len(body) > settings.max_batch_items:
        raise TooLarge(f"at most {settings.max_batch_items} heartbeats per request", "body")
    results: list[dict[str, Any] | None] = [None] * len(body)
    valid: list[tuple[int, Heartbeat]] = []
    refused: Counter[str] = Counter()
    for index, item in enumerate(body):
        hb = _batch_item(item, bridge, grant)
        if isinstance(hb, BridgeError):
            refused[hb.reason] += 1
            results[index] = {"status": "error", "error": hb.message, "field": hb.field, "code": http_status(hb)}
        else:
            valid.append((index, hb))
    outcomes = bridge.monitor.heartbeats([hb for _, hb in valid]) if valid else []
    for (index, hb), outcome in zip(valid, outcomes):
        if outcome.result in _ITEM_REFUSALS:
            code, reason, message = _ITEM_REFUSALS[outcome.result]
            refused[reason] += 1
            field = "task_schedule.ping_uuid" if reason == "conflict" else "execution_id"
            results[index] = {"status": "error", "error": message, "field": field, "code": code}
        elif outcome.record is None:
            results[index] = {"status": "ok", "execution_id": hb.execution_id, "ignored": True}
        else:
            results[index] = {
                "status": "ok",
                "execution_id": hb.execution_id,
                "execution_status": outcome.record.status,
            }
    for reason, count in refused.items():
        bridge.monitor.reject("heartbeats", reason, count)
    return jsonify(
        status="ok", accepted=len(body) - sum(refused.values()), rejected=sum(refused.values()), results=results
    )


def _batch_item(item: Any, bridge: Any, grant: Any) -> Heartbeat | BridgeError:
    """Return one item of a batch as a heartbeat its token grants, or the refusal that answers
    it (a batch answers each item: one bad item refuses no other)."""
    try:
        hb = parse_heartbeat(item, bridge.limits)
        bridge.authorizer.check(grant, hb.execution_id)
    except BridgeError as exc:
        return exc
    return hb
