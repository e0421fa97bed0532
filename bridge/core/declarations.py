"""Task declarations: what a task's owner says of it (a schedule or a period, a grace, a
failure threshold, labels), checked strictly, and when its next run is expected.

Pure, and shared by the three places declarations come from: the tasks file, the API and
the first heartbeat of an execution.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

__all__ = ["DeclarationError", "TaskDeclaration", "next_slot", "parse_declaration"]

DEFAULT_START_GRACE_SECONDS = 300.0
DEFAULT_FAILURE_THRESHOLD = 1
MAX_PERIOD_SECONDS = 366 * 86_400.0
MAX_GRACE_SECONDS = 30 * 86_400.0
MAX_RUNTIME_SECONDS = 366 * 86_400.0
MAX_FAILURE_THRESHOLD = 1000
MAX_LABELS = 16
MAX_LABEL_VALUE = 256
MAX_TEXT = 1024
_LABEL_KEY = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]{0,62}")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class DeclarationError(ValueError):
    """A task declaration that cannot be used; ``field`` names the field at fault."""

    def __init__(self, message: str, field: str, task: str | None = None):
        super().__init__(f"task {task!r}: {field}: {message}" if task else f"{field}: {message}")
        self.message = message
        self.field = field
        self.task = task


@dataclass(frozen=True)
class TaskDeclaration:
    """What a declaration says of a task; every field is optional."""

    schedule: str | None = None
    timezone: str = "UTC"
    period_seconds: float | None = None
    start_grace_seconds: float = DEFAULT_START_GRACE_SECONDS
    max_runtime_seconds: float | None = None
    failure_threshold: int = DEFAULT_FAILURE_THRESHOLD
    labels: dict[str, str] = field(default_factory=dict)
    description: str | None = None
    runbook_url: str | None = None
    ping_uuid: str | None = None

    @property
    def scheduled(self) -> bool:
        """True when runs are expected: a schedule or a period is declared."""
        return self.schedule is not None or self.period_seconds is not None

    @property
    def schedule_text(self) -> str:
        """Return the schedule in one line: ``0 2 * * * Europe/Berlin``, ``every 3600s``, or ''."""
        if self.schedule is not None:
            return f"{self.schedule} {self.timezone}"
        return f"every {self.period_seconds:g}s" if self.period_seconds is not None else ""

    def to_dict(self) -> dict[str, Any]:
        """Return the declaration as JSON-ready data (also its stored form)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskDeclaration:
        """Return a declaration stored by :meth:`to_dict`; unknown keys are dropped."""
        return cls(**{k: v for k, v in data.items() if k in _DECLARATION_FIELDS})


_DECLARATION_FIELDS = frozenset(f.name for f in fields(TaskDeclaration))


def _text(body: Mapping[str, Any], name: str, task: str | None, limit: int = MAX_TEXT) -> str | None:
    raw = body.get(name)
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw.strip() or _CONTROL.search(raw):
        raise DeclarationError("must be non-blank text without control characters", name, task)
    if len(raw) > limit:
        raise DeclarationError(f"must be at most {limit} characters", name, task)
    return raw


def _number(body: Mapping[str, Any], name: str, task: str | None, low: float, high: float) -> float | None:
    raw = body.get(name)
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
        raise DeclarationError("must be a number", name, task)
    if not low <= raw <= high:
        raise DeclarationError(f"must be between {low:g} and {high:g}", name, task)
    return float(raw)


def parse_declaration(body: Any, task: str | None = None) -> TaskDeclaration:
    """Return the declaration in ``body`` (a mapping of the fields), checked strictly.

    ``task`` names the task in error messages. Raises :class:`DeclarationError` naming the
    field: an unknown field, a wrong type or range, a cron expression cronsim refuses, an
    unknown time zone, or both a schedule and a period.
    """
    if not isinstance(body, Mapping):
        raise DeclarationError("must be an object of the declaration's fields", "declaration", task)
    unknown = sorted(set(body) - _DECLARATION_FIELDS - {"name", "task_name"})
    if unknown:
        known = ", ".join(sorted(_DECLARATION_FIELDS))
        raise DeclarationError(f"is not a field of a task declaration (known: {known})", str(unknown[0]), task)
    schedule = _text(body, "schedule", task, 256)
    zone = _text(body, "timezone", task, 64) or "UTC"
    try:
        tz = ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise DeclarationError(f"{zone!r} is not an IANA time zone name", "timezone", task) from None
    if schedule is not None:
        if len(schedule.split()) != 5:
            raise DeclarationError("must be a cron expression of 5 fields", "schedule", task)
        try:
            next(CronSim(schedule, datetime.now(tz)))
        except (CronSimError, StopIteration) as exc:
            raise DeclarationError(f"is not a valid cron expression: {exc}", "schedule", task) from None
    period = _number(body, "period_seconds", task, 1, MAX_PERIOD_SECONDS)
    if schedule is not None and period is not None:
        raise DeclarationError("give a schedule or a period_seconds, not both", "period_seconds", task)
    grace = _number(body, "start_grace_seconds", task, 0, MAX_GRACE_SECONDS)
    threshold = body.get("failure_threshold")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, int)
                                  or not 1 <= threshold <= MAX_FAILURE_THRESHOLD):
        raise DeclarationError(f"must be an integer from 1 to {MAX_FAILURE_THRESHOLD}", "failure_threshold", task)
    labels = body.get("labels")
    labels = {} if labels is None else labels
    if not isinstance(labels, Mapping) or len(labels) > MAX_LABELS:
        raise DeclarationError(f"must be an object of at most {MAX_LABELS} strings", "labels", task)
    for key, value in labels.items():
        if not isinstance(key, str) or not _LABEL_KEY.fullmatch(key):
            raise DeclarationError(f"label name {str(key)[:64]!r} must match [a-zA-Z_][a-zA-Z0-9_]*", "labels", task)
        if not isinstance(value, str) or _CONTROL.search(value) or len(value) > MAX_LABEL_VALUE:
            raise DeclarationError(f"label {key} must be text of at most {MAX_LABEL_VALUE} characters", "labels",
                                   task)
    ping_uuid = _text(body, "ping_uuid", task, 36)
    if ping_uuid is not None and not _UUID.fullmatch(ping_uuid):
        raise DeclarationError("must be a UUID", "ping_uuid", task)
    return TaskDeclaration(
        schedule=" ".join(schedule.split()) if schedule is not None else None,
        timezone=zone,
        period_seconds=period,
        start_grace_seconds=grace if grace is not None else DEFAULT_START_GRACE_SECONDS,
        max_runtime_seconds=_number(body, "max_runtime_seconds", task, 1, MAX_RUNTIME_SECONDS),
        failure_threshold=threshold if threshold is not None else DEFAULT_FAILURE_THRESHOLD,
        labels=dict(sorted(labels.items())),
        description=_text(body, "description", task),
        runbook_url=_text(body, "runbook_url", task),
        ping_uuid=ping_uuid.lower() if ping_uuid else None,
    )


def next_slot(declaration: TaskDeclaration, after: float) -> float:
    """Return the first expected start strictly after ``after`` (unix seconds).

    A cron schedule is evaluated in its time zone as Debian's cron does across DST changes
    (through cronsim): a time skipped by a change runs at the change, a repeated hour's
    times run once (a job that runs every hour runs in both). A period counts from ``after``.
    """
    if declaration.period_seconds is not None:
        return after + declaration.period_seconds
    assert declaration.schedule is not None
    start = datetime.fromtimestamp(after, ZoneInfo(declaration.timezone))
    return next(CronSim(declaration.schedule, start)).timestamp()
