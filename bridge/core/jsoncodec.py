"""JSON in and out of the hot paths: orjson where it gives the standard library's answer.

Every heartbeat is parsed from JSON, its record decoded from and encoded to JSON, and
its answer written as JSON; with the standard library that was a fifth of a request's
time. orjson does each in a fraction of it. Where the two libraries differ, the standard
library decides: orjson reads integers beyond 64 bits as floats and cannot write them,
and refuses some input (lone surrogate escapes) the standard library takes. So text
holding a long run of digits, and anything orjson refuses, goes to the standard library.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson

__all__ = ["dumps", "encode_answer", "loads"]

# A run of 19 digits can already be below -2**63, where orjson reads a float. Found by
# mapping each digit to "0" and every other byte to " ", ten times as fast as a regex.
_DIGITS_TO_ZERO = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))
_LONG_RUN = b"0" * 19
_stdlib_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_RESPONSE_OPTIONS = (
    orjson.OPT_SORT_KEYS
    | orjson.OPT_APPEND_NEWLINE
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
)


def dumps(value: Any) -> str:
    """Return the compact JSON of ``value``, non-ASCII characters as they are.

    Non-finite floats become ``null`` (the standard library would write ``NaN``, which
    is not JSON); validated input holds none. Raises ``TypeError`` for a value JSON
    cannot hold, as :func:`json.dumps` does.
    """
    try:
        return orjson.dumps(value, default=_named_tuple).decode()
    except orjson.JSONEncodeError:
        return _stdlib_encode(value)


def _named_tuple(value: Any) -> Any:
    """Return a named tuple (a record's stages, say) as the array JSON holds it; raises
    ``TypeError`` for anything else orjson cannot write."""
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def loads(data: str | bytes, fallback: Callable[[Any], Any] = json.loads, *, long_integers: bool = True) -> Any:
    """Return the value of the JSON document ``data``: what ``fallback`` would return.

    ``fallback`` (the standard library's reader, or one configured from it) reads what
    orjson refuses or might read differently, and raises what it raises; for
    :func:`json.loads`, ``ValueError`` on malformed JSON. ``long_integers=False`` says
    the document cannot hold an integer beyond 64 bits, so the search for one is skipped
    (a long run of digits inside a string, such as a numeric id, would otherwise send the
    whole document to the slower reader).
    """
    raw = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")
    if not long_integers or _LONG_RUN not in raw.translate(_DIGITS_TO_ZERO):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # the standard library takes some of it, and words its errors
    return fallback(data)


def encode_answer(value: Any, default: Callable[[Any], Any] | None = None) -> bytes:
    """Return the body of a JSON answer: keys sorted, a final newline, as Flask writes it.

    ``default`` turns what orjson cannot write into what it can. Raises
    ``orjson.JSONEncodeError`` (a ``TypeError``) for a value still left over.
    """
    return orjson.dumps(value, default=default or _named_tuple, option=_RESPONSE_OPTIONS)
