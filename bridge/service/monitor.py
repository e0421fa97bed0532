"""The domain service: each view and the reaper call exactly one method here."""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable
from typing import Protocol

from ..core import executions, tasks
from ..core.declarations import TaskDeclaration
from ..core.events import Announcement, Completion, ContainerEvent, Heartbeat, RunReport
from ..core.executions import Execution, Outcome, Rules
from ..core.tasks import TaskOutcome
from ..store import CapacityError, Decide, GroupCommit, Store, StoreUnavailable
from ..telemetry.families import REJECTED, TELEMETRY_ERRORS
from .config import Settings
from .tasks_file import TasksFile

__all__ = ["Monitor", "SpanSink", "rules_from"]

log = logging.getLogger(__name__)

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


class SpanSink(Protocol):
    """Receives each execution whose span segment just ended (see bridge.tracing)."""

    def emit(self, record: Execution) -> None: ...


def rules_from(settings: Settings) -> Rules:
    """Return the state-machine rules configured by ``settings``."""
    return Rules(default_interval=settings.default_interval_seconds,
                 lost_after_intervals=settings.lost_after_intervals,
                 startup_grace=settings.startup_grace_seconds,
                 outage_after=max(MIN_OUTAGE_SECONDS,
                                  OUTAGE_ROUNDS * settings.reaper_interval_seconds + OUTAGE_SLACK_SECONDS),
                 retention=settings.retention_seconds)


