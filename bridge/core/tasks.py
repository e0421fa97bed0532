"""The task model and its rules: what executions are runs of, when the next run is due,
and what the task's status is.

A task is named by its ``task_name``. The bridge knows it from the executions that name it,
and more once it is declared (:mod:`bridge.core.declarations`). Like the execution rules,
everything here is pure: the caller passes the current record and the time, and a store
commits the returned :class:`TaskOutcome` with a compare-and-set, so each start, end and
missed slot counts once however many workers and replicas race.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import Any, NamedTuple

from .counters import TASK_RUNS_MISSED, TASK_RUNS_TOO_SHORT, TASK_RUNS_UNEXPECTED
from .declarations import DEFAULT_FAILURE_THRESHOLD, DEFAULT_RECOVERY_THRESHOLD, TaskDeclaration, next_slot
from .executions import Execution, Increment

__all__ = [
    "DECLARATION_SOURCES",
    "TASK_RECORD_FIELDS",
    "TASK_STATUSES",
    "UNHEALTHY_STATUSES",
    "RecentRun",
    "Task",
    "TaskOutcome",
    "apply_claim",
    "apply_declaration",
    "apply_pause",
    "apply_resume",
    "apply_run_change",
    "apply_task_deadline",
    "apply_task_rebase",
    "effective_declaration",
    "is_declared",
    "is_failing",
    "is_paused",
    "ping_key_reaches",
    "ping_uuid_of",
    "status_at",
]

#: A task's health, never its activity: how many of its runs are in progress is apart.
TASK_STATUSES = ("new", "up", "late", "missed", "failing", "paused")
#: The statuses of an upstream that hold its dependents' alerts back.
UNHEALTHY_STATUSES = ("failing", "missed")
#: Where declarations come from, the first winning over the others.
DECLARATION_SOURCES = ("file", "api", "inband")
#: The executions a task keeps the ids of, newest last.
RECENT_RUNS = 20
#: Missed slots counted by one application of a deadline; the next reaper round goes on.
MAX_SLOTS_PER_ROUND = 1000
_LIVE = ("starting", "running")
#: Fields whose change moves the expected runs.
_SCHEDULING = ("schedule", "timezone", "period_seconds", "start_grace_seconds")


class RecentRun(NamedTuple):
    """One of a task's latest runs, as its page and its API list them."""

    execution_id: str
    status: str
    started_at: float
    ended_at: float | None  # None while it runs


@dataclass
class Task:
    """Everything known about one task; times are the bridge's unix seconds."""

    task_name: str
    task_type: str | None = None
    #: source ("file", "api", "inband") -> the declaration's fields
    declarations: dict[str, Any] = field(default_factory=dict)
    #: when the current schedule was declared
    declared_at: float | None = None
    last_start_at: float | None = None
    last_success_at: float | None = None
    last_failure_at: float | None = None
    last_end_at: float | None = None
    #: the expected start being waited for; its deadline adds the grace (the store indexes it)
    next_run_at: float | None = None
    deadline_at: float | None = None
    #: a slot passed its deadline with no run started, and none has started since
    missed: bool = False
    missed_runs: int = 0
    consecutive_failures: int = 0
    runs: int = 0
    #: how many of its executions run now (overlapping runs are separate executions)
    running: int = 0
    #: the ids of the newest of those, at most RECENT_RUNS (a task may fan out to thousands)
    running_ids: list[Any] = field(default_factory=list)
    #: [execution id, status, started at, ended at or None], newest last
    recent: list[RecentRun] = field(default_factory=list)
    version: int = 0
    #: the Healthchecks ping key whose ``?create=1`` ping created the task: its slug URLs reach it
    created_by_ping_key: str | None = None
    #: the Sentry project whose check-in created the task: its monitor stays that project's
    sentry_project: str | None = None
    #: its last failure_threshold runs failed, and fewer than recovery_threshold succeeded since
    failing: bool = False
    consecutive_successes: int = 0
    #: an operator paused it: nothing is expected or alerts until it resumes (at paused_until,
    #: or by hand or by its next run when None)
    paused: bool = False
    paused_until: float | None = None
    #: why its last run ended as it did, when it is worth a line on its page
    last_run_note: str | None = None

    def to_values(self) -> tuple[Any, ...]:
        """Return the field values in :data:`TASK_RECORD_FIELDS` order (the stores' compact form)."""
        return _task_values(self)

    @classmethod
    def from_values(cls, values: list[Any]) -> Task:
        """Return the record :meth:`to_values` stored, by this version or a later one."""
        task = cls(*values[: len(TASK_RECORD_FIELDS)])
        if task.recent:  # read as JSON arrays
            task.recent = [RecentRun(*run) for run in task.recent]
        return task

    def clone(self) -> Task:
        """Return a shallow copy: the rules replace lists and dicts, never change them in place."""
        copy = object.__new__(Task)
        copy.__dict__.update(self.__dict__)
        return copy


