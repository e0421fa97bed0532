"""Task declarations: what a task's owner says of it (a schedule or a period, a grace, a
failure threshold, labels), checked strictly, and when its next run is expected.

Pure, and shared by the three places declarations come from: the tasks file, the API and
the first heartbeat of an execution.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from . import inputs
from .errors import InvalidInput

__all__ = ["DeclarationError", "TaskDeclaration", "next_slot", "parse_declaration"]

DEFAULT_START_GRACE_SECONDS = 300.0
DEFAULT_FAILURE_THRESHOLD = 1
DEFAULT_RECOVERY_THRESHOLD = 1
#: How early a scheduled run may start and still be the expected one (clock skew, jitter).
DEFAULT_EARLY_GRACE_SECONDS = 60.0
MAX_CONCURRENCY = 100_000
MAX_UPSTREAMS = 16
MAX_PERIOD_SECONDS = 366 * 86_400.0
MAX_GRACE_SECONDS = 30 * 86_400.0
MAX_RUNTIME_SECONDS = 366 * 86_400.0
MAX_FAILURE_THRESHOLD = 1000


class DeclarationError(InvalidInput):
    """A task declaration that cannot be used: ``field`` names the field at fault, ``task``
    the task (when known), ``problem`` what is wrong with the field."""

    def __init__(self, problem: str, field: str, task: str | None = None):
        super().__init__(f"{field} {problem}" if not problem.startswith(field) else problem, field)
        self.problem = problem.removeprefix(field).lstrip(" :")
        self.task = task

    def __str__(self) -> str:
        return (f"task {self.task!r}: " if self.task else "") + f"{self.field}: {self.problem}"


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
    #: the Healthchecks ping key whose slug URLs reach this task
    ping_key: str | None = None
    #: a successful run shorter than this is too short (it did nothing)
    min_runtime_seconds: float | None = None
    #: a scheduled run that starts earlier than this before its expected start is unexpected
    early_grace_seconds: float = DEFAULT_EARLY_GRACE_SECONDS
    #: more runs in progress at once than this overlap
    max_concurrency: int | None = None
    #: successes in a row that clear ``failing``
    recovery_threshold: int = DEFAULT_RECOVERY_THRESHOLD
    #: the tasks this one needs: while one is failing or missed, this one's alerts hold back
    depends_on: tuple[str, ...] = ()

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
        data = asdict(self)
        data["depends_on"] = list(self.depends_on)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskDeclaration:
        """Return a declaration stored by :meth:`to_dict`; unknown keys are dropped."""
        fields_ = {k: v for k, v in data.items() if k in _DECLARATION_FIELDS}
        if "depends_on" in fields_:
            fields_["depends_on"] = tuple(fields_["depends_on"] or ())
        return cls(**fields_)


_DECLARATION_FIELDS = frozenset(f.name for f in fields(TaskDeclaration))


def parse_declaration(body: Any, task: str | None = None, prefix: str = "") -> TaskDeclaration:
    """Return the declaration in ``body`` (a mapping of the fields), checked by the input
    rules of :mod:`bridge.core.inputs`.

    ``task`` names the task in error messages, ``prefix`` goes before each field's name
    (``task_schedule.``). Raises :class:`DeclarationError` naming the field: an unknown
    field, a wrong type or range, a link that is not http(s), a cron expression cronsim
    refuses, an unknown time zone, or both a schedule and a period.
    """
    try:
        return _parse(body, prefix, task)
    except DeclarationError as exc:
        exc.task = task
        raise
    except InvalidInput as exc:
        raise DeclarationError(exc.message, exc.field or prefix.rstrip(".") or "declaration", task) from None


def _upstreams(value: Any, field: str, task: str | None) -> tuple[str, ...]:
    """Return the task names a declaration depends on: a list of task names, none of them its own."""
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_UPSTREAMS:
        raise DeclarationError(f"must be a list of at most {MAX_UPSTREAMS} task names", field)
    names = tuple(dict.fromkeys(inputs.task_name(name, field, required=True) or "" for name in value))
    if task is not None and task in names:
        raise DeclarationError("must not name the task itself", field)
    return names


def _parse(body: Any, prefix: str, task: str | None = None) -> TaskDeclaration:
    where = prefix.rstrip(".") or "declaration"
    if not isinstance(body, Mapping):
        raise DeclarationError("must be an object of the declaration's fields", where)
    unknown = sorted(str(key) for key in set(body) - _DECLARATION_FIELDS - {"name", "task_name"})
    if unknown:
        known = ", ".join(sorted(_DECLARATION_FIELDS))
        raise DeclarationError(f"is not a field of a task declaration (known: {known})", prefix + unknown[0])
    schedule = inputs.text(body.get("schedule"), prefix + "schedule", 256)
    zone = inputs.text(body.get("timezone"), prefix + "timezone", 64) or "UTC"
    try:
        tz = ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise DeclarationError(f"{zone!r} is not an IANA time zone name", prefix + "timezone") from None
    if schedule is not None:
        if len(schedule.split()) != 5:
            raise DeclarationError("must be a cron expression of 5 fields", prefix + "schedule")
        try:
            next(CronSim(schedule, datetime.now(tz)))
        except (CronSimError, StopIteration) as exc:
            raise DeclarationError(f"is not a valid cron expression: {exc}", prefix + "schedule") from None
    period = inputs.number(body.get("period_seconds"), prefix + "period_seconds", 1, MAX_PERIOD_SECONDS)
    if schedule is not None and period is not None:
        raise DeclarationError("give a schedule or a period_seconds, not both", prefix + "period_seconds")
    grace = inputs.number(body.get("start_grace_seconds"), prefix + "start_grace_seconds", 0, MAX_GRACE_SECONDS)
    threshold = inputs.integer(body.get("failure_threshold"), prefix + "failure_threshold", 1, MAX_FAILURE_THRESHOLD)
    labels = inputs.labels(body.get("labels"), prefix + "labels")
    return TaskDeclaration(
        schedule=" ".join(schedule.split()) if schedule is not None else None,
        timezone=zone,
        period_seconds=period,
        start_grace_seconds=grace if grace is not None else DEFAULT_START_GRACE_SECONDS,
        max_runtime_seconds=inputs.number(
            body.get("max_runtime_seconds"), prefix + "max_runtime_seconds", 1, MAX_RUNTIME_SECONDS
        ),
        failure_threshold=threshold if threshold is not None else DEFAULT_FAILURE_THRESHOLD,
        labels=labels or {},
        description=inputs.text(body.get("description"), prefix + "description", inputs.MAX_DESCRIPTION),
        runbook_url=inputs.url(body.get("runbook_url"), prefix + "runbook_url"),
        ping_uuid=inputs.uuid(body.get("ping_uuid"), prefix + "ping_uuid"),
        ping_key=inputs.ping_key(body.get("ping_key"), prefix + "ping_key"),
        min_runtime_seconds=inputs.number(
            body.get("min_runtime_seconds"), prefix + "min_runtime_seconds", 0, MAX_RUNTIME_SECONDS
        ),
        early_grace_seconds=_or(
            inputs.number(body.get("early_grace_seconds"), prefix + "early_grace_seconds", 0, MAX_GRACE_SECONDS),
            DEFAULT_EARLY_GRACE_SECONDS,
        ),
        max_concurrency=inputs.integer(body.get("max_concurrency"), prefix + "max_concurrency", 1, MAX_CONCURRENCY),
        recovery_threshold=_or(
            inputs.integer(body.get("recovery_threshold"), prefix + "recovery_threshold", 1, MAX_FAILURE_THRESHOLD),
            DEFAULT_RECOVERY_THRESHOLD,
        ),
        depends_on=_upstreams(body.get("depends_on"), prefix + "depends_on", task),
    )


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


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