class Monitor:
    """Applies heartbeats, completions and deadlines to the store.

    Every write goes through here; reads (the query API, the scrape) use the store. The
    request threads' events are group-committed (a batch request's in a transaction of its
    own, in turn with them); the reaper's deadlines are applied alone.
    Each event reads the clock when it is decided, inside its transaction, so that the
    times an execution records never run backwards however its events queue.
    """

    def __init__(self, store: Store, rules: Rules, clock: Callable[[], float] = time.time,
                 spans: SpanSink | None = None, monotonic: Callable[[], float] = time.monotonic):
        self.store = store
        self._events = GroupCommit(store)
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

        Raises :class:`~bridge.store.CapacityError` or :class:`~bridge.store.StoreUnavailable`.
        """
        return self._committed(self._events.apply(
            hb.execution_id, lambda cur, label: executions.apply_heartbeat(cur, hb, self.clock(), self.rules, label)))

    def heartbeats(self, batch: list[Heartbeat]) -> list[Outcome | CapacityError]:
        """Record many heartbeats at once; one outcome (or capacity refusal) per heartbeat.

        Raises :class:`~bridge.store.StoreUnavailable`.
        """
        def decision(hb: Heartbeat) -> Decide:
            return lambda cur, label: executions.apply_heartbeat(cur, hb, self.clock(), self.rules, label)

        results = self._events.apply_many([(hb.execution_id, decision(hb)) for hb in batch])
        for result in results:
            if isinstance(result, Outcome):
                self._committed(result)
        return results

    def complete(self, completion: Completion) -> Outcome:
        """Record a completion; returns the outcome (``duplicate`` for a repeat). Raises as :meth:`heartbeat`."""
        return self._committed(self._events.apply(
            completion.execution_id,
            lambda cur, label: executions.apply_completion(cur, completion, self.clock(), self.rules, label)))

    def container_event(self, event: ContainerEvent) -> Outcome:
        """Record a Docker agent's report; returns the outcome (``duplicate`` after the end).

        Raises as :meth:`heartbeat`.
        """
        return self._committed(self._events.apply(
            event.execution_id,
            lambda cur, label: executions.apply_container_event(cur, event, self.clock(), self.rules, label)))

    def announce(self, announcement: Announcement) -> Outcome:
        """Record a launcher's announcement of an execution; returns the outcome (``duplicate``
        after the end). Raises as :meth:`heartbeat`."""
        return self._committed(self._events.apply(
            announcement.execution_id,
            lambda cur, label: executions.apply_announcement(cur, announcement, self.clock(), self.rules, label)))

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
        """Apply a run reported by a task-naming protocol; returns the execution it was (None
        for a log line with no run to go to) and the outcome. Raises as :meth:`heartbeat`.

        Such a run sends no heartbeats between its start and its end, so it is given its
        task's ``max_runtime_seconds`` (else :data:`UNREPORTED_RUN_BUDGET_SECONDS`) before
        it counts as lost, where a heartbeating execution is given three intervals.
        """
        task = self.store.get_task(report.task_name)
        run_id = report.run_id
        if run_id is None and report.phase != "start" and task is not None:
            run_id = next((run for run in reversed(task.running_ids) if run.startswith(report.protocol + ".")), None)
        declared = tasks.effective_declaration(task)[0] if task is not None else None
        budget = (declared.max_runtime_seconds if declared is not None and declared.max_runtime_seconds
                  else UNREPORTED_RUN_BUDGET_SECONDS)
        if report.phase == "log":
            if run_id is None or self.store.get(run_id) is None:
                return None, None  # a log line of no run the bridge knows: nothing to record it on
            progress = {"log": report.message} if report.message else None
            return run_id, self.heartbeat(Heartbeat(run_id, task_name=report.task_name, progress=progress))
        run_id = run_id or f"{report.protocol}.{uuid.uuid4().hex}"
        if report.phase == "start":
            return run_id, self.heartbeat(Heartbeat(
                run_id, task_name=report.task_name, interval_seconds=budget / self.rules.lost_after_intervals,
                max_runtime_seconds=declared.max_runtime_seconds if declared is not None else None))
        return run_id, self.complete(Completion(run_id, success=report.phase == "success", task_name=report.task_name,
                                                error_message=report.message if report.phase == "failure" else None,
                                                exit_code=report.exit_code, result_data=report.result_data))

    def task_by_ping_uuid(self, ping_uuid: str) -> str | None:
        """Return the name of the task declared with ``ping_uuid``, or None. Raises
        :class:`~bridge.store.StoreUnavailable`. (Tasks are few: they are read, not indexed.)"""
        for task in self.store.tasks():
            declaration, _ = tasks.effective_declaration(task)
            if declaration is not None and declaration.ping_uuid == ping_uuid:
                return task.task_name
        return None

    def declare_task(self, name: str, declaration: TaskDeclaration | None, source: str = "api") -> TaskOutcome:
        """Declare task ``name`` from ``source`` (None withdraws that source's declaration).

        Returns the outcome (its record None when nothing changed). Raises
        :class:`~bridge.store.CapacityError` for a new task beyond the task-name limit, and
        :class:`~bridge.store.StoreUnavailable`.
        """
        now = self.clock()
        [result] = self.store.apply_tasks([(name, lambda cur: tasks.apply_declaration(cur, name, source, declaration,
                                                                                     now))])
        if isinstance(result, CapacityError):
            raise result
        return result

    def sync_tasks_file(self, declarations: dict[str, TaskDeclaration]) -> None:
        """Make the file's declarations the stored ones: each declared, and those the file no
        longer holds withdrawn. Idempotent, so every worker may do it. Raises
        :class:`~bridge.store.StoreUnavailable`."""
        now = self.clock()
        withdrawn = [task.task_name for task in self.store.tasks()
                     if task.declarations.get("file") is not None and task.task_name not in declarations]

        def declare(name: str, declaration: TaskDeclaration | None) -> tuple:
            return name, lambda cur: tasks.apply_declaration(cur, name, "file", declaration, now)

        results = self.store.apply_tasks([*(declare(name, d) for name, d in declarations.items()),
                                          *(declare(name, None) for name in withdrawn)])
        for name, result in zip([*declarations, *withdrawn], results):
            if isinstance(result, CapacityError):
                log.error("task %r of BRIDGE_TASKS_FILE is not declared: %s", name, result)
            elif result.record is not None:
                log.info("task %r: declaration from BRIDGE_TASKS_FILE %s", name,
                         "applied" if name in declarations else "withdrawn")

    def refresh_tasks_file(self) -> None:
        """Apply the tasks file's declarations when it changed since it was last read (or never
        was). Raises :class:`~bridge.store.StoreUnavailable`, and then reads it again next time."""
        if self.tasks_file is None:
            return
        declarations = self.tasks_file.read_if_changed()
        if declarations is None:
            return
        try:
            self.sync_tasks_file(declarations)
        except StoreUnavailable:
            self.tasks_file.forget()
            raise

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
        mark = self.store.mark_reaped(now, self.rules.outage_after, self.rules.outage_hold,
                                      clock_stepped=self._clock_stepped(now))
        if mark.anomaly and mark.previous is not None and abs(now - mark.previous) > self.rules.outage_after:
            log.warning("the last reaper round was at %.0f, %+.0fs from now: the bridge or its store was "
                        "down, or the clock stepped; deadlines wait until %.0f", mark.previous,
                        mark.previous - now, mark.hold_until)
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
                outcome = self._committed(self.store.apply(execution_id, lambda cur, _label: (
                    executions.apply_deadline(cur, now, self.rules) if cur is not None
                    else Outcome(None, result="unchanged"))))
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
            results = self.store.apply_tasks([
                (name, lambda cur: tasks.apply_task_deadline(cur, now) if cur is not None else TaskOutcome(None))
                for name in due])
            for name, result in zip(due, results):
                if isinstance(result, TaskOutcome) and result.record is not None:
                    log.info("task %s: an expected run did not start in time (%d missed)", name,
                             result.record.missed_runs)
            if len(due) < REAP_BATCH or not any(isinstance(r, TaskOutcome) and r.record for r in results):
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
        results = self.store.apply_tasks([
            (name, lambda cur: tasks.apply_task_rebase(cur, now) if cur is not None else TaskOutcome(None))
            for name in due]) if due else []
        changed = sum(1 for result in results if isinstance(result, TaskOutcome) and result.record is not None)
        return changed + self._rebase_executions(now)

    def _rebase_executions(self, now: float) -> int:
        ids = self.store.due(math.inf, self.store.max_executions)
        changed = 0
        for first in range(0, len(ids), REAP_BATCH):
            results = self.store.apply_many([
                (execution_id, lambda cur, _label: (executions.apply_rebase(cur, now, self.rules) if cur is not None
                                                     else Outcome(None, result="unchanged")))
                for execution_id in ids[first:first + REAP_BATCH]])
            changed += sum(1 for result in results if isinstance(result, Outcome) and result.record is not None)
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