#: The stored order of the fields. Append only: records already stored depend on it.
TASK_RECORD_FIELDS = tuple(f.name for f in fields(Task))
_task_values = attrgetter(*TASK_RECORD_FIELDS)


@dataclass(frozen=True)
class TaskOutcome:
    """What one event does to a task: the record to write (None: nothing) and its counters."""

    record: Task | None
    increments: tuple[Increment, ...] = ()
    #: ``accepted``, or ``capacity`` for a new task the store had no room for
    result: str = "accepted"


_UNCHANGED = TaskOutcome(None)


def effective_declaration(task: Task) -> tuple[TaskDeclaration | None, str | None]:
    """Return the declaration that applies to ``task`` and its source: the file's over the
    API's over the one a heartbeat carried; (None, None) for an undeclared task."""
    for source in DECLARATION_SOURCES:
        data = task.declarations.get(source)
        if data is not None:
            return TaskDeclaration.from_dict(data), source
    return None, None


def ping_uuid_of(task: Task) -> str | None:
    """Return the Healthchecks check uuid whose pings are ``task``'s runs, if declared."""
    declaration, _ = effective_declaration(task)
    return declaration.ping_uuid if declaration is not None else None


def ping_key_reaches(task: Task, key: str) -> bool:
    """Return True when ping key ``key`` may report for ``task``: the task was created under
    that key (``?create=1``), or declared with it (``ping_key``)."""
    declaration, _ = effective_declaration(task)
    return key in (task.created_by_ping_key, declaration.ping_key if declaration is not None else None)


def apply_claim(
    current: Task | None, name: str, ping_key: str | None = None, sentry_project: str | None = None
) -> TaskOutcome:
    """Return what a protocol that names tasks does when it first reports for ``name``: a new
    task remembers the ping key or Sentry project that created it, so that it stays theirs;
    a known one is left as it is (the caller checked it may report for it)."""
    if current is not None:
        return _UNCHANGED
    return TaskOutcome(Task(task_name=name, created_by_ping_key=ping_key, sentry_project=sentry_project))


def is_declared(task: Task) -> bool:
    """Return True when the tasks file or the API declares ``task``: its name is then kept,
    whatever runs it had (a heartbeat's declaration keeps nothing: its executions do)."""
    return any(task.declarations.get(source) is not None for source in ("file", "api"))


def is_paused(task: Task, now: float) -> bool:
    """Return True while an operator's pause of ``task`` lasts at ``now``."""
    return task.paused and (task.paused_until is None or now < task.paused_until)


def is_failing(task: Task) -> bool:
    """Return True when the task's last ``failure_threshold`` runs failed (a lost one counts),
    until ``recovery_threshold`` successes in a row clear it."""
    declaration, _ = effective_declaration(task)
    threshold = declaration.failure_threshold if declaration else DEFAULT_FAILURE_THRESHOLD
    return task.failing or task.consecutive_failures >= threshold


def status_at(task: Task, now: float) -> str:
    """Return the task's health at ``now``, never its activity (a run in progress hides nothing).

    ``paused`` while an operator's pause lasts; ``failing`` (see :func:`is_failing`); for a
    scheduled task ``missed`` once an expected start passed its grace with no run (until a
    run starts), ``late`` between the expected start and its deadline; ``up`` once a run
    ended (the last one succeeded, or failed below the threshold) with nothing overdue;
    ``new`` before any run ended, while nothing is due.
    """
    if is_paused(task, now):
        return "paused"
    if is_failing(task):
        return "failing"
    declaration, _ = effective_declaration(task)
    if declaration is not None and declaration.scheduled:
        if task.missed:
            return "missed"
        if task.next_run_at is not None and now >= task.next_run_at:
            return "late"
    return "up" if task.last_end_at is not None else "new"


def _reschedule(task: Task, declaration: TaskDeclaration | None, now: float) -> None:
    """Set the next expected start after the schedule changed (or a pause ended) at ``now``."""
    task.declared_at = now
    task.missed = False
    if declaration is None or not declaration.scheduled:
        task.next_run_at = None
        task.deadline_at = task.paused_until if task.paused else None
        return
    if declaration.period_seconds is not None:
        # Counted from the last start, but never from before the declaration: a task
        # declared long after its last run is not late at once, nor missed many times over.
        task.next_run_at = max(now, task.last_start_at or now) + declaration.period_seconds
    else:
        task.next_run_at = next_slot(declaration, now)
    # While paused the reaper comes back at the pause's end (none for an open-ended one).
    task.deadline_at = task.paused_until if task.paused else task.next_run_at + declaration.start_grace_seconds


