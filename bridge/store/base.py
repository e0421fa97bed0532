"""The narrow interface every store implements: SQLite embedded, Redis for scale-out.

A store keeps execution records (each with its exposition text, rendered when it is
written), cumulative counters and the bounded set of task names, and makes each event
atomic: it reads the current records, lets the pure rules of :mod:`bridge.core.executions`
decide what happens (through :mod:`bridge.store.batch`), and writes the result with its
counter increments as one compare-and-set.

Where the two stores differ, what each promises:

========================  ====================================  ==========================================
promise                   SQLite (one machine)                  Redis (many replicas; Redis Cluster too)
========================  ====================================  ==========================================
an answered write         in the file (WAL, ``synchronous``)    in Redis's memory; on disk with AOF
``snapshot()``            one moment: its read transactions     counters and names at one moment, texts in
                          start together, under the write lock  chunks after (each as it was then)
``max_executions``        exact                                 exact (the write script checks it)
filtered ``query()``      an index per filter                   a sorted set per status and task name
``due()``, ``expire()``   indexes on deadline and expiry        sorted sets by deadline and expiry
========================  ====================================  ==========================================
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from ..core.errors import CapacityError, StoreUnavailable
from ..core.executions import OTHER_TASK, Execution, Outcome, TaskLabel
from ..core.tasks import Task, TaskOutcome

__all__ = [
    "OTHER_TASK",
    "CapacityError",
    "Decide",
    "DecideTask",
    "ReaperMark",
    "Rendering",
    "Snapshot",
    "Store",
    "StoreUnavailable",
    "admitted",
    "mark_round",
]

#: How long an ended execution's id answers repeats once it left retention: a day.
DEFAULT_DEDUP_SECONDS = 86_400.0
#: How long a task name keeps its slot once nothing tracked carries it: 30 days.
DEFAULT_TASK_RETENTION_SECONDS = 30 * 86_400.0

#: Given the current record (None if unknown) and the task-name resolver, the outcome.
Decide = Callable[["Execution | None", TaskLabel], Outcome]
#: Given a task's current record (None if unknown), the outcome.
DecideTask = Callable[["Task | None"], TaskOutcome]


def admitted(outcome: Outcome) -> Outcome:
    """Return ``outcome``; raise :class:`CapacityError` when it says the store had no room."""
    if outcome.result == "capacity":
        raise CapacityError("the bridge tracks as many executions as BRIDGE_MAX_EXECUTIONS allows")
    return outcome


class Rendering(Protocol):
    """Renders an execution's exposition text when it is written (see ``ExecutionRenderer`` in
    :mod:`bridge.telemetry.metrics`): the store keeps the text beside the record, and a
    scrape copies what every execution's text says, family by family."""

    #: how many texts a call returns, one per family
    families: int
    #: changes whenever the text of an unchanged record would: a store whose texts were
    #: rendered under another signature renders them again when it opens
    signature: str

    def __call__(self, record: Execution) -> tuple[str, ...]:
        """Return the record's text in each family (empty where it has no sample)."""
        ...

    def changes(self, before: Execution | None, after: Execution) -> dict[int, str]:
        """Return, by family index, the texts of ``after`` that may differ from those of
        ``before`` (with ``before`` None, every family that has samples); a family left out
        has the same text for both."""
        ...


class ReaperMark(NamedTuple):
    """What a reaper round learnt from the rounds recorded in the store."""

    #: Deadlines wait until then (the bridge was down, or the clock stepped).
    hold_until: float
    #: The latest round recorded before this one (None for the first ever).
    previous: float | None
    #: This round found an outage or a clock step, and started a hold.
    anomaly: bool
    #: The caller must re-base every deadline: no other round did since the anomaly.
    rebase: bool


