"""The execution state machine: every rule of an execution's life lives here.

Pure functions over plain records: no Flask, no store, no clock. A store reads the
current record, calls one of the ``apply_*`` functions and writes the returned
:class:`Outcome` with a compare-and-set on ``version``, so each transition and each
counter increment happens exactly once however many workers race.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import Any, Literal, NamedTuple, get_args

from .counters import COMPLETIONS, DURATION, DURATION_BUCKETS, HEARTBEATS, LOST, RECOVERIES
from .declarations import TaskDeclaration
from .events import Announcement, Completion, ContainerEvent, Heartbeat
from .ids import trace_id_for
from .inputs import OTHER_TASK

__all__ = [
    "DEFAULT_INTERVAL_SECONDS",
    "DEFAULT_LOST_AFTER_INTERVALS",
    "DEFAULT_RETENTION_SECONDS",
    "DEFAULT_STARTUP_GRACE_SECONDS",
    "FINAL_STATUSES",
    "OTHER_TASK",
    "RECORD_FIELDS",
    "STATUSES",
    "UNKNOWN_TASK",
    "Execution",
    "Increment",
    "Outcome",
    "Rules",
    "Stage",
    "StatusChange",
    "TaskLabel",
    "apply_announcement",
    "apply_completion",
    "apply_container_event",
    "apply_deadline",
    "apply_forget",
    "apply_heartbeat",
    "apply_rebase",
    "is_foreign",
    "progress_ratio",
    "tombstone",
]

#: An execution's status: what the state machine above moves it through.
Status = Literal["starting", "running", "completed", "failed", "lost"]
STATUSES: tuple[Status, ...] = get_args(Status)
#: What an event did (see :class:`Outcome`).
Result = Literal["accepted", "ignored", "duplicate", "unchanged", "conflict", "capacity", "missing", "live"]
FINAL_STATUSES = frozenset({"completed", "failed"})
SPAN_ENDING_STATUSES = FINAL_STATUSES | {"lost"}
UNKNOWN_TASK = "unknown"
_GAP_WINDOW = 8
_GAPS_TO_LEARN = 3
#: A longer gap between two heartbeats is a clock step or a suspended machine, not a cadence.
MAX_LEARNED_GAP = 86_400.0
#: Kept per span segment; past these, later stages or status events are not recorded.
MAX_STAGES = 64
MAX_EVENTS = 32
MAX_STAGE_NAME = 128

#: Maps a task name (or None) to the bounded value used in metric labels.
TaskLabel = Callable[["str | None"], str]


#: The state machine's defaults, the configuration's too (``BRIDGE_DEFAULT_INTERVAL_SECONDS``...).
DEFAULT_INTERVAL_SECONDS = 30.0
DEFAULT_LOST_AFTER_INTERVALS = 3.0
DEFAULT_STARTUP_GRACE_SECONDS = 120.0
DEFAULT_RETENTION_SECONDS = 3600.0


@dataclass(frozen=True)
class Rules:
    """The knobs of the state machine, from :class:`bridge.service.config.Settings`."""

    default_interval: float = DEFAULT_INTERVAL_SECONDS
    lost_after_intervals: float = DEFAULT_LOST_AFTER_INTERVALS
    startup_grace: float = DEFAULT_STARTUP_GRACE_SECONDS
    retention: float = DEFAULT_RETENTION_SECONDS
    #: A gap this long between reaper rounds means no worker ran: the bridge was down.
    outage_after: float = 16.0

    @property
    def outage_hold(self) -> float:
        """How long deadlines wait after the bridge's own outage: one full lost-window."""
        return self.lost_after_intervals * self.default_interval


class Stage(NamedTuple):
    """A stage the execution reported (``progress.stage``): from when, and until when."""

    name: str
    started_at: float
    ended_at: float | None  # None while it is the current stage


class StatusChange(NamedTuple):
    """A change of the execution's status or reported status: a span event."""

    at: float
    status: str
    reported_status: str | None