def apply_declaration(
    current: Task | None, name: str, source: str, declaration: TaskDeclaration | None, now: float
) -> TaskOutcome:
    """Return what declaring ``name`` from ``source`` (or, with None, withdrawing that
    source's declaration) does. A change to the schedule, time zone, period or grace
    restarts the expected runs from ``now``; nothing changes when nothing differs."""
    if current is None and declaration is None:
        return _UNCHANGED
    task = current.clone() if current is not None else Task(task_name=name)
    before, _ = effective_declaration(task)
    declarations = dict(task.declarations)
    if declaration is None:
        declarations.pop(source, None)
    else:
        declarations[source] = declaration.to_dict()
    if current is not None and declarations == current.declarations:
        return _UNCHANGED
    task.declarations = declarations
    after, _ = effective_declaration(task)
    if _scheduling(before) != _scheduling(after):
        _reschedule(task, after, now)
    return TaskOutcome(task)


def _scheduling(declaration: TaskDeclaration | None) -> tuple[Any, ...] | None:
    return None if declaration is None else tuple(getattr(declaration, name) for name in _SCHEDULING)


def _record_start(task: Task, declaration: TaskDeclaration | None, started_at: float) -> bool:
    """Note a run started at ``started_at``: it satisfies the expected start it is near.

    Returns True when it is unexpected: a scheduled task's run that starts more than
    ``early_grace_seconds`` (at most half the gap to the slot after) before its expected
    start, a double start or a wrong schedule. It does not count for the expected start.
    (A periodic task's first run is never unexpected: its period counts from a run.) A run
    that starts during an open-ended pause ends the pause, as a ping resumes a paused
    Healthchecks check; during a pause with an end it is recorded and changes no schedule.
    """
    previous_start = task.last_start_at
    task.last_start_at = max(task.last_start_at or started_at, started_at)
    task.missed = False
    task.runs += 1
    if task.paused and task.paused_until is None:
        task.paused = False
        _reschedule(task, declaration, started_at)
        return False  # the run that ends a pause is the one expected: the schedule counts from it
    if task.paused or declaration is None or not declaration.scheduled or task.next_run_at is None:
        return False
    if declaration.period_seconds is not None:
        if previous_start is not None and started_at < task.next_run_at - declaration.early_grace_seconds:
            return True
        task.next_run_at = started_at + declaration.period_seconds
    else:
        # A start a little early (clock skew, a scheduler's jitter) still counts for the
        # coming slot: up to the early grace, and at most half the gap to the slot after it.
        gap = next_slot(declaration, task.next_run_at) - task.next_run_at
        if started_at < task.next_run_at - min(declaration.early_grace_seconds, gap / 2):
            return True
        task.next_run_at = next_slot(declaration, max(started_at, task.next_run_at))
    task.deadline_at = task.next_run_at + declaration.start_grace_seconds
    return False


def _note_recent(task: Task, execution: Execution) -> None:
    ended = (
        execution.ended_at
        if execution.status in ("completed", "failed")
        else (execution.updated_at if execution.status == "lost" else None)
    )
    entry = RecentRun(execution.execution_id, execution.status, execution.started_at, ended)
    recent = [run for run in task.recent if run.execution_id != execution.execution_id]
    task.recent = (recent + [entry])[-RECENT_RUNS:]


def apply_run_change(
    current: Task | None, name: str, before: Execution | None, after: Execution, inband: TaskDeclaration | None = None
) -> TaskOutcome:
    """Return what an execution of task ``name`` going from ``before`` to ``after`` does.

    A run starts when an execution is first seen as a run of the task (new, announced, or
    given the task's name later); it is running while it is ``starting`` or ``running``; it
    ends when it completes, fails or is lost. A lost run counts as failed: the failure streak
    grows; if it comes back it runs again, and if it then completes, that success ends the
    streak (a failure after the loss is not counted twice). ``inband`` is a declaration the
    execution's first heartbeat carried. The time is ``after.updated_at``.
    """
    now = after.updated_at
    task = current.clone() if current is not None else Task(task_name=name)
    changed = current is None
    if inband is not None:
        declared = apply_declaration(task, name, "inband", inband, now)
        if declared.record is not None:
            task, changed = declared.record, True
    if after.task_type is not None and after.task_type != task.task_type:
        task.task_type, changed = after.task_type, True
    # The status it had as a run of this task; None when it was not one yet.
    previous = before.status if before is not None and before.metric_task_name == name else None
    if previous == after.status:
        return TaskOutcome(task if changed else None)
    declaration, _ = effective_declaration(task)
    increments: list[Increment] = []
    if previous is None and _record_start(task, declaration, after.started_at):
        increments.append(Increment(TASK_RUNS_UNEXPECTED, (name,)))
    execution_id = after.execution_id
    if after.status in _LIVE:
        if previous not in _LIVE:
            task.running += 1
            task.running_ids = [*task.running_ids, execution_id][-RECENT_RUNS:]
    else:
        if previous in _LIVE:
            task.running = max(0, task.running - 1)
            task.running_ids = [run for run in task.running_ids if run != execution_id]
        ended_at = after.ended_at if after.ended_at is not None else now
        task.last_end_at = max(task.last_end_at or ended_at, ended_at)
        if after.status == "completed":
            increments += _succeeded(task, declaration, after, ended_at)
        else:
            _failed(task, after, ended_at, counted=previous == "lost")
    _note_recent(task, after)
    return TaskOutcome(task, tuple(increments))


