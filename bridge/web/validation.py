"""Turn request bodies into validated events (:mod:`bridge.core.events`), or say what is wrong.

Each value is checked by its rule in :mod:`bridge.core.inputs`, the one every door uses;
a refusal is an :class:`~bridge.core.errors.InvalidInput` (or a kind of it) naming the field.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from ..core import inputs, jsoncodec
from ..core.declarations import parse_declaration
from ..core.errors import InvalidInput, InvalidJSON
from ..core.events import CONTAINER_EVENTS, REPORTED_STATUSES, Announcement, Completion, ContainerEvent, Heartbeat
from ..core.ids import is_traceparent

__all__ = ["Limits", "parse_announcement", "parse_completion", "parse_container_event", "parse_heartbeat", "parse_json"]

MAX_TIMESTAMP = 1e11  # year 5138; a millisecond timestamp is far above it
MAX_INTERVAL = 86_400.0
MAX_RUNTIME = 366 * 86_400.0
MAX_CONTAINER_NAME = 256
MAX_IMAGE = 512

_TRACEPARENT_FORM = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


@dataclass(frozen=True)
class Limits:
    """Size limits of free-form fields (``progress``, ``result_data``)."""

    max_field_bytes: int = inputs.DEFAULT_MAX_FIELD_BYTES


def _reject_constant(name: str) -> Any:
    raise InvalidJSON(f"{name} is not valid JSON; numbers must be finite", "body")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidJSON(f"number {text[:40]} is out of range", "body")
    return value


def parse_json(body: bytes) -> Any:
    """Return the JSON value of a UTF-8 ``body``.

    Raises :class:`~bridge.core.errors.InvalidJSON` for non-UTF-8 bytes, malformed or too
    deeply nested JSON, and NaN/Infinity or numbers too large to represent.
    """
    return jsoncodec.loads(body, fallback=_parse_exactly)


def _parse_exactly(body: bytes) -> Any:
    """:func:`parse_json` by the standard library: what orjson refuses, and long integers."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidJSON(f"body is not UTF-8 (byte {exc.start})", "body") from None
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except InvalidInput:
        raise
    except RecursionError:
        raise InvalidJSON("body is nested too deeply", "body") from None
    except ValueError as exc:  # JSONDecodeError, and ints beyond Python's digit limit
        raise InvalidJSON(f"body is not valid JSON: {exc}", "body") from None


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidInput("body must be a JSON object", "body")
    return body


def _text(body: dict[str, Any], name: str, limit: int = inputs.MAX_TEXT) -> str | None:
    return inputs.text(body.get(name), name, limit)


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    return inputs.number(body.get(name), name, low, high)


def _exit_code(body: dict[str, Any]) -> int | None:
    return inputs.integer(body.get("exit_code"), "exit_code", -(2**31), 2**31 - 1)


def parse_heartbeat(body: Any, limits: Limits, traceparent_header: str | None = None) -> Heartbeat:
    """Return the :class:`Heartbeat` in a decoded JSON ``body``.

    ``traceparent_header`` is used when the body has no ``traceparent``; an invalid
    header is ignored, as W3C Trace Context asks. Raises :class:`~bridge.core.errors.InvalidInput`.
    """
    body = _object(body)
    execution_id = inputs.execution_id(body.get("execution_id"))
    status = body.get("status", "running")
    if status is None:
        status = "running"
    if not isinstance(status, str) or status not in REPORTED_STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(REPORTED_STATUSES)}", "status")
    traceparent = body.get("traceparent")
    if traceparent is not None:
        if not isinstance(traceparent, str) or not _TRACEPARENT_FORM.fullmatch(traceparent):
            raise InvalidInput("traceparent must be a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)", "traceparent")
        if not is_traceparent(traceparent):
            traceparent = None  # all-zero ids: W3C Trace Context says to ignore it
    elif traceparent_header and is_traceparent(traceparent_header.strip()):
        traceparent = traceparent_header.strip()
    task_name = inputs.task_name(body.get("task_name"))
    task_schedule = None
    if body.get("task_schedule") is not None:
        if task_name is None:
            raise InvalidInput("task_schedule declares the heartbeat's task: send task_name with it", "task_name")
        task_schedule = parse_declaration(body["task_schedule"], task_name, "task_schedule.")
    return Heartbeat(
        execution_id=execution_id,
        container_id=inputs.identifier(body.get("container_id"), "container_id"),
        status=status,
        progress=inputs.document(body.get("progress"), "progress", limits.max_field_bytes),
        timestamp=inputs.number(
            body.get("timestamp"), "timestamp", 0, MAX_TIMESTAMP, "unix seconds (not milliseconds)"
        ),
        task_name=task_name,
        task_type=_text(body, "task_type"),
        interval_seconds=_number(body, "interval_seconds", 1, MAX_INTERVAL),
        max_runtime_seconds=_number(body, "max_runtime_seconds", 1, MAX_RUNTIME),
        labels=inputs.labels(body.get("labels")),
        traceparent=traceparent,
        task_schedule=task_schedule,
    )


