"""The input rules: each kind of value any door takes, defined once.

Native heartbeats and completions, batches, announcements, container events, the tasks
API, the tasks file, in-band ``task_schedule``, Healthchecks pings and Sentry check-ins all
check their values here, so a value one door refuses every door refuses, with the same
words. Each function takes the raw decoded value and the name of the field it came in
(dotted for nested ones, such as ``task_schedule.labels``), returns the value as the
bridge keeps it, and raises :class:`~bridge.core.errors.InvalidInput` (or
:class:`~bridge.core.errors.TooLarge` for a value past a size limit) naming that field.
``None`` stands for an absent optional value and is returned as it is.
"""

from __future__ import annotations

import math
import re
from typing import Any

from . import jsoncodec
from .errors import InvalidInput, TooLarge
from .ids import UUID, normalise_id

__all__ = [
    "CONTAINER_ID",
    "LABEL_KEY",
    "MAX_DEPTH",
    "MAX_ERROR_MESSAGE",
    "MAX_LABELS",
    "MAX_LABEL_VALUE",
    "MAX_TASK_NAME",
    "MAX_TEXT",
    "OTHER_TASK",
    "PING_KEY",
    "URL_WORD",
    "UUID",
    "cut",
    "document",
    "execution_id",
    "identifier",
    "integer",
    "is_utf8",
    "label_key",
    "labels",
    "nested_deeper_than",
    "number",
    "object_of",
    "ping_key",
    "task_name",
    "text",
    "url",
    "uuid",
]

#: The label value that task names beyond ``BRIDGE_MAX_TASK_NAMES`` share; no client may send it.
OTHER_TASK = "_other"
MAX_TASK_NAME = 128
#: Short free text: a task type, a container name's parts.
MAX_TEXT = 128
#: Long free text: a task's description.
MAX_DESCRIPTION = 1024
MAX_URL = 2048
MAX_LABELS = 16
MAX_LABEL_VALUE = 256
MAX_ERROR_MESSAGE = 4096
#: Free-form objects (progress, result data) nest at most this deep.
MAX_DEPTH = 8
#: A free-form field's (``progress``, ``result_data``) encoded size, unless configured.
DEFAULT_MAX_FIELD_BYTES = 16_384

