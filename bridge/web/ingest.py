"""The ingest API the task containers post to: heartbeats and completions."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from flask import Blueprint, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from ..core.events import Heartbeat
from ..core.executions import Outcome
from ..store import CapacityError
from .errors import ApiError, InvalidInput, RequestTimeout, TooLarge, UnsupportedMediaType
from .extension import current_bridge
from .validation import parse_completion, parse_container_event, parse_heartbeat, parse_json

__all__ = ["FAST_PATH_ERROR", "bp", "event_answer", "heartbeat_answer", "ingest", "is_json_mimetype",
           "json_body"]

bp = Blueprint("monitoring", __name__, url_prefix="/api/v1/monitoring")

#: The environ key in which :mod:`bridge.fastpath` hands the heartbeat view the error of a
#: heartbeat it already gave the store, for the view to answer without applying it again.
FAST_PATH_ERROR = "bridge.fast_path_error"

class _Event(Protocol):
    @property
    def execution_id(self) -> str: ...


T = TypeVar("T", bound=_Event)


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
    except OSError:  # a long body that stalled past the read deadline (bridge.worker)
        raise RequestTimeout("the body was not received in time", "body") from None
    return parse_json(body)


def ingest(endpoint: str, parse: Callable[[Any], T], act: Callable[[T], Any]):
    """Check the token, parse the body, act on it; count a refusal under ``endpoint``."""
    bridge = current_bridge()
    try:
        grant = bridge.authorizer.ingest(request.headers.get("Authorization"))
        item = parse(json_body(bridge.settings.max_body_bytes))
        bridge.authorizer.check(grant, item.execution_id)
        return act(item)
    except ApiError as exc:
        bridge.monitor.reject(endpoint, exc.reason)
        raise
    except CapacityError:
        bridge.monitor.reject(endpoint, "capacity")
        raise


def heartbeat_answer(execution_id: str, outcome: Outcome) -> dict[str, Any]:
    """Return the body of the 200 answer to a committed heartbeat."""
    if outcome.record is None:
        return {"status": "ok", "execution_id": execution_id, "ignored": True}
    return {"status": "ok", "execution_id": execution_id, "execution_status": outcome.record.status,
            "interval_seconds": outcome.record.interval_seconds}


@bp.post("/heartbeat")
def heartbeat():
    """Record one heartbeat; 200 ``{"status": "ok"}`` once it is committed.

    Most heartbeats are answered by :mod:`bridge.fastpath` before they reach Flask; this
    view serves the others, and answers the errors the fast path hands it.
    """
    bridge = current_bridge()

    def act(hb):
        error = request.environ.pop(FAST_PATH_ERROR, None)
        if error is not None:
            raise error
        return jsonify(heartbeat_answer(hb.execution_id, bridge.monitor.heartbeat(hb)))

    return ingest("heartbeat", lambda body: parse_heartbeat(
        body, bridge.limits, request.headers.get("traceparent")), act)


@bp.post("/completion")
def completion():
    """Record a completion; a repeat answers 200 with ``"duplicate": true`` and changes nothing."""
    bridge = current_bridge()

    return ingest("completion", lambda body: parse_completion(body, bridge.limits),
                   lambda c: event_answer(c.execution_id, bridge.monitor.complete(c), c.warnings))


def event_answer(execution_id: str, outcome: Outcome, warnings: tuple[str, ...] = ()):
    """Return the 200 answer to an event that may repeat: ``duplicate`` says whether it did,
    ``warnings`` what of it was cut or dropped."""
    body: dict[str, Any] = {"status": "ok", "execution_id": execution_id,
                            "duplicate": outcome.result == "duplicate"}
    if outcome.record is not None:
        body["execution_status"] = outcome.record.status
    if warnings:
        body["warnings"] = list(warnings)
    return jsonify(body)


@bp.post("/container-events")
def container_event():
    """Record a Docker agent's start, die or oom report; a repeat after the end is a duplicate."""
    bridge = current_bridge()

    return ingest("container_event", parse_container_event,
                   lambda event: event_answer(event.execution_id, bridge.monitor.container_event(event)))


@bp.post("/heartbeats")
def heartbeats():
    """Record many heartbeats (a JSON array); 200 with one result per item, in order.

    A bad item is refused on its own (its result carries ``error``, ``field`` and the
    ``code`` a single heartbeat would have got); the others are applied together.
    """
    bridge = current_bridge()
    settings = bridge.settings
    try:
        grant = bridge.authorizer.ingest(request.headers.get("Authorization"))
        body = json_body(settings.max_batch_body_bytes)
        if not isinstance(body, list):
            raise InvalidInput("body must be a JSON array of heartbeats", "body")
        if len(body) > settings.max_batch_items:
            raise TooLarge(f"at most {settings.max_batch_items} heartbeats per request", "body")
    except ApiError as exc:
        bridge.monitor.reject("heartbeats", exc.reason)
        raise
    results: list[dict | None] = [None] * len(body)
    valid: list[tuple[int, Heartbeat]] = []
    refused: Counter = Counter()
    for index, item in enumerate(body):
        try:
            hb = parse_heartbeat(item, bridge.limits)
            bridge.authorizer.check(grant, hb.execution_id)
            valid.append((index, hb))
        except ApiError as exc:
            refused[exc.reason] += 1
            results[index] = {"status": "error", "error": exc.message, "field": exc.field, "code": exc.status}
    outcomes = bridge.monitor.heartbeats([hb for _, hb in valid]) if valid else []
    for (index, hb), outcome in zip(valid, outcomes):
        if isinstance(outcome, CapacityError):
            refused["capacity"] += 1
            results[index] = {"status": "error", "error": str(outcome), "field": "execution_id", "code": 429}
        elif outcome.record is None:
            results[index] = {"status": "ok", "execution_id": hb.execution_id, "ignored": True}
        else:
            results[index] = {"status": "ok", "execution_id": hb.execution_id,
                              "execution_status": outcome.record.status}
    for reason, count in refused.items():
        bridge.monitor.reject("heartbeats", reason, count)
    return jsonify(status="ok", accepted=len(body) - sum(refused.values()),
                   rejected=sum(refused.values()), results=results)