def mark_round(
    recorded: dict[str, float], now: float, outage_after: float, hold: float, clock_stepped: bool
) -> tuple[dict[str, float], ReaperMark]:
    """Return the reaper's shared record after a round at ``now``, and what the round learnt.

    ``recorded`` holds ``reaped_at``, ``hold_until`` and ``rebased_at`` as last written. A
    round is an anomaly when this process saw its clock step (``clock_stepped``), when no
    round ran for ``outage_after`` seconds (the bridge or its store was down), or when the
    recorded rounds are that far ahead of ``now`` (the clock went back). Then deadlines
    wait ``hold`` seconds from ``now``, a hold set on the old time line is replaced, and
    the first round to see the anomaly is told to re-base; others within ``outage_after``
    are not. Pure: each store applies it atomically.
    """
    previous = recorded.get("reaped_at")
    hold_until = recorded.get("hold_until", 0.0)
    rebased_at = recorded.get("rebased_at")
    anomaly = clock_stepped or (previous is not None and abs(now - previous) > outage_after)
    rebase = False
    if anomaly:
        hold_until = now + hold
        reaped_at = now
        rebase = rebased_at is None or not now - outage_after <= rebased_at <= now
        if rebase:
            rebased_at = now
    else:
        # Replicas' clocks differ a little: the record keeps the latest round seen.
        reaped_at = now if previous is None else max(now, previous)
    written = {"reaped_at": reaped_at, "hold_until": hold_until}
    if rebased_at is not None:
        written["rebased_at"] = rebased_at
    return written, ReaperMark(hold_until, previous, anomaly, rebase)


@dataclass
class Snapshot:
    """Everything ``/metrics`` needs, read consistently at one moment."""

    #: per family of the rendering, every tracked execution's text, in no particular order,
    #: in parts to send one after the other
    exposition: list[list[bytes]]
    #: tracked executions by (metric task name, status)
    executions: dict[tuple[str, str], int] = field(default_factory=dict)
    counters: dict[tuple[str, tuple[str, ...]], float] = field(default_factory=dict)
    task_names: list[str] = field(default_factory=list)
    #: (counter name, labels) -> (trace id, observed value) of the latest exemplar
    exemplars: dict[tuple[str, tuple[str, ...]], tuple[str, float]] = field(default_factory=dict)
    tasks: list[Task] = field(default_factory=list)
    #: what :meth:`Store.note` last wrote, by key
    notes: dict[str, float | str] = field(default_factory=dict)


