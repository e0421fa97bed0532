"""The domain service: each view and the reaper call exactly one method here."""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from ..core import executions, tasks
from ..core.declarations import DeclarationError, TaskDeclaration
from ..core.errors import Conflict, NotFound
from ..core.events import Announcement, Completion, ContainerEvent, Heartbeat, RunReport
from ..core.executions import Execution, Outcome, Rules
from ..core.tasks import Task, TaskOutcome
from ..store import CapacityError, Decide, DecideTask, GroupCommit, Store, StoreUnavailable
from ..telemetry.families import REJECTED, TASKS_FILE_ERROR, TASKS_FILE_OK, TASKS_FILE_RELOADED_AT, TELEMETRY_ERRORS
from .config import Settings
from .tasks_file import TasksFile

__all__ = ["Monitor", "SpanSink", "rules_from"]

log = logging.getLogger(__name__)

#: The events an execution receives, and the core rule that decides each.
ExecutionEvent = Heartbeat | Completion | ContainerEvent | Announcement
_RULES: dict[type, Callable[..., Outcome]] = {
    Heartbeat: executions.apply_heartbeat,
    Completion: executions.apply_completion,
    ContainerEvent: executions.apply_container_event,
    Announcement: executions.apply_announcement,
}

REAP_BATCH = 500
#: Reaper rounds that may go missing (jitter, a slow round) before a gap counts as an outage.
OUTAGE_ROUNDS = 3
OUTAGE_SLACK_SECONDS = 1.0
#: Shorter silences are a busy machine, not an outage; far below any lost-window.
MIN_OUTAGE_SECONDS = 10.0
#: The wall clock may drift from the monotonic one by this much between two rounds (NTP
#: slews by at most 0.5 ms a second); more is a step.
CLOCK_STEP_TOLERANCE_SECONDS = 1.0
#: How long a pinged or checked-in run may go on without a declared max_runtime_seconds
#: before it counts as lost: Healthchecks' default grace, twice Sentry's default max_runtime.
UNREPORTED_RUN_BUDGET_SECONDS = 3600.0
#: A report without a run id whose open run ended under it looks again, this many times.
MAX_REPORT_ATTEMPTS = 16
#: The share of BRIDGE_MAX_TASK_NAMES that pings and check-ins creating tasks never take:
#: a flood of made-up slugs must leave room for the operators' own declarations.
DECLARATION_HEADROOM = 0.1


def _isolated(execution_id: str, decide: Decide) -> Decide:
    """Return ``decide``, made to leave its execution unchanged (and say so) when it raises:
    a record a rule cannot read must not stop the reaper's round for every other one."""

    def decision(current: Execution | None, label: executions.TaskLabel) -> Outcome:
        try:
            return decide(current, label)
        except Exception:
            log.exception("execution %s: its deadline could not be applied; left as it is", execution_id)
            return Outcome(None, result="unchanged")

    return decision


def _isolated_task(name: str, decide: DecideTask) -> DecideTask:
    """As :func:`_isolated`, for a task's rules: one bad task never stops the round."""

    def decision(current: Task | None) -> TaskOutcome:
        try:
            return decide(current)
        except Exception:
            log.exception("task %r: its schedule could not be applied; left as it is", name)
            return TaskOutcome(None)

    return decision


class SpanSink(Protocol):
    """Receives each execution whose span segment just ended (see bridge.telemetry.tracing)."""

    def emit(self, record: Execution) -> None: ...


def rules_from(settings: Settings) -> Rules:
    """Return the state-machine rules configured by ``settings``."""
    return Rules(
        default_interval=settings.default_interval_seconds,
        lost_after_intervals=settings.lost_after_intervals,
        startup_grace=settings.startup_grace_seconds,
        outage_after=max(MIN_OUTAGE_SECONDS, OUTAGE_ROUNDS * settings.reaper_interval_seconds + OUTAGE_SLACK_SECONDS),
        retention=settings.retention_seconds,
    )