@dataclass
class Execution:
    """Everything known about one execution; times are the server's unix seconds."""

    execution_id: str
    status: Status
    trace_id: str
    metric_task_name: str
    started_at: float
    updated_at: float
    container_id: str | None = None
    container_name: str | None = None
    image: str | None = None
    oom_killed: bool = False
    task_name: str | None = None
    task_type: str | None = None
    reported_status: str | None = None
    status_reason: str | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    progress_ratio: float | None = None
    labels: dict[str, Any] = field(default_factory=dict)
    last_heartbeat_at: float | None = None
    client_timestamp: float | None = None
    ended_at: float | None = None
    deadline_at: float | None = None
    expires_at: float | None = None
    heartbeat_count: int = 0
    interval_seconds: float = 30.0
    interval_source: str = "default"
    gaps: list[Any] = field(default_factory=list)
    max_runtime_seconds: float | None = None
    success: bool | None = None
    error_message: str | None = None
    exit_code: int | None = None
    result_data: dict[str, Any] | None = None
    completion_received: bool = False
    end_cause: str | None = None  # completion, reported (final status at the deadline), container
    lost_count: int = 0
    recoveries: int = 0
    traceparent: str | None = None
    # The execution span, in segments: a loss ends one, the next event starts another.
    segment: int = 0
    segment_started_at: float | None = None
    stages: list[Stage] = field(default_factory=list)
    events: list[StatusChange] = field(default_factory=list)
    version: int = 0
    #: the protocol that created it when that names tasks, not executions (``hc``, ``sentry``):
    #: only that protocol's reports for the same task may act on it
    protocol: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the record as a JSON-ready dict (the query API's form)."""
        return {name: getattr(self, name) for name in RECORD_FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Execution:
        """Return the record stored as ``data``; keys this version does not know are dropped."""
        return cls(**{k: v for k, v in data.items() if k in _FIELD_NAMES})._typed()

    def to_values(self) -> tuple[Any, ...]:
        """Return the field values in :data:`RECORD_FIELDS` order (the stores' compact form)."""
        return _get_values(self)

    @classmethod
    def from_values(cls, values: list[Any]) -> Execution:
        """Return the record stored by :meth:`to_values`, by this version or any other.

        Fields are only ever appended, so a shorter list (an older version's) leaves the
        newer fields at their defaults and a longer one (a newer version's) is cut.
        """
        return cls(*values[: len(RECORD_FIELDS)])._typed()

    def _typed(self) -> Execution:
        """Return this record with the stages and status changes it was read with (JSON arrays)
        as the named tuples they are."""
        if self.stages:
            self.stages = [Stage(*stage) for stage in self.stages]
        if self.events:
            self.events = [StatusChange(*change) for change in self.events]
        return self

    def clone(self) -> Execution:
        """Return a shallow copy: the rules replace lists and dicts, never change them in place."""
        copy = object.__new__(Execution)
        copy.__dict__.update(self.__dict__)
        return copy


#: The stored order of the fields. Append only: records already stored depend on it.
RECORD_FIELDS = tuple(f.name for f in fields(Execution))
_FIELD_NAMES = frozenset(RECORD_FIELDS)
_get_values = attrgetter(*RECORD_FIELDS)


@dataclass(frozen=True)
class Increment:
    """Add ``amount`` to the counter ``name`` with label values ``labels``."""

    name: str
    labels: tuple[str, ...]
    amount: float = 1.0
    #: (trace id, observed value), kept as the counter's latest exemplar
    exemplar: tuple[str, float] | None = None


@dataclass(frozen=True)
class Outcome:
    """What one event does: the record to write (None: nothing), counters, a verdict.

    ``result`` is ``accepted``, ``ignored`` (heartbeat after the end), ``duplicate``
    (repeated completion), ``unchanged`` (nothing was due), ``conflict`` (the event may not
    act on this execution: another task's or another protocol's) or ``capacity`` (a new
    execution the store had no room for); :func:`apply_forget` answers ``missing`` or ``live``
    when there is nothing it may forget. ``transition`` is
    ``(old_status, new_status)`` when the status changed, old being None for a new one.
    """

    record: Execution | None
    increments: tuple[Increment, ...] = ()
    result: Result = "accepted"
    transition: tuple[Status | None, Status] | None = None
    #: the task's declaration the event carried (a first heartbeat's ``task_schedule``)
    declaration: TaskDeclaration | None = None

    @property
    def closes_span(self) -> bool:
        """True when this outcome ends a segment of the execution span (final or lost)."""
        return self.transition is not None and self.transition[1] in SPAN_ENDING_STATUSES


_UNCHANGED = Outcome(None, result="unchanged")


def tombstone(execution_id: str, status: Status) -> Execution:
    """Return the stand-in of an execution that ended with ``status`` and left retention.

    It is final, so a late repeat (a retried completion, a replayed container death, a
    heartbeat) is answered as a duplicate or ignored, and counts nothing again.
    """
    return Execution(execution_id, status, trace_id_for(execution_id), UNKNOWN_TASK, 0.0, 0.0)


def progress_ratio(progress: dict[str, Any] | None) -> float | None:
    """Return progress in 0..1 from ``percentage`` or ``current_step/total_steps``.

    Returns None when neither is usable; out-of-range values are clamped.
    """
    if not progress:
        return None
    pct = _finite(progress.get("percentage"))
    if pct is not None:
        return min(1.0, max(0.0, pct / 100.0))
    current, total = _finite(progress.get("current_step")), _finite(progress.get("total_steps"))
    if current is not None and total:
        return min(1.0, max(0.0, current / total))
    return None


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _new_record(
    execution_id: str,
    now: float,
    status: Status,
    task_name: str | None,
    task_label: TaskLabel,
    rules: Rules,
    traceparent: str | None = None,
) -> Execution:
    return Execution(
        execution_id=execution_id,
        status=status,
        trace_id=trace_id_for(execution_id, traceparent),
        metric_task_name=task_label(task_name),
        task_name=task_name,
        started_at=now,
        updated_at=now,
        interval_seconds=rules.default_interval,
        traceparent=traceparent,
        segment_started_at=now,
    )


def _copy(current: Execution, now: float) -> Execution:
    """Return a copy to change; after a loss, one whose span segment starts ``now``.

    The lost segment's span was built from ``current``; the next one starts afresh,
    with the stage that was open when the execution went silent.
    """
    record = current.clone()
    if current.status != "lost":
        return record
    stages = current.stages
    record.stages = [Stage(stages[-1].name, now, None)] if stages and stages[-1].ended_at is None else []
    record.segment = current.segment + 1
    record.segment_started_at = now
    record.events = []
    return record


def _note_status(record: Execution, now: float) -> None:
    """Record a span event when the status or the reported status changed."""
    last = record.events[-1] if record.events else None
    if last is not None and (last.status, last.reported_status) == (record.status, record.reported_status):
        return
    if len(record.events) < MAX_EVENTS:
        record.events = [*record.events, StatusChange(now, record.status, record.reported_status)]


def _note_stage(record: Execution, progress: dict[str, Any] | None, now: float) -> None:
    """Close the open stage and open the new one when ``progress.stage`` changed."""
    stage = progress.get("stage") if progress else None
    if not isinstance(stage, str) or not stage.strip():
        return
    stage = stage[:MAX_STAGE_NAME]
    last = record.stages[-1] if record.stages else None
    if last is not None and last.name == stage and last.ended_at is None:
        return
    if len(record.stages) >= MAX_STAGES:
        return
    stages = list(record.stages)  # copied: the current record shares the list
    if stages and stages[-1].ended_at is None:
        stages[-1] = stages[-1]._replace(ended_at=now)
    stages.append(Stage(stage, now, None))
    record.stages = stages


def _learn_interval(record: Execution, gap: float | None, rules: Rules, recovered: bool) -> None:
    """Update the expected interval from one more gap between heartbeats.

    Learning only ever lengthens the interval past the default: shorter gaps (a start-up
    burst, status-change heartbeats, a fast task) never shorten it, so an execution that
    later settles on a slower cadence is not lost for it. A task that wants to be found
    lost sooner sends ``interval_seconds``. Until a few gaps are known the longest one
    counts, then the median of the recent ones, which one extra or one late heartbeat
    does not move far. After a recovery the gaps start again from the one that caused
    the loss, so a task that slowed down past its lost-window is lost once, not before
    every heartbeat. Negative gaps (the clock went back) and gaps past a day (a clock
    step, a suspended machine) say nothing about the cadence and are ignored.
    """
    if gap is None or not 0 < gap <= MAX_LEARNED_GAP:
        return
    gaps = [round(gap, 3)] if recovered else (list(record.gaps) + [round(gap, 3)])[-_GAP_WINDOW:]
    record.gaps = gaps
    learned = statistics.median(gaps) if len(gaps) >= _GAPS_TO_LEARN else max(gaps)
    record.interval_seconds = max(rules.default_interval, learned)
    record.interval_source = "learned" if learned > rules.default_interval else "default"


def _end(
    record: Execution, status: Status, ended_at: float, now: float, rules: Rules, reason: str, cause: str
) -> tuple[Increment, ...]:
    """Make ``record`` final because of ``cause``; return the counters every ending increments."""
    record.status = status
    record.end_cause = cause
    record.success = status == "completed"
    record.ended_at = ended_at
    record.deadline_at = None
    record.expires_at = now + rules.retention
    record.status_reason = reason
    _note_status(record, now)
    outcome = "success" if record.success else "failure"
    return (
        Increment(COMPLETIONS, (record.metric_task_name, outcome)),
        *_observe_duration(record.metric_task_name, outcome, max(0.0, ended_at - record.started_at), record.trace_id),
    )


def _observe_duration(task: str, outcome: str, seconds: float, trace_id: str) -> tuple[Increment, ...]:
    bucket = next((f"{b:g}" for b in DURATION_BUCKETS if seconds <= b), "+Inf")
    return (
        Increment(DURATION + "_bucket", (task, outcome, bucket), 1.0, (trace_id, seconds)),
        Increment(DURATION + "_sum", (task, outcome), seconds),
        Increment(DURATION + "_count", (task, outcome)),
    )


def is_foreign(current: Execution | None, protocol: str | None, task_name: str | None) -> bool:
    """Return True when a report of ``protocol`` for task ``task_name`` may not act on ``current``.

    A protocol that names tasks (a ping's ``rid``, a check-in's ``check_in_id``) reaches only
    the executions it created for the same task: never a native one, another task's, or
    another protocol's. (A tombstone, version 0, remembers no more than its end: a repeat
    on it changes nothing either way.)
    """
    if protocol is None or current is None or current.version == 0:
        return False
    return current.protocol != protocol or current.task_name != task_name


_CONFLICT = Outcome(None, result="conflict")


def _take_declared(record: Execution, event: Heartbeat | Announcement) -> None:
    """Copy onto ``record`` the task type, labels and run budget ``event`` gives; a field it
    leaves out keeps its value, and a task type, once known, stays."""
    if record.task_type is None and event.task_type is not None:
        record.task_type = event.task_type
    if event.labels is not None:
        record.labels = event.labels
    if event.max_runtime_seconds is not None:
        record.max_runtime_seconds = event.max_runtime_seconds


def apply_heartbeat(
    current: Execution | None, hb: Heartbeat, now: float, rules: Rules, task_label: TaskLabel
) -> Outcome:
    """Return what heartbeat ``hb``, received at ``now``, does to ``current``.

    A new execution starts ``running``; ``starting`` and ``lost`` ones become
    ``running`` (from lost counting a recovery); a finished one ignores it. A report of a
    protocol that names tasks is a ``conflict`` on an execution it did not create.
    """
    if is_foreign(current, hb.protocol, hb.task_name):
        return _CONFLICT
    if current is not None and current.status in FINAL_STATUSES:
        return Outcome(None, result="ignored")
    increments: list[Increment] = []
    if current is None:
        record = _new_record(hb.execution_id, now, "running", hb.task_name, task_label, rules, hb.traceparent)
        record.protocol = hb.protocol
        transition: tuple[Status | None, Status] | None = (None, "running")
        gap = None
    else:
        record = _copy(current, now)
        transition = None if current.status == "running" else (current.status, "running")
        gap = (
            now - current.last_heartbeat_at
            if current.last_heartbeat_at is not None and current.status in ("running", "lost")
            else None
        )
        if current.status == "lost":
            record.recoveries += 1
            record.expires_at = None
            increments.append(Increment(RECOVERIES, (record.metric_task_name,)))
        _name_task(record, hb.task_name, task_label)
    record.status = "running"
    record.reported_status = hb.status
    record.status_reason = None if hb.status == "running" else f"reported {hb.status}; waiting for the completion"
    if hb.container_id is not None:
        record.container_id = hb.container_id
    if hb.progress is not None:
        record.progress = hb.progress
        record.progress_ratio = progress_ratio(hb.progress)
    _take_declared(record, hb)
    if hb.interval_seconds is not None:
        record.interval_seconds = hb.interval_seconds
        record.interval_source = "reported"
    elif record.interval_source != "reported":
        _learn_interval(record, gap, rules, recovered=current is not None and current.status == "lost")
    _note_stage(record, hb.progress, now)
    _note_status(record, now)
    record.client_timestamp = hb.timestamp
    record.last_heartbeat_at = now
    record.heartbeat_count += 1
    record.deadline_at = now + rules.lost_after_intervals * record.interval_seconds
    record.updated_at = now
    increments.insert(0, _heartbeat_counted(record.metric_task_name))
    first = current is None or current.heartbeat_count == 0
    return Outcome(record, tuple(increments), "accepted", transition, hb.task_schedule if first else None)


@functools.lru_cache(maxsize=4096)  # task names are capped; every heartbeat counts one
def _heartbeat_counted(task: str) -> Increment:
    """Return the increment of task ``task``'s heartbeats counter (a value: made once, shared)."""
    return Increment(HEARTBEATS, (task,))


def apply_completion(
    current: Execution | None, c: Completion, now: float, rules: Rules, task_label: TaskLabel
) -> Outcome:
    """Return what completion ``c`` does: the first one ends the execution, repeats are
    duplicates; a ``conflict`` as for :func:`apply_heartbeat`."""
    if is_foreign(current, c.protocol, c.task_name):
        return _CONFLICT
    if current is not None and current.status in FINAL_STATUSES:
        return Outcome(None, result="duplicate")
    if current is None:
        record = _new_record(c.execution_id, now, "running", c.task_name, task_label, rules)
        record.protocol = c.protocol
    else:
        record = _copy(current, now)
        _name_task(record, c.task_name, task_label)
    old_status = current.status if current is not None else None
    if c.container_id is not None:
        record.container_id = c.container_id
    status: Status = "completed" if c.success else "failed"
    increments = _end(record, status, now, now, rules, "completion received", "completion")
    record.error_message = c.error_message
    record.exit_code = c.exit_code
    record.result_data = c.result_data
    record.completion_received = True
    record.updated_at = now
    return Outcome(record, increments, "accepted", (old_status, status))


def apply_deadline(current: Execution, now: float, rules: Rules) -> Outcome:
    """Return what passing its deadline does to ``current`` (unchanged when not due).

    A running execution becomes ``lost``, unless its last heartbeat reported
    ``completed``/``failed``: then it ends with that status at that heartbeat. A
    ``starting`` one that never reported becomes ``lost`` as well.
    """
    if current.deadline_at is None or current.deadline_at > now:
        return _UNCHANGED
    if current.status not in ("running", "starting"):
        return _UNCHANGED
    record = _copy(current, now)
    record.updated_at = now
    if current.status == "running" and current.reported_status in FINAL_STATUSES:
        ended_at = current.last_heartbeat_at if current.last_heartbeat_at is not None else now
        reported: Status = "completed" if current.reported_status == "completed" else "failed"
        increments = _end(
            record,
            reported,
            ended_at,
            now,
            rules,
            f"reported {current.reported_status}; no completion received",
            "reported",
        )
        return Outcome(record, increments, "accepted", (current.status, record.status))
    if current.status == "starting":
        reason = "container started; no heartbeat within the startup grace"
    else:
        silent = now - (current.last_heartbeat_at or current.started_at)
        reason = (
            f"no heartbeat for {silent:.0f}s "
            f"({rules.lost_after_intervals:g} intervals of {current.interval_seconds:g}s)"
        )
    record.status = "lost"
    record.status_reason = reason
    record.lost_count += 1
    record.deadline_at = None
    record.expires_at = now + rules.retention
    _note_status(record, now)
    return Outcome(record, (Increment(LOST, (record.metric_task_name,)),), "accepted", (current.status, "lost"))


def apply_forget(current: Execution | None, now: float) -> Outcome:
    """Return what forgetting ``current`` does: an ended or lost execution leaves retention at
    ``now``, as if its time were up, and no counter moves.

    The result is ``missing`` for an execution not tracked (none, or only a tombstone), and
    ``live`` for one running or starting: that one must end or go lost first, or its task
    would count a run that never ended.
    """
    if current is None or current.version == 0:  # a tombstone is a stand-in, never stored
        return Outcome(None, result="missing")
    if current.status in ("running", "starting"):
        return Outcome(None, result="live")
    record = current.clone()
    record.expires_at = now
    record.updated_at = now
    return Outcome(record)


def apply_rebase(current: Execution, now: float, rules: Rules) -> Outcome:
    """Return ``current`` with its deadline one full window from ``now`` (unchanged without one).

    After the wall clock stepped, or the bridge was down, the stored deadlines were set on
    another time line: a step back would delay every loss by the step, a step forward (or
    an outage) would make executions lost that kept reporting. A live execution is then
    given its own window again, as if it had just been heard from: a loss is found at
    most one window late, never falsely. No counter moves and the status stays.
    """
    if current.deadline_at is None or current.status not in ("running", "starting"):
        return _UNCHANGED
    window = (
        rules.startup_grace if current.status == "starting" else rules.lost_after_intervals * current.interval_seconds
    )
    if current.deadline_at == now + window:
        return _UNCHANGED
    record = current.clone()
    record.deadline_at = now + window
    return Outcome(record)


def _name_task(record: Execution, task_name: str | None, task_label: TaskLabel) -> None:
    """Give ``record`` its task when it has none yet: the first name heard of it stays."""
    if record.task_name is None and task_name is not None:
        record.task_name = task_name
        record.metric_task_name = task_label(task_name)


def _enrich(record: Execution, event: ContainerEvent) -> None:
    if event.container_id is not None:
        record.container_id = event.container_id
    if event.container_name is not None:
        record.container_name = event.container_name
    if event.image is not None:
        record.image = event.image
    if event.oom_killed or event.event == "oom":
        record.oom_killed = True
    if record.task_type is None and event.task_type is not None:
        record.task_type = event.task_type


def apply_container_event(
    current: Execution | None, event: ContainerEvent, now: float, rules: Rules, task_label: TaskLabel
) -> Outcome:
    """Return what a container event does to ``current``.

    ``start`` makes an unknown execution ``starting`` (it must heartbeat within the
    startup grace) and enriches a known one; ``oom`` marks it; ``die`` without a
    completion ends it: ``failed`` with the exit code or the OOM kill as the reason, or
    ``completed`` when it exited 0 after reporting ``completed``. Repeats after the end
    are duplicates.
    """
    if current is not None and current.status in FINAL_STATUSES:
        return Outcome(None, result="duplicate")
    if current is None:
        record = _new_record(event.execution_id, now, "starting", event.task_name, task_label, rules)
        record.deadline_at = now + rules.startup_grace
        transition: tuple[Status | None, Status] | None = (None, "starting")
    else:
        record = _copy(current, now)
        transition = None
        _name_task(record, event.task_name, task_label)
    _enrich(record, event)
    record.updated_at = now
    if event.event != "die":
        if transition is not None:
            _note_status(record, now)
        return Outcome(record, (), "accepted", transition)
    old_status = current.status if current is not None else None
    record.exit_code = event.exit_code
    status: Status
    message: str | None
    if record.oom_killed:
        status, message = "failed", "killed: out of memory"
    elif event.exit_code == 0 and record.reported_status == "completed":
        status, message = "completed", None
    elif event.exit_code is None:
        status, message = "failed", "container died; exit code unknown"
    else:
        status, message = "failed", f"exited with code {event.exit_code}"
    record.error_message = message
    increments = _end(record, status, now, now, rules, "container died without a completion", "container")
    return Outcome(record, increments, "accepted", (old_status, status))


def apply_announcement(
    current: Execution | None, announcement: Announcement, now: float, rules: Rules, task_label: TaskLabel
) -> Outcome:
    """Return what a launcher's announcement does: an unknown execution is ``starting`` as a
    run of its task (it must report within the startup grace); a known one takes the task,
    labels, interval and runtime budget it lacked; one that ended answers a duplicate."""
    if current is not None and current.status in FINAL_STATUSES:
        return Outcome(None, result="duplicate")
    if current is None:
        record = _new_record(announcement.execution_id, now, "starting", announcement.task_name, task_label, rules)
        record.deadline_at = now + rules.startup_grace
        record.status_reason = "announced; waiting for its first heartbeat"
        transition: tuple[Status | None, Status] | None = (None, "starting")
    else:
        record = _copy(current, now)
        transition = None
        _name_task(record, announcement.task_name, task_label)
    _take_declared(record, announcement)
    if announcement.interval_seconds is not None and record.interval_source != "reported":
        record.interval_seconds = announcement.interval_seconds
        record.interval_source = "reported"
    record.updated_at = now
    if transition is not None:
        _note_status(record, now)
    return Outcome(record, (), "accepted", transition)