class Store(ABC):
    """Durable execution state shared by every worker and replica."""

    def __init__(
        self,
        render: Rendering,
        max_executions: int,
        max_task_names: int,
        dedup_seconds: float = DEFAULT_DEDUP_SECONDS,
        task_retention: float = DEFAULT_TASK_RETENTION_SECONDS,
    ):
        #: renders each execution's exposition text when it is written
        self.render = render
        self.max_executions = max_executions
        self.max_task_names = max_task_names
        #: How long an ended execution's id answers repeats as duplicates after it expired.
        self.dedup_seconds = dedup_seconds
        #: How long a task name keeps its slot and counters once nothing tracked carries it.
        self.task_retention = task_retention
        # Task names found in the store are remembered for less than the retention, so
        # that none is remembered past its release.
        self.known_name_seconds = min(60.0, task_retention / 2)
        self._known_names: dict[str, float] = {}  # name -> when it was last found in the store

    def _holds_name(self, name: str, in_store: Callable[[str], bool]) -> bool:
        """Return True when the store holds task name ``name``.

        ``in_store`` asks the store; a name it holds is remembered for
        ``known_name_seconds``, since names are few and asked about on every event. A
        remembered name may have been released since: the write checks it again.
        """
        now = time.monotonic()
        if now - self._known_names.get(name, -math.inf) < self.known_name_seconds:
            return True
        if not in_store(name):
            return False
        self._known_names[name] = now
        return True

    def apply(self, execution_id: str, decide: Decide) -> Outcome:
        """Run ``decide`` on the current record and commit its outcome atomically.

        Returns the committed outcome (a retried decision's, if a race forced a retry).
        Raises :class:`CapacityError` when it would add an execution beyond the limit,
        :class:`StoreUnavailable` when the store fails.
        """
        return admitted(self.apply_many([(execution_id, decide)])[0])

    @abstractmethod
    def apply_many(self, items: Sequence[tuple[str, Decide]], *, whole: bool = False) -> list[Outcome]:
        """Apply each ``(execution_id, decide)`` in order, in one atomic transaction.

        Returns one outcome per item: a new execution beyond ``max_executions`` gets one whose
        ``result`` is ``capacity``, and the other items are applied regardless. With
        ``whole``, the items are one report, applied whole or not at all: a refusal raises
        :class:`CapacityError` with nothing written, as does anything a decision raises.
        Each record is read once,
        each changed one written once, each counter added to once.
        Raises :class:`StoreUnavailable` when the store fails.
        """

    @abstractmethod
    def apply_tasks(self, items: Sequence[tuple[str, DecideTask]], *, headroom: int = 0) -> list[TaskOutcome]:
        """Apply each ``(task name, decide)`` in order, in one atomic transaction.

        Returns one outcome per item; a new task whose name would pass ``max_task_names``
        less ``headroom`` gets one whose ``result`` is ``capacity``. Raises
        :class:`StoreUnavailable` when the store fails.
        """

    @abstractmethod
    def get_task(self, name: str) -> Task | None:
        """Return the task, or None. Raises :class:`StoreUnavailable`."""

    @abstractmethod
    def task_by_ping_uuid(self, ping_uuid: str) -> str | None:
        """Return the name of the task that holds ``ping_uuid`` (an index: the cost does not
        grow with the tasks), or None. Raises :class:`StoreUnavailable`."""

    @abstractmethod
    def note(self, key: str, value: float | str) -> float | str | None:
        """Write a small shared fact (the tasks file's state) under ``key``; return the value it
        replaced, atomically, so that one of many workers can tell it changed it. Raises
        :class:`StoreUnavailable`."""

    @abstractmethod
    def tasks(self) -> list[Task]:
        """Return every task, ordered by name. Raises :class:`StoreUnavailable`."""

    @abstractmethod
    def due_tasks(self, now: float, limit: int) -> list[str]:
        """Return the names of up to ``limit`` tasks whose expected start's deadline is at or before ``now``."""

    @abstractmethod
    def mark_reaped(self, now: float, outage_after: float, hold: float, clock_stepped: bool = False) -> ReaperMark:
        """Record a reaper round at ``now``, shared by every worker and replica.

        Returns what :func:`mark_round`, applied atomically to the stored record, says.
        Raises :class:`StoreUnavailable`.
        """

    @abstractmethod
    def get(self, execution_id: str) -> Execution | None:
        """Return the execution, or None. Raises :class:`StoreUnavailable`."""

    @abstractmethod
    def query(
        self, *, status: str | None = None, task_name: str | None = None, after: str | None = None, limit: int = 100
    ) -> list[Execution]:
        """Return up to ``limit`` executions ordered by id, those after ``after`` only."""

    @abstractmethod
    def due(self, now: float, limit: int) -> list[str]:
        """Return ids of up to ``limit`` executions whose deadline is at or before ``now``."""

    @abstractmethod
    def expire(self, now: float) -> int:
        """Drop executions whose ``expires_at`` is at or before ``now``; return how many.

        A dropped execution that had ended leaves a tombstone for ``dedup_seconds``, read
        back as :func:`bridge.core.executions.tombstone`. Task names that no tracked
        execution has carried for ``task_retention`` seconds, and that neither the tasks file
        nor the API declares, are released with their task and counters, and tombstones past
        their window are forgotten.
        """

    @abstractmethod
    def snapshot(self) -> Snapshot:
        """Return every tracked execution's exposition text by family, the executions by task and
        status, the counters, the task names, the tasks and the notes. Raises
        :class:`StoreUnavailable`."""

    @abstractmethod
    def count(self, name: str, labels: tuple[str, ...], amount: float = 1.0) -> None:
        """Add ``amount`` to a counter outside any execution event (rejections)."""

    @abstractmethod
    def ping(self) -> None:
        """Return when the store answers. Raises :class:`StoreUnavailable`."""

    def close(self) -> None:  # noqa: B027 (a store with nothing to release need not say so)
        """Release connections; the store may be used again afterwards."""