class Monitor:
    """Applies heartbeats, completions and deadlines to the store.

    Every write goes through here; reads (the query API, the scrape) use the store. The
    request threads' events are group-committed (a batch request's in a transaction of its
    own, in turn with them); the reaper's deadlines are applied alone.
    Each event reads the clock when it is decided, inside its transaction, so that the
    times an execution records never run backwards however its events queue.
    """

    def __init__(
        self,
        store: Store,
        rules: Rules,
        clock: Callable[[], float] = time.time,
        spans: SpanSink | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self.store = store
        self._group_commit = GroupCommit(store)
        self.rules = rules
        self.clock = clock
        self.monotonic = monotonic
        self.spans = spans
        self._last_round: tuple[float, float] | None = None  # (wall, monotonic) of this process's last round
        #: BRIDGE_TASKS_FILE, looked at every reaper round
        self.tasks_file: TasksFile | None = None

    def _committed(self, outcome: Outcome) -> Outcome:
        # Only the caller whose compare-and-set committed the transition gets here
        # with it, so each span segment is emitted exactly once across workers.
        if outcome.closes_span and outcome.record is not None and self.spans is not None:
            self.spans.emit(outcome.record)
        return outcome

    def heartbeat(self, hb: Heartbeat) -> Outcome:
        """Record a heartbeat; returns the committed outcome.

        Raises :class:`~bridge.core.errors.Conflict` when its ``task_schedule`` declares a ping
        uuid another task holds, :class:`~bridge.store.CapacityError` or
        :class:`~bridge.store.StoreUnavailable`.
        """
        self.check_ping_uuid(hb.task_name or "", hb.task_schedule, "task_schedule.ping_uuid")
        return self._record(hb)

    def heartbeats(self, batch: list[Heartbeat]) -> list[Outcome]:
        """Record many heartbeats at once; one outcome per heartbeat, each applied or refused
        on its own: ``capacity`` (no room for a new execution) or ``conflict`` (its
        ``task_schedule`` declares a ping uuid another task holds) change nothing.

        Raises :class:`~bridge.store.StoreUnavailable`.
        """
        results: list[Outcome | None] = [None] * len(batch)
        items: list[tuple[int, Heartbeat]] = []
        for index, hb in enumerate(batch):
            if self._ping_uuid_holder(hb.task_name or "", hb.task_schedule) is None:
                items.append((index, hb))
            else:
                results[index] = Outcome(None, result="conflict")
        applied = self._group_commit.apply_many([(hb.execution_id, self._decision(hb)) for _, hb in items])
        for (index, _), outcome in zip(items, applied):
            results[index] = self._committed(outcome)
        return [result for result in results if result is not None]

    def complete(self, completion: Completion) -> Outcome:
        """Record a completion; returns the outcome (``duplicate`` for a repeat). Raises as :meth:`heartbeat`."""
        return self._record(completion)

    def container_event(self, event: ContainerEvent) -> Outcome:
        """Record a Docker agent's report; returns the outcome (``duplicate`` after the end).

        Raises as :meth:`heartbeat`.
        """
        return self._record(event)

    def announce(self, announcement: Announcement) -> Outcome:
        """Record a launcher's announcement of an execution; returns the outcome (``duplicate``
        after the end). Raises as :meth:`heartbeat`."""
        return self._record(announcement)

    def forget(self, execution_id: str) -> Outcome:
        """Forget an ended or lost execution now, as its retention would later: its series
        leave ``/metrics`` (so its alerts resolve) and no counter moves. A completed or failed
        one leaves a tombstone, so its repeats stay duplicates.

        Returns the outcome; its ``result`` is ``accepted``, ``missing`` (not tracked) or
        ``live`` (running or starting). Raises :class:`~bridge.store.StoreUnavailable`.
        """
        outcome = self.store.apply(execution_id, lambda cur, label: executions.apply_forget(cur, self.clock()))
        if outcome.result == "accepted":
            self.store.expire(self.clock())
        return outcome

    def report(self, report: RunReport) -> tuple[str | None, Outcome | None]:
        """Apply a run reported by a protocol that names tasks; returns the execution it was
        (None for a log line with no run to go to) and the outcome.

        Such a run sends no heartbeats between its start and its end, so it is given its
        task's ``max_runtime_seconds`` (else :data:`UNREPORTED_RUN_BUDGET_SECONDS`) before
        it counts as lost, where a heartbeating execution is given three intervals. Raises
        :class:`~bridge.core.errors.Conflict` when the run id names an execution the report may
        not act on (see :func:`bridge.core.executions.apply_heartbeat`), and as :meth:`heartbeat`.
        """
        for _attempt in range(MAX_REPORT_ATTEMPTS):
            run_id, event, guessed = self._run_event(report)
            if event is None:
                return None, None
            outcome = self._record(event)  # a report's event declares no ping uuid: nothing to check first
            if outcome.result == "conflict":
                raise self._conflict(report, run_id)
            if guessed and outcome.result in ("duplicate", "ignored"):
                continue  # the open run it went to ended meanwhile: look again
            return run_id, outcome
        raise Conflict(f"the runs of task {report.task_name!r} kept ending under this report; retry", report.run_field)

    def report_all(self, reports: list[RunReport]) -> list[str | None]:
        """Apply the runs of one client's report (an envelope) whole or not at all; returns
        each one's execution id. Raises :class:`~bridge.core.errors.Conflict` (nothing applied)
        when any names an execution it may not act on, :class:`~bridge.store.CapacityError`
        when any new one finds no room, and :class:`~bridge.store.StoreUnavailable`."""
        items: list[tuple[str, Decide]] = []
        run_ids: list[str | None] = []
        for report in reports:
            run_id, event, _ = self._run_event(report)
            run_ids.append(run_id)
            if event is not None and run_id is not None:
                items.append((run_id, self._refusing_conflicts(report, run_id, self._decision(event))))
        for outcome in self._group_commit.apply_many(items, whole=True) if items else []:
            self._committed(outcome)
        return run_ids

    def _refusing_conflicts(self, report: RunReport, run_id: str, decide: Decide) -> Decide:
        """Return ``decide``, raising :class:`~bridge.core.errors.Conflict` (which takes the
        whole transaction down, writing nothing) where it decides a ``conflict``."""

        def decision(current: Execution | None, label: executions.TaskLabel) -> Outcome:
            outcome = decide(current, label)
            if outcome.result == "conflict":
                raise self._conflict(report, run_id)
            return outcome

        return decision

    @staticmethod
    def _conflict(report: RunReport, run_id: str | None) -> Conflict:
        return Conflict(
            f"{report.run_field} {run_id} names an execution that is not a run of task "
            f"{report.task_name!r} reported through this protocol",
            report.run_field,
        )

    def _record(self, event: ExecutionEvent) -> Outcome:
        """Apply ``event`` to its execution through the group commit; returns the committed outcome."""
        return self._committed(self._group_commit.apply(event.execution_id, self._decision(event)))

    def _decision(self, event: ExecutionEvent) -> Decide:
        """Return the store's decision for ``event``: its rule, read at the time of the write."""
        rule = _RULES[type(event)]
        return lambda cur, label: rule(cur, event, self.clock(), self.rules, label)

    def _run_event(self, report: RunReport) -> tuple[str | None, Heartbeat | Completion | None, bool]:
        """Return the execution a report goes to, the event it is, and whether the execution
        was guessed (a report without a run id going to the task's open run)."""
        task = self.store.get_task(report.task_name)
        open_run = None
        if report.run_id is None and task is not None:
            open_run = next((run for run in reversed(task.running_ids) if run.startswith(report.protocol + ".")), None)
        run_id = report.run_id or open_run
        declared = tasks.effective_declaration(task)[0] if task is not None else None
        budget = (
            declared.max_runtime_seconds
            if declared is not None and declared.max_runtime_seconds
            else UNREPORTED_RUN_BUDGET_SECONDS
        )
        if report.phase == "log":
            if run_id is None or self.store.get(run_id) is None:
                return None, None, False  # a log line of no run the bridge knows: nothing to record it on
            progress = {"log": report.message} if report.message else None
            return (
                run_id,
                Heartbeat(run_id, task_name=report.task_name, progress=progress, protocol=report.protocol),
                open_run is not None,
            )
        guessed = run_id is not None and run_id == open_run
        run_id = run_id or f"{report.protocol}.{uuid.uuid4().hex}"
        if report.phase == "start":
            return (
                run_id,
                Heartbeat(
                    run_id,
                    task_name=report.task_name,
                    interval_seconds=budget / self.rules.lost_after_intervals,
                    max_runtime_seconds=declared.max_runtime_seconds if declared is not None else None,
                    protocol=report.protocol,
                ),
                guessed,
            )
        return (
            run_id,
            Completion(
                run_id,
                success=report.phase == "success",
                task_name=report.task_name,
                error_message=report.message if report.phase == "failure" else None,
                exit_code=report.exit_code,
                result_data=report.result_data,
                protocol=report.protocol,
            ),
            guessed,
        )

    def ping_task(
        self, *, ping_uuid: str | None = None, key: str | None = None, slug: str | None = None, create: bool = False
    ) -> tuple[str, bool]:
        """Return the task a Healthchecks ping reports for, and whether the ping created it.

        A uuid reaches the task that holds it; a ping key reaches the tasks created under it
        (``?create=1``) or declared with it, and, with ``create``, makes a task of a slug no
        task has. Raises :class:`~bridge.core.errors.NotFound` for anything else (whether
        the task exists or not: a key learns nothing of other keys' tasks),
        :class:`~bridge.store.CapacityError` for a new task past the names protocols may take.
        """
        if ping_uuid is not None:
            name = self.store.task_by_ping_uuid(ping_uuid)
            if name is None:
                raise NotFound(f"no task is declared with ping_uuid {ping_uuid}", "uuid")
            return name, False
        assert key is not None and slug is not None
        created = False
        task = self.store.get_task(slug)
        if task is None and create:
            created = self._claim(slug, ping_key=key)
            task = self.store.get_task(slug)
        if task is None or not tasks.ping_key_reaches(task, key):
            raise NotFound(f"ping key reaches no task {slug!r}", "slug")
        return slug, created

    def check_in(self, project: str, check_ins: list[tuple[RunReport, TaskDeclaration | None]]) -> list[str | None]:
        """Apply one Sentry request's check-ins (with the ``monitor_config`` each carries) for
        ``project``, whole or not at all; returns each one's execution id.

        A monitor (task) is its project's: a new one is made that project's, one made by
        another project, or by anything but a check-in (a heartbeating, pinged or declared
        task), is not one it may report for; nor is an execution it did not create. All of
        that is checked before anything is written. Raises
        :class:`~bridge.core.errors.Conflict`, :class:`~bridge.store.CapacityError` and
        :class:`~bridge.store.StoreUnavailable`.
        """
        new: list[str] = []
        for report, _ in check_ins:
            task = self.store.get_task(report.task_name)
            if task is None:
                new.append(report.task_name)
            else:
                self._check_project(report.task_name, task, project)
            if report.run_id is not None and executions.is_foreign(
                self.store.get(report.run_id), "sentry", report.task_name
            ):
                raise self._conflict(report, report.run_id)
        for name in dict.fromkeys(new):
            if not self._claim(name, sentry_project=project):  # another request made it first: whose?
                self._check_project(name, self.store.get_task(name), project)
        for report, declared in check_ins:
            if declared is not None:
                self.declare_task(report.task_name, declared, "inband")
        return self.report_all([report for report, _ in check_ins])

    @staticmethod
    def _check_project(name: str, task: Task | None, project: str) -> None:
        """Raise :class:`~bridge.core.errors.Conflict` unless ``task`` is a monitor of Sentry ``project``."""
        if task is None or task.sentry_project != project:
            raise Conflict(
                f"monitor_slug {name!r} names a task that is not a monitor of project {project}", "monitor_slug"
            )

    def _claim(self, name: str, **owner: str) -> bool:
        """Create task ``name`` for the owner a protocol gives; return True when this call did.

        Protocols never take the last :data:`DECLARATION_HEADROOM` of the task names: those
        stay for the tasks file and the API. Raises :class:`~bridge.store.CapacityError`.
        """
        headroom = max(1, int(self.store.max_task_names * DECLARATION_HEADROOM)) if self.store.max_task_names > 1 else 0
        [result] = self.store.apply_tasks(
            [(name, lambda cur: tasks.apply_claim(cur, name, **owner))], headroom=headroom
        )
        if result.result == "capacity":
            raise CapacityError(
                f"tasks made by pings and check-ins use all the task names they may "
                f"({self.store.max_task_names - headroom} of BRIDGE_MAX_TASK_NAMES)"
            )
        return result.record is not None

    def check_ping_uuid(self, name: str, declaration: TaskDeclaration | None, field: str = "ping_uuid") -> None:
        """Raise :class:`~bridge.core.errors.Conflict` when ``declaration`` gives task ``name``
        a ping uuid another task holds: a uuid belongs to one task, whichever door declares it."""
        holder = self._ping_uuid_holder(name, declaration)
        if holder is not None:
            raise Conflict(f"{field} {declaration.ping_uuid if declaration else ''} is held by task {holder!r}", field)

    def _ping_uuid_holder(self, name: str, declaration: TaskDeclaration | None) -> str | None:
        """Return the other task that holds the ping uuid ``declaration`` gives task ``name``, if any."""
        if declaration is None or declaration.ping_uuid is None:
            return None
        holder = self.store.task_by_ping_uuid(declaration.ping_uuid)
        return holder if holder is not None and holder != name else None

    def declare_task(self, name: str, declaration: TaskDeclaration | None, source: str = "api") -> TaskOutcome:
        """Declare task ``name`` from ``source`` (None withdraws that source's declaration).

        Returns the outcome (its record None when nothing changed). Raises
        :class:`~bridge.core.errors.Conflict` for a ping uuid another task holds,
        :class:`~bridge.store.CapacityError` for a new task beyond the task-name limit, and
        :class:`~bridge.store.StoreUnavailable`.
        """
        self.check_ping_uuid(name, declaration)
        now = self.clock()
        [result] = self.store.apply_tasks(
            [(name, lambda cur: tasks.apply_declaration(cur, name, source, declaration, now))]
        )
        if result.result == "capacity":
            raise CapacityError(f"{self.store.max_task_names} task names are known, the limit")
        return result

    def pause(self, name: str, until: float | None) -> Task:
        """Pause task ``name`` until ``until`` (unix seconds; None: until it is resumed or its
        next run starts); returns the task. Raises :class:`~bridge.core.errors.NotFound` for a
        task the bridge does not know, and :class:`~bridge.store.StoreUnavailable`."""
        now = self.clock()
        return self._task_change(name, lambda cur: tasks.apply_pause(cur, until, now))

    def resume(self, name: str) -> Task:
        """Resume task ``name`` now: its runs are expected again from the next slot. Returns the
        task; raises as :meth:`pause`."""
        now = self.clock()
        return self._task_change(name, lambda cur: tasks.apply_resume(cur, now))

    def _task_change(self, name: str, change: Callable[[Task], TaskOutcome]) -> Task:
        [result] = self.store.apply_tasks([(name, lambda cur: change(cur) if cur is not None else TaskOutcome(None))])
        task = result.record or self.store.get_task(name)
        if task is None:
            raise NotFound(f"no task {name!r}", "task_name")
        return task

    def sync_tasks_file(self, declarations: dict[str, TaskDeclaration]) -> None:
        """Make the file's declarations the stored ones: each declared, and those the file no
        longer holds withdrawn. Idempotent, so every worker may do it. A declaration that
        cannot be applied (a ping uuid another task holds, no room) is logged and left out.
        Raises :class:`~bridge.store.StoreUnavailable`."""
        now = self.clock()
        withdrawn = [
            task.task_name
            for task in self.store.tasks()
            if task.declarations.get("file") is not None and task.task_name not in declarations
        ]
        applied: dict[str, TaskDeclaration] = {}
        for name, declaration in declarations.items():
            try:
                self.check_ping_uuid(name, declaration)
                applied[name] = declaration
            except Conflict as exc:
                log.error("BRIDGE_TASKS_FILE: task %r: %s; the task is not declared from the file", name, exc.message)

        def declare(name: str, declaration: TaskDeclaration | None) -> tuple[Any, ...]:
            return name, lambda cur: tasks.apply_declaration(cur, name, "file", declaration, now)

        results = self.store.apply_tasks(
            [*(declare(name, d) for name, d in applied.items()), *(declare(name, None) for name in withdrawn)]
        )
        for name, result in zip([*applied, *withdrawn], results):
            if result.result == "capacity":
                log.error(
                    "BRIDGE_TASKS_FILE: task %r is not declared: %d task names are known, the limit",
                    name,
                    self.store.max_task_names,
                )
            elif result.record is not None:
                log.info(
                    "task %r: declaration from BRIDGE_TASKS_FILE %s",
                    name,
                    "applied" if name in declarations else "withdrawn",
                )

    def refresh_tasks_file(self) -> None:
        """Apply the tasks file's declarations when it changed since it was last read (or never
        was). A file that does not read or check keeps the declarations in force: its error is
        logged once per change (by whichever worker notes it first) and shown in the store's
        notes, which ``/metrics`` exposes. Raises :class:`~bridge.store.StoreUnavailable`, and
        then reads the file again next time."""
        if self.tasks_file is None:
            return
        try:
            declarations = self.tasks_file.read_if_changed()
        except DeclarationError as exc:
            self._note_tasks_file(str(exc))
            return
        if declarations is None:
            return
        try:
            self.sync_tasks_file(declarations)
            self._note_tasks_file(None)
        except StoreUnavailable:
            self.tasks_file.forget()
            raise

    def _note_tasks_file(self, error: str | None) -> None:
        """Record the outcome of reading the tasks file; log a new error (or the end of one) once."""
        store = self.store
        store.note(TASKS_FILE_OK, 0.0 if error else 1.0)
        if error is None:
            store.note(TASKS_FILE_RELOADED_AT, self.clock())
        previous = store.note(TASKS_FILE_ERROR, error or "")
        if error and previous != error:
            log.error(
                "BRIDGE_TASKS_FILE %s: %s; the declarations read before stay in force",
                self.tasks_file.path if self.tasks_file else "",
                error,
            )
        elif not error and previous:
            log.info("BRIDGE_TASKS_FILE reads again: its declarations are applied")

    def reap(self) -> tuple[int, int]:
        """Apply every passed deadline and drop expired executions.

        Returns ``(transitions, dropped)``. Each deadline is claimed by a
        compare-and-set, so workers reaping at once never double a transition. After a
        gap in the rounds (the bridge or its store was down) or a step of the wall clock,
        the deadlines are re-based and wait one full lost-window, so that neither makes
        anybody lost, nor delays a loss by the step.
        Raises :class:`~bridge.store.StoreUnavailable`.
        """
        self.refresh_tasks_file()
        now = self.clock()
        mark = self.store.mark_reaped(
            now, self.rules.outage_after, self.rules.outage_hold, clock_stepped=self._clock_stepped(now)
        )
        if mark.anomaly and mark.previous is not None and abs(now - mark.previous) > self.rules.outage_after:
            log.warning(
                "the last reaper round was at %.0f, %+.0fs from now: the bridge or its store was "
                "down, or the clock stepped; deadlines wait until %.0f",
                mark.previous,
                mark.previous - now,
                mark.hold_until,
            )
        if mark.rebase:
            log.warning("re-based %d deadlines to one window from now", self._rebase(now))
        if now < mark.hold_until:
            # Heartbeats could not arrive, or arrived on another time line: silence proves
            # nothing until every execution has had a full window to report again.
            return 0, self.store.expire(now)
        transitions = 0
        while True:
            due = self.store.due(now, REAP_BATCH)
            changed = 0
            for execution_id in due:
                outcome = self._committed(
                    self.store.apply(
                        execution_id,
                        _isolated(
                            execution_id,
                            lambda cur, _label: (
                                executions.apply_deadline(cur, now, self.rules)
                                if cur is not None
                                else Outcome(None, result="unchanged")
                            ),
                        ),
                    )
                )
                if outcome.transition is not None:
                    changed += 1
                    log.info("execution %s: %s -> %s", execution_id, *outcome.transition)
            transitions += changed
            # A full batch in which nothing changed would come back unchanged: stop.
            if len(due) < REAP_BATCH or not changed:
                break
        self._reap_tasks(now)
        return transitions, self.store.expire(now)

    def _reap_tasks(self, now: float) -> None:
        """Count the expected runs whose grace passed with no run started, each once."""
        while due := self.store.due_tasks(now, REAP_BATCH):
            results = self.store.apply_tasks(
                [
                    (
                        name,
                        _isolated_task(
                            name,
                            lambda cur: tasks.apply_task_deadline(cur, now) if cur is not None else TaskOutcome(None),
                        ),
                    )
                    for name in due
                ]
            )
            for name, result in zip(due, results):
                if result.record is not None:
                    log.info(
                        "task %s: an expected run did not start in time (%d missed)", name, result.record.missed_runs
                    )
            if len(due) < REAP_BATCH or not any(r.record for r in results):
                break

    def _clock_stepped(self, now: float) -> bool:
        """Return True when the wall clock moved apart from the monotonic one since this
        process's previous round: a step (NTP, a suspended machine), not the passing of time."""
        ticks = self.monotonic()
        previous, self._last_round = self._last_round, (now, ticks)
        if previous is None:
            return False
        step = (now - previous[0]) - (ticks - previous[1])
        if abs(step) <= CLOCK_STEP_TOLERANCE_SECONDS:
            return False
        log.warning("the wall clock stepped by %+.1fs since the last reaper round", step)
        return True

    def _rebase(self, now: float) -> int:
        """Give every execution with a deadline one full window from ``now``, and every task
        whose expected run is due its next slot after ``now``; return how many changed."""
        due = self.store.due_tasks(math.inf, self.store.max_task_names)  # every scheduled task: few
        results = (
            self.store.apply_tasks(
                [
                    (
                        name,
                        _isolated_task(
                            name,
                            lambda cur: tasks.apply_task_rebase(cur, now) if cur is not None else TaskOutcome(None),
                        ),
                    )
                    for name in due
                ]
            )
            if due
            else []
        )
        changed = sum(1 for result in results if result.record is not None)
        return changed + self._rebase_executions(now)

    def _rebase_executions(self, now: float) -> int:
        ids = self.store.due(math.inf, self.store.max_executions)
        changed = 0
        for first in range(0, len(ids), REAP_BATCH):
            results = self.store.apply_many(
                [
                    (
                        execution_id,
                        lambda cur, _label: (
                            executions.apply_rebase(cur, now, self.rules)
                            if cur is not None
                            else Outcome(None, result="unchanged")
                        ),
                    )
                    for execution_id in ids[first : first + REAP_BATCH]
                ]
            )
            changed += sum(1 for result in results if result.record is not None)
        return changed

    def reject(self, endpoint: str, reason: str, requests: int = 1) -> None:
        """Count refused requests; never raises, since the refusal must still be answered."""
        self._count(REJECTED, (endpoint, reason), requests)

    def telemetry_error(self, stage: str, spans: int = 1) -> None:
        """Count spans that could not be built (``build``) or exported (``export``); never raises."""
        self._count(TELEMETRY_ERRORS, (stage,), spans)

    def _count(self, name: str, labels: tuple[str, ...], amount: float = 1.0) -> None:
        try:
            self.store.count(name, labels, amount)
        except StoreUnavailable as exc:
            log.warning("could not count %s%s: %s", name, labels, exc)
