"""The domain service: each view and the reaper call exactly one method here."""

from __future__ import annotations

import logging
import time
from typing import Callable, Protocol

from . import state
from .config import Settings
from .state import Completion, ContainerEvent, Execution, Heartbeat, Outcome, Rules
from .store import CapacityError, GroupCommit, Store, StoreUnavailable

__all__ = ["Monitor", "REJECTED", "SpanSink", "TELEMETRY_ERRORS", "rules_from"]

log = logging.getLogger(__name__)

REJECTED = "bridge_requests_rejected_total"
TELEMETRY_ERRORS = "bridge_telemetry_errors_total"
REAP_BATCH = 500
#: Reaper rounds that may go missing (jitter, a slow round) before a gap counts as an outage.
OUTAGE_ROUNDS = 3
OUTAGE_SLACK_SECONDS = 1.0
#: Shorter silences are a busy machine, not an outage; far below any lost-window.
MIN_OUTAGE_SECONDS = 10.0


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
                 spans: SpanSink | None = None):
        self.store = store
        self._events = GroupCommit(store)
        self.rules = rules
        self.clock = clock
        self.spans = spans

    def _committed(self, outcome: Outcome) -> Outcome:
        # Only the caller whose compare-and-set committed the transition gets here
        # with it, so each span segment is emitted exactly once across workers.
        if outcome.closes_span and self.spans is not None:
            self.spans.emit(outcome.record)
        return outcome

    def heartbeat(self, hb: Heartbeat) -> Outcome:
        """Record a heartbeat; returns the committed outcome.

        Raises :class:`~bridge.store.CapacityError` or :class:`~bridge.store.StoreUnavailable`.
        """
        return self._committed(self._events.apply(
            hb.execution_id, lambda cur, label: state.apply_heartbeat(cur, hb, self.clock(), self.rules, label)))

    def heartbeats(self, batch: list[Heartbeat]) -> list[Outcome | CapacityError]:
        """Record many heartbeats at once; one outcome (or capacity refusal) per heartbeat.

        Raises :class:`~bridge.store.StoreUnavailable`.
        """
        results = self._events.apply_many([
            (hb.execution_id,
             lambda cur, label, hb=hb: state.apply_heartbeat(cur, hb, self.clock(), self.rules, label))
            for hb in batch])
        for result in results:
            if isinstance(result, Outcome):
                self._committed(result)
        return results

    def complete(self, completion: Completion) -> Outcome:
        """Record a completion; returns the outcome (``duplicate`` for a repeat). Raises as :meth:`heartbeat`."""
        return self._committed(self._events.apply(
            completion.execution_id,
            lambda cur, label: state.apply_completion(cur, completion, self.clock(), self.rules, label)))

    def container_event(self, event: ContainerEvent) -> Outcome:
        """Record a Docker agent's report; returns the outcome (``duplicate`` after the end).

        Raises as :meth:`heartbeat`.
        """
        return self._committed(self._events.apply(
            event.execution_id,
            lambda cur, label: state.apply_container_event(cur, event, self.clock(), self.rules, label)))

    def reap(self) -> tuple[int, int]:
        """Apply every passed deadline and drop expired executions.

        Returns ``(transitions, dropped)``. Each deadline is claimed by a
        compare-and-set, so workers reaping at once never double a transition. After a
        gap in the rounds (the bridge or its store was down) deadlines wait one full
        lost-window, so that the outage itself makes nobody lost.
        Raises :class:`~bridge.store.StoreUnavailable`.
        """
        now = self.clock()
        transitions = 0
        hold_until = self.store.mark_reaped(now, self.rules.outage_after, self.rules.outage_hold)
        if now < hold_until:
            # The bridge (or its store) was down: heartbeats could not arrive, so silence
            # proves nothing until every execution has had a full window to report again.
            return 0, self.store.expire(now)
        while True:
            due = self.store.due(now, REAP_BATCH)
            changed = 0
            for execution_id in due:
                outcome = self._committed(self.store.apply(execution_id, lambda cur, _label: (
                    state.apply_deadline(cur, now, self.rules) if cur is not None
                    else Outcome(None, result="unchanged"))))
                if outcome.transition is not None:
                    changed += 1
                    log.info("execution %s: %s -> %s", execution_id, *outcome.transition)
            transitions += changed
            # A full batch in which nothing changed would come back unchanged: stop.
            if len(due) < REAP_BATCH or not changed:
                break
        return transitions, self.store.expire(now)

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