def _failed(task: Task, run: Execution, ended_at: float, counted: bool) -> None:
    """Note a failed or lost run of ``task``; ``counted`` when its loss already grew the streak."""
    task.last_failure_at = ended_at
    task.last_run_note = run.error_message or run.status_reason
    task.consecutive_successes = 0
    if not counted:
        task.consecutive_failures += 1
    task.failing = is_failing(task)


def _succeeded(task: Task, declaration: TaskDeclaration | None, run: Execution, ended_at: float) -> list[Increment]:
    """Note a successful run of ``task``; return the counters it moves (a run too short)."""
    was_failing = is_failing(task)
    task.last_success_at = ended_at
    task.consecutive_failures = 0
    task.consecutive_successes += 1
    recovery = declaration.recovery_threshold if declaration is not None else DEFAULT_RECOVERY_THRESHOLD
    task.failing = was_failing and task.consecutive_successes < recovery
    task.last_run_note = None
    minimum = declaration.min_runtime_seconds if declaration is not None else None
    if minimum and ended_at - run.started_at < minimum:
        task.last_run_note = f"succeeded in {ended_at - run.started_at:.0f}s, less than its min_runtime_seconds"
        return [Increment(TASK_RUNS_TOO_SHORT, (task.task_name,))]
    return []


def apply_pause(current: Task, until: float | None, now: float) -> TaskOutcome:
    """Return ``current`` paused from ``now`` until ``until`` (None: until it resumes by hand or
    its next run starts). Nothing is expected of it meanwhile: no run is missed, it is not
    failing, its status is ``paused``."""
    task = current.clone()
    task.paused, task.paused_until, task.missed = True, until, False
    task.deadline_at = until  # the reaper comes back when the pause ends
    return TaskOutcome(task)


def apply_resume(current: Task, now: float) -> TaskOutcome:
    """Return ``current`` resumed at ``now``: its runs are expected again from the first slot
    after ``now`` (unchanged when it was not paused)."""
    if not current.paused:
        return _UNCHANGED
    task = current.clone()
    task.paused, task.paused_until = False, None
    _reschedule(task, effective_declaration(task)[0], now)
    return TaskOutcome(task)


def apply_task_rebase(current: Task, now: float) -> TaskOutcome:
    """Return ``current`` expecting its next run at the first slot after ``now`` when the one
    it waited for is already due (unchanged otherwise).

    After the bridge's own outage (or a step of the clock) a run may have started while
    nobody could hear it: the slots of that time are skipped, not counted as missed.
    """
    declaration, _ = effective_declaration(current)
    if (
        declaration is None
        or not declaration.scheduled
        or current.next_run_at is None
        or current.next_run_at > now
        or current.paused
    ):
        return _UNCHANGED
    task = current.clone()
    task.next_run_at = next_slot(declaration, now)
    task.deadline_at = task.next_run_at + declaration.start_grace_seconds
    return TaskOutcome(task)


def apply_task_deadline(current: Task, now: float) -> TaskOutcome:
    """Return what passing the deadline of its expected start does to ``current``: each
    slot whose grace passed with no run started is missed, counted once, and the next one
    is expected (unchanged when none is due)."""
    if current.deadline_at is None or current.deadline_at > now:
        return _UNCHANGED
    if current.paused:  # the pause's end: expect runs again from now, none counted as missed
        return apply_resume(current, now)
    if current.next_run_at is None:
        return _UNCHANGED
    declaration, _ = effective_declaration(current)
    if declaration is None or not declaration.scheduled:
        return _UNCHANGED
    task = current.clone()
    assert task.next_run_at is not None and task.deadline_at is not None
    missed = 0
    while task.deadline_at <= now and missed < MAX_SLOTS_PER_ROUND:
        missed += 1
        task.next_run_at = next_slot(declaration, task.next_run_at)
        task.deadline_at = task.next_run_at + declaration.start_grace_seconds
    task.missed = True
    task.missed_runs += missed
    return TaskOutcome(task, (Increment(TASK_RUNS_MISSED, (task.task_name,), float(missed)),))
