"""Turn request bodies into validated events (:mod:`bridge.core.events`), or say what is wrong.

Every refusal is an :class:`~bridge.web.errors.ApiError` naming the field at fault.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from ..core import jsoncodec
from ..core.declarations import DeclarationError, TaskDeclaration, parse_declaration
from ..core.events import CONTAINER_EVENTS, REPORTED_STATUSES, Announcement, Completion, ContainerEvent, Heartbeat
from ..core.executions import OTHER_TASK
from ..core.ids import is_traceparent, normalise_id
from .errors import InvalidInput, InvalidJSON, TooLarge

__all__ = ["Limits", "declaration", "parse_announcement", "parse_completion", "parse_container_event",
           "parse_heartbeat", "parse_json"]

MAX_DEPTH = 8
MAX_LABELS = 16
MAX_TEXT = 128
MAX_LABEL_VALUE = 256
MAX_ERROR_MESSAGE = 4096
MAX_CONTAINER_NAME = 256
MAX_IMAGE = 512
MAX_TIMESTAMP = 1e11  # year 5138; a millisecond timestamp is far above it
MAX_INTERVAL = 86_400.0
MAX_RUNTIME = 366 * 86_400.0

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LABEL_KEY = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]{0,62}")
_CONTAINER_ID = re.compile(r"[A-Za-z0-9._:-]{1,256}")
_TRACEPARENT_FORM = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


class _NestedTooDeep(InvalidInput):
    """A free-form field is nested deeper than ``MAX_DEPTH``."""


class _DocumentTooLarge(TooLarge):
    """A free-form field is larger than ``Limits.max_field_bytes``."""


@dataclass(frozen=True)
class Limits:
    """Size limits of free-form fields (``progress``, ``result_data``)."""

    max_field_bytes: int = 16_384


def _reject_constant(name: str) -> Any:
    raise InvalidJSON(f"{name} is not valid JSON; numbers must be finite", "body")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidJSON(f"number {text[:40]} is out of range", "body")
    return value


def parse_json(body: bytes) -> Any:
    """Return the JSON value of a UTF-8 ``body``.

    Raises :class:`~bridge.web.errors.InvalidJSON` for non-UTF-8 bytes, malformed or too deeply nested
    JSON, and NaN/Infinity or numbers too large to represent.
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


def _object(body: Any) -> dict:
    if not isinstance(body, dict):
        raise InvalidInput("body must be a JSON object", "body")
    return body


def _execution_id(body: dict) -> str:
    raw = body.get("execution_id")
    if raw is None:
        raise InvalidInput("execution_id is required", "execution_id")
    if not isinstance(raw, str):
        raise InvalidInput("execution_id must be a string", "execution_id")
    value = normalise_id(raw)
    if value is None:
        raise InvalidInput("execution_id must be 1 to 128 characters of A-Z a-z 0-9 . _ : -",
                           "execution_id")
    return value


def _container_id(body: dict) -> str | None:
    raw = body.get("container_id")
    if raw is None:
        return None
    if not isinstance(raw, str) or not _CONTAINER_ID.fullmatch(raw):
        raise InvalidInput("container_id must be 1 to 256 characters of A-Z a-z 0-9 . _ : -",
                           "container_id")
    return raw


def _text(body: dict, name: str, limit: int = MAX_TEXT) -> str | None:
    raw = body.get(name)
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise InvalidInput(f"{name} must be a string", name)
    if not raw.strip() or _CONTROL.search(raw) or not _is_utf8(raw):
        raise InvalidInput(f"{name} must be non-blank text without control characters", name)
    if len(raw) > limit:
        raise TooLarge(f"{name} must be at most {limit} characters", name)
    return raw


def _task_name(body: dict) -> str | None:
    name = _text(body, "task_name")
    if name == OTHER_TASK:
        raise InvalidInput(f"task_name {OTHER_TASK} is reserved for the names beyond the bridge's limit",
                           "task_name")
    return name


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from \ud800-style escapes
        return False
    return True


def _number(body: dict, name: str, low: float, high: float) -> float | None:
    raw = body.get(name)
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise InvalidInput(f"{name} must be a number", name)
    if not low <= raw <= high:
        raise InvalidInput(f"{name} must be between {low:g} and {high:g}", name)
    return float(raw)


