"""Execution ids and the trace ids derived from them (docs/design.md: API, Traces)."""

from __future__ import annotations

import hashlib
import re

__all__ = [
    "ID_PATTERN",
    "UUID",
    "execution_span_id",
    "is_traceparent",
    "normalise_id",
    "segment_span_id",
    "trace_id_for",
]

#: ids are any ``[A-Za-z0-9._:-]{1,128}``
ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
#: a UUID in its hyphenated form, either case
UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")


def normalise_id(raw: str) -> str | None:
    """Return the canonical form of an execution id, or None when ``raw`` is not one.

    UUIDs in their hyphenated form are lower-cased, so ``ABC...`` and ``abc...`` name
    the same execution; every other valid id is kept as it is.
    """
    if not ID_PATTERN.fullmatch(raw):
        return None
    return raw.lower() if UUID.fullmatch(raw) else raw


def trace_id_for(execution_id: str, traceparent: str | None = None) -> str:
    """Return the execution's trace id as 32 lower-case hex digits.

    The trace of a ``traceparent`` wins; else a UUID's own 128 bits; else the first
    16 bytes of the SHA-256 of the id, so the id alone finds the trace.
    """
    if traceparent:
        match = _TRACEPARENT.fullmatch(traceparent)
        if match and match.group(1) != "0" * 32:
            return match.group(1)
    if UUID.fullmatch(execution_id):
        return execution_id.replace("-", "").lower()
    return hashlib.sha256(execution_id.encode()).hexdigest()[:32]


def execution_span_id(execution_id: str) -> str:
    """Return the execution span's id: the first 8 bytes of SHA-256 of ``"span:" + id``."""
    return hashlib.sha256(f"span:{execution_id}".encode()).hexdigest()[:16]


def segment_span_id(execution_id: str, segment: int) -> str:
    """Return the span id of the execution span's ``segment`` (0, then one more per recovery).

    Segment 0 is the execution span the container can know in advance; later ones
    hash the segment number in, so each recovery gets a span of its own.
    """
    if segment == 0:
        return execution_span_id(execution_id)
    return hashlib.sha256(f"span:{execution_id}:{segment}".encode()).hexdigest()[:16]


def is_traceparent(value: str) -> bool:
    """Return True when ``value`` is a W3C ``traceparent`` with non-zero ids."""
    match = _TRACEPARENT.fullmatch(value)
    return match is not None and match.group(1) != "0" * 32 and match.group(2) != "0" * 16