def parse_container_event(body: Any) -> ContainerEvent:
    """Return the :class:`ContainerEvent` in a decoded JSON ``body``.

    Raises :class:`~bridge.core.errors.InvalidInput`.
    """
    body = _object(body)
    execution_id = inputs.execution_id(body.get("execution_id"))
    event = body.get("event")
    if not isinstance(event, str) or event not in CONTAINER_EVENTS:
        raise InvalidInput(f"event must be one of {', '.join(CONTAINER_EVENTS)}", "event")
    oom_killed = body.get("oom_killed", False)
    if not isinstance(oom_killed, bool):
        raise InvalidInput("oom_killed must be true or false", "oom_killed")
    name = _text(body, "container_name", MAX_CONTAINER_NAME)
    return ContainerEvent(
        execution_id=execution_id,
        event=event,
        container_id=inputs.identifier(body.get("container_id"), "container_id"),
        container_name=name.lstrip("/") if name else None,  # the engine's API prefixes a slash
        image=_text(body, "image", MAX_IMAGE),
        exit_code=_exit_code(body),
        oom_killed=oom_killed,
        task_name=inputs.task_name(body.get("task_name")),
        task_type=_text(body, "task_type"),
    )


def parse_announcement(execution_id: str, body: Any) -> Announcement:
    """Return the launcher's :class:`Announcement` of ``execution_id`` (from the URL) in a
    decoded JSON ``body``. Raises :class:`~bridge.core.errors.InvalidInput`."""
    body = _object(body)
    canonical = inputs.execution_id(execution_id)
    if body.get("execution_id") not in (None, execution_id, canonical):
        raise InvalidInput("execution_id in the body differs from the one in the URL", "execution_id")
    return Announcement(
        execution_id=canonical,
        task_name=inputs.task_name(body.get("task_name")),
        task_type=_text(body, "task_type"),
        labels=inputs.labels(body.get("labels")),
        interval_seconds=_number(body, "interval_seconds", 1, MAX_INTERVAL),
        max_runtime_seconds=_number(body, "max_runtime_seconds", 1, MAX_RUNTIME),
    )


def parse_completion(body: Any, limits: Limits) -> Completion:
    """Return the :class:`Completion` in a decoded JSON ``body``. Raises :class:`~bridge.core.errors.InvalidInput`.

    An ``error_message`` longer than the limit is cut, and a ``result_data`` too large or
    too deep is dropped, not refused: losing a task's completion (and so making it
    ``lost``) over its extras would be worse. The completion's ``warnings`` say so.
    """
    body = _object(body)
    execution_id = inputs.execution_id(body.get("execution_id"))
    success = body.get("success")
    if not isinstance(success, bool):
        raise InvalidInput("success is required and must be true or false", "success")
    warnings: list[str] = []
    error_message = body.get("error_message")
    if error_message is not None and (not isinstance(error_message, str) or not inputs.is_utf8(error_message)):
        raise InvalidInput("error_message must be a string", "error_message")
    error_message, cut = inputs.cut(error_message, "error_message")
    if cut:
        warnings.append(cut)
    try:
        result_data = inputs.document(body.get("result_data"), "result_data", limits.max_field_bytes)
    except (inputs.NestedTooDeep, inputs.DocumentTooLarge) as exc:  # not an object, or bad Unicode, is refused
        warnings.append(f"{exc.message}: dropped")
        result_data = None
    return Completion(
        execution_id=execution_id,
        success=success,
        container_id=inputs.identifier(body.get("container_id"), "container_id"),
        result_data=result_data,
        error_message=error_message,
        exit_code=_exit_code(body),
        task_name=inputs.task_name(body.get("task_name")),
        warnings=tuple(warnings),
    )