def _nested_deeper_than(value: Any, limit: int) -> bool:
    # Iterative: a document the JSON parser accepted can still be deep enough to
    # exhaust the interpreter's recursion limit here.
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def _document(body: dict, name: str, limits: Limits) -> dict | None:
    """Return a free-form object field, checked for type, depth, size and encoding."""
    raw = body.get(name)
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InvalidInput(f"{name} must be a JSON object", name)
    if _nested_deeper_than(raw, MAX_DEPTH):
        raise _NestedTooDeep(f"{name} is nested deeper than {MAX_DEPTH} levels", name)
    try:
        size = len(jsoncodec.dumps(raw).encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidInput(f"{name} holds a string that is not valid Unicode", name) from None
    if size > limits.max_field_bytes:
        raise _DocumentTooLarge(f"{name} is {size} bytes as JSON, more than {limits.max_field_bytes}", name)
    return raw


def _labels(body: dict) -> dict | None:
    raw = body.get("labels")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InvalidInput("labels must be an object of strings", "labels")
    if len(raw) > MAX_LABELS:
        raise TooLarge(f"labels may hold at most {MAX_LABELS} entries", "labels")
    for key, value in raw.items():
        if not _LABEL_KEY.fullmatch(key):
            raise InvalidInput(f"label name {key[:64]!r} must match [a-zA-Z_][a-zA-Z0-9_]*",
                               "labels")
        if not isinstance(value, str) or _CONTROL.search(value) or not _is_utf8(value):
            raise InvalidInput(f"label {key} must be text without control characters", "labels")
        if len(value) > MAX_LABEL_VALUE:
            raise TooLarge(f"label {key} is longer than {MAX_LABEL_VALUE} characters", "labels")
    return dict(raw)


def declaration(body: Any, task: str | None, prefix: str = "") -> TaskDeclaration:
    """Return the task declaration in ``body``. Raises :class:`InvalidInput` naming the field
    (after ``prefix``, such as ``task_schedule.``)."""
    try:
        return parse_declaration(body, task)
    except DeclarationError as exc:
        field = (prefix.rstrip(".") or "body") if exc.field == "declaration" else prefix + exc.field
        raise InvalidInput(f"{field} {exc.message}", field) from None


def parse_heartbeat(body: Any, limits: Limits, traceparent_header: str | None = None) -> Heartbeat:
    """Return the :class:`Heartbeat` in a decoded JSON ``body``.

    ``traceparent_header`` is used when the body has no ``traceparent``; an invalid
    header is ignored, as W3C Trace Context asks. Raises :class:`~bridge.web.errors.ApiError`.
    """
    body = _object(body)
    execution_id = _execution_id(body)
    status = body.get("status", "running")
    if status is None:
        status = "running"
    if status not in REPORTED_STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(REPORTED_STATUSES)}", "status")
    traceparent = body.get("traceparent")
    if traceparent is not None:
        if not isinstance(traceparent, str) or not _TRACEPARENT_FORM.fullmatch(traceparent):
            raise InvalidInput("traceparent must be a W3C traceparent "
                               "(00-<32 hex>-<16 hex>-<2 hex>)", "traceparent")
        if not is_traceparent(traceparent):
            traceparent = None  # all-zero ids: W3C Trace Context says to ignore it
    elif traceparent_header and is_traceparent(traceparent_header.strip()):
        traceparent = traceparent_header.strip()
    task_name = _task_name(body)
    task_schedule = None
    if body.get("task_schedule") is not None:
        if task_name is None:
            raise InvalidInput("task_schedule declares the heartbeat's task: send task_name with it", "task_name")
        task_schedule = declaration(body["task_schedule"], task_name, "task_schedule.")
    return Heartbeat(
        execution_id=execution_id,
        container_id=_container_id(body),
        status=status,
        progress=_document(body, "progress", limits),
        timestamp=_number(body, "timestamp", 0, MAX_TIMESTAMP),
        task_name=task_name,
        task_type=_text(body, "task_type"),
        interval_seconds=_number(body, "interval_seconds", 1, MAX_INTERVAL),
        max_runtime_seconds=_number(body, "max_runtime_seconds", 1, MAX_RUNTIME),
        labels=_labels(body),
        traceparent=traceparent,
        task_schedule=task_schedule,
    )