LABEL_KEY = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]{0,62}")
CONTAINER_ID = re.compile(r"[A-Za-z0-9._:-]{1,256}")
#: A word of a ping URL (a ping key, a slug): letters, digits, ``-`` and ``_``.
URL_WORD = re.compile(r"[-a-zA-Z0-9_]+")
PING_KEY = re.compile(r"[-a-zA-Z0-9_]{1,128}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_URL = re.compile(r"https?://[^\s/?#]+[^\s]*", re.IGNORECASE)


def is_utf8(value: str) -> bool:
    """Return True when ``value`` can be written as UTF-8 (no lone surrogate from a ``\\ud800`` escape)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def text(value: Any, field: str, limit: int = MAX_TEXT, *, required: bool = False) -> str | None:
    """Return non-blank text of at most ``limit`` characters, without control characters."""
    if value is None:
        if required:
            raise InvalidInput(f"{field} is required", field)
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be a string", field)
    if not value.strip() or _CONTROL.search(value) or not is_utf8(value):
        raise InvalidInput(f"{field} must be non-blank text without control characters", field)
    if len(value) > limit:
        raise TooLarge(f"{field} must be at most {limit} characters", field)
    return value


def task_name(value: Any, field: str = "task_name", *, required: bool = False) -> str | None:
    """Return a task name: text of 1 to 128 characters, not the reserved ``_other``."""
    name = text(value, field, MAX_TASK_NAME, required=required)
    if name == OTHER_TASK:
        raise InvalidInput(f"{field} {OTHER_TASK} is reserved for the names beyond the bridge's limit", field)
    return name


def execution_id(value: Any, field: str = "execution_id") -> str:
    """Return an execution id in its canonical form (UUIDs lower-cased); it is required."""
    if value is None:
        raise InvalidInput(f"{field} is required", field)
    canonical = normalise_id(value) if isinstance(value, str) else None
    if canonical is None:
        raise InvalidInput(f"{field} must be 1 to 128 characters of A-Z a-z 0-9 . _ : -", field)
    return canonical


def identifier(
    value: Any,
    field: str,
    pattern: re.Pattern[str] = CONTAINER_ID,
    what: str = "1 to 256 characters of A-Z a-z 0-9 . _ : -",
) -> str | None:
    """Return a value that must match ``pattern`` whole (a container id by default), said as ``what``."""
    if value is None:
        return None
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise InvalidInput(f"{field} must be {what}", field)
    return value


def uuid(value: Any, field: str) -> str | None:
    """Return a UUID in its hyphenated form, lower-cased."""
    if value is None:
        return None
    if not isinstance(value, str) or not UUID.fullmatch(value):
        raise InvalidInput(f"{field} must be a UUID (8-4-4-4-12 hex digits)", field)
    return value.lower()


def ping_key(value: Any, field: str = "ping_key") -> str | None:
    """Return a Healthchecks ping key: 1 to 128 letters, digits, ``-`` and ``_``."""
    return identifier(value, field, PING_KEY, "1 to 128 letters, digits, - and _")


def url(value: Any, field: str) -> str | None:
    """Return a link a person may follow: an ``http`` or ``https`` URL (no ``javascript:``, ``data:``...)."""
    link = text(value, field, MAX_URL)
    if link is not None and not _URL.fullmatch(link):
        raise InvalidInput(f"{field} must be an http:// or https:// URL", field)
    return link


def number(value: Any, field: str, low: float, high: float, unit: str | None = None) -> float | None:
    """Return a finite number from ``low`` to ``high`` as a float (an integer of any size is
    compared exactly, never converted first). A refusal says the ``unit``: seconds for a field
    named ``..._seconds`` unless told otherwise."""
    if value is None:
        return None
    unit = unit or ("seconds" if field.endswith("_seconds") else None)
    kind = f"a number of {unit}" if unit else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(f"{field} must be {kind}", field)
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInput(f"{field} must be a finite number", field)
    if not low <= value <= high:
        raise InvalidInput(f"{field} must be {kind} between {low:g} and {high:g}", field)
    return float(value)


def integer(value: Any, field: str, low: int, high: int) -> int | None:
    """Return a whole number from ``low`` to ``high`` (``3.0`` is the integer 3: JSON has one number type)."""
    if value is None:
        return None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(f"{field} must be an integer from {low} to {high}", field)
    return value


def label_key(value: Any, field: str) -> str:
    """Return a label name as Prometheus takes it after ``label_``: ``[a-zA-Z_][a-zA-Z0-9_]*``, 63 at most."""
    if not isinstance(value, str) or not LABEL_KEY.fullmatch(value):
        raise InvalidInput(f"{field}: label name {str(value)[:64]!r} must match [a-zA-Z_][a-zA-Z0-9_]*", field)
    return value


def labels(value: Any, field: str = "labels") -> dict[str, str] | None:
    """Return a small map of label names to text values, sorted by name."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidInput(f"{field} must be an object of strings", field)
    if len(value) > MAX_LABELS:
        raise TooLarge(f"{field} may hold at most {MAX_LABELS} entries", field)
    for key, item in value.items():
        label_key(key, field)
        if not isinstance(item, str) or _CONTROL.search(item) or not is_utf8(item):
            raise InvalidInput(f"{field}: label {key} must be text without control characters", field)
        if len(item) > MAX_LABEL_VALUE:
            raise TooLarge(f"{field}: label {key} is longer than {MAX_LABEL_VALUE} characters", field)
    return dict(sorted(value.items()))


def object_of(value: Any, field: str) -> dict[str, Any]:
    """Return ``value`` when it is a JSON object."""
    if not isinstance(value, dict):
        raise InvalidInput(f"{field} must be a JSON object", field)
    return value


def nested_deeper_than(value: Any, limit: int) -> bool:
    """Return True when ``value`` holds lists or objects nested more than ``limit`` deep."""
    # Iterative: a document a JSON parser accepted can still be deep enough to exhaust the
    # interpreter's recursion limit.
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


class NestedTooDeep(InvalidInput):
    """A free-form object nests deeper than :data:`MAX_DEPTH`."""


class DocumentTooLarge(TooLarge):
    """A free-form object is larger, as JSON, than its limit."""


def document(value: Any, field: str, max_bytes: int) -> dict[str, Any] | None:
    """Return a free-form JSON object (``progress``, ``result_data``), checked for depth,
    size as JSON and encoding. Raises :class:`NestedTooDeep` and :class:`DocumentTooLarge`
    for the limits a caller may prefer to drop the value for."""
    if value is None:
        return None
    object_of(value, field)
    if nested_deeper_than(value, MAX_DEPTH):
        raise NestedTooDeep(f"{field} is nested deeper than {MAX_DEPTH} levels", field)
    try:
        size = len(jsoncodec.dumps(value).encode("utf-8"))
    except (UnicodeEncodeError, TypeError):
        raise InvalidInput(f"{field} holds a string that is not valid Unicode", field) from None
    if size > max_bytes:
        raise DocumentTooLarge(f"{field} is {size} bytes as JSON, more than {max_bytes}", field)
    return value


def cut(value: str | None, field: str, limit: int = MAX_ERROR_MESSAGE) -> tuple[str | None, str | None]:
    """Return ``value`` cut to ``limit`` characters (the last one an ellipsis), and the
    warning that says so (None when nothing was cut). A message is worth keeping in part:
    refusing it would lose the report it came with."""
    if value is None or len(value) <= limit:
        return value, None
    return value[: limit - 1] + "…", f"{field} was {len(value)} characters: cut to {limit}"