def _exit_code(body: dict) -> int | None:
    exit_code = body.get("exit_code")
    if isinstance(exit_code, float) and exit_code.is_integer():
        exit_code = int(exit_code)  # JSON has one number type: 3.0 is the integer 3
    if exit_code is not None and (isinstance(exit_code, bool) or not isinstance(exit_code, int)
                                  or not -2**31 <= exit_code < 2**31):
        raise InvalidInput("exit_code must be an integer", "exit_code")
    return exit_code


def parse_container_event(body: Any) -> ContainerEvent:
    """Return the :class:`ContainerEvent` in a decoded JSON ``body``. Raises :class:`~bridge.web.errors.ApiError`."""
    body = _object(body)
    execution_id = _execution_id(body)
    event = body.get("event")
    if event not in CONTAINER_EVENTS:
        raise InvalidInput(f"event must be one of {', '.join(CONTAINER_EVENTS)}", "event")
    oom_killed = body.get("oom_killed", False)
    if not isinstance(oom_killed, bool):
        raise InvalidInput("oom_killed must be true or false", "oom_killed")
    name = _text(body, "container_name", MAX_CONTAINER_NAME)
    return ContainerEvent(
        execution_id=execution_id,
        event=event,
        container_id=_container_id(body),
        container_name=name.lstrip("/") if name else None,  # the engine's API prefixes a slash
        image=_text(body, "image", MAX_IMAGE),
        exit_code=_exit_code(body),
        oom_killed=oom_killed,
        task_name=_task_name(body),
        task_type=_text(body, "task_type"),
    )


def parse_announcement(execution_id: str, body: Any) -> Announcement:
    """Return the launcher's :class:`Announcement` of ``execution_id`` (from the URL) in a
    decoded JSON ``body``. Raises :class:`~bridge.web.errors.ApiError`."""
    body = _object(body)
    canonical = normalise_id(execution_id)
    if canonical is None:
        raise InvalidInput("execution_id must be 1 to 128 characters of A-Z a-z 0-9 . _ : -", "execution_id")
    if body.get("execution_id") not in (None, execution_id, canonical):
        raise InvalidInput("execution_id in the body differs from the one in the URL", "execution_id")
    return Announcement(
        execution_id=canonical,
        task_name=_task_name(body),
        task_type=_text(body, "task_type"),
        labels=_labels(body),
        interval_seconds=_number(body, "interval_seconds", 1, MAX_INTERVAL),
        max_runtime_seconds=_number(body, "max_runtime_seconds", 1, MAX_RUNTIME),
    )


def parse_completion(body: Any, limits: Limits) -> Completion:
    """Return the :class:`Completion` in a decoded JSON ``body``. Raises :class:`~bridge.web.errors.ApiError`.

    An ``error_message`` longer than the limit is cut, and a ``result_data`` too large or
    too deep is dropped, not refused: losing a task's completion (and so making it
    ``lost``) over its extras would be worse. The completion's ``warnings`` say so.
    """
    body = _object(body)
    execution_id = _execution_id(body)
    success = body.get("success")
    if not isinstance(success, bool):
        raise InvalidInput("success is required and must be true or false", "success")
    warnings: list[str] = []
    error_message = body.get("error_message")
    if error_message is not None:
        if not isinstance(error_message, str) or not _is_utf8(error_message):
            raise InvalidInput("error_message must be a string", "error_message")
        if len(error_message) > MAX_ERROR_MESSAGE:
            warnings.append(f"error_message was {len(error_message)} characters: cut to {MAX_ERROR_MESSAGE}")
            error_message = error_message[:MAX_ERROR_MESSAGE - 1] + "…"
    try:
        result_data = _document(body, "result_data", limits)
    except (_NestedTooDeep, _DocumentTooLarge) as exc:  # not an object, or not valid Unicode, is still refused
        warnings.append(f"{exc.message}: dropped")
        result_data = None
    return Completion(
        execution_id=execution_id,
        success=success,
        container_id=_container_id(body),
        result_data=result_data,
        error_message=error_message,
        exit_code=_exit_code(body),
        task_name=_task_name(body),
        warnings=tuple(warnings),
    )
