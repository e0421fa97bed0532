"""The one batch decision both stores make, against records read before the write.

A store reads the records a batch names (and the tombstones of those it lacks), lets
:func:`decide_batch` run each event's rule in order, then writes the result only if what
the decisions relied on still holds: each record unchanged, each new execution still
absent and within the limit, each task name still held or still free. Otherwise it reads
and decides again. What the decisions relied on is kept here, in :class:`Decided` and
:class:`TaskNames`, so that both stores check the same things.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..core.declarations import TaskDeclaration
from ..core.errors import CapacityError
from ..core.executions import OTHER_TASK, UNKNOWN_TASK, Execution, Increment, Outcome
from ..core.tasks import Task, TaskOutcome, apply_run_change
from .base import Decide, DecideTask

__all__ = ["Decided", "TaskNames", "decide_batch", "decide_task_changes", "decide_tasks"]


class TaskNames:
    """The task-name labels of one batch.

    A name the store holds is its own label; a new name is admitted while the store holds
    fewer than ``limit`` names (counting those this batch admits), and is ``_other``
    beyond. ``holds(name)`` asks the store (or what this process remembers of it);
    ``count()`` asks how many names it holds, once, when a new name first needs it.
    """

    def __init__(self, limit: int, holds: Callable[[str], bool], count: Callable[[], int]):
        self.limit = limit
        self._holds = holds
        self._count = count
        self._stored: int | None = None
        #: Names the store held when asked: the write checks that it still does.
        self.known: set[str] = set()
        #: Names this batch adds, in order: the write checks they are still absent and fit.
        self.added: list[str] = []

    def label(self, name: str | None) -> str:
        """Return the metric label of task name ``name`` (``unknown`` for None)."""
        if name is None:
            return UNKNOWN_TASK
        if name in self.known or name in self.added:
            return name
        if self._holds(name):
            self.known.add(name)
            return name
        if self._stored is None:
            self._stored = self._count()
        if self._stored + len(self.added) >= self.limit:
            return OTHER_TASK
        self.added.append(name)
        return name


@dataclass
class Decided:
    """A batch's decisions: one result per event, and what to write."""

    #: one per item: an Outcome (or a TaskOutcome, deciding tasks); a refused one's result is ``capacity``
    results: list[Any] = field(default_factory=list)
    #: execution id -> the record to write, its ``version`` one past the one read
    changed: dict[str, Execution] = field(default_factory=dict)
    #: the executions this batch adds (absent when read)
    new: list[str] = field(default_factory=list)
    #: (counter name, labels) -> [summed amount, latest exemplar]
    increments: dict[tuple[str, tuple[str, ...]], list[Any]] = field(default_factory=dict)
    #: (task name, the execution before, after, a declaration it carried): what its task must
    #: see, in order; the store reads those tasks and calls :func:`decide_task_changes`
    task_changes: list[tuple[str, Execution | None, Execution, TaskDeclaration | None]] = field(default_factory=list)
    #: task name -> the task record to write, its ``version`` one past the one read
    tasks: dict[str, Task] = field(default_factory=dict)

    def add(self, increments: Sequence[Increment]) -> None:
        """Sum ``increments`` into the batch's, so that each counter is added to once."""
        for inc in increments:
            total = self.increments.setdefault((inc.name, inc.labels), [0.0, None])
            total[0] += inc.amount
            total[1] = inc.exemplar or total[1]


def decide_batch(
    items: Sequence[tuple[str, Decide]],
    stored: dict[str, Execution],
    tombstones: dict[str, Execution],
    names: TaskNames,
    tracked: Callable[[], int],
    max_executions: int,
    whole: bool = False,
) -> Decided:
    """Return the decisions of ``items``, each made on the record the ones before it left.

    ``stored`` holds the records read, ``tombstones`` the stand-ins of ended executions
    that left retention; ``tracked()`` says how many executions the store holds, asked
    once, when the batch first adds one. A new execution beyond ``max_executions`` is
    refused with an outcome whose result is ``capacity``, and leaves nothing behind, not
    even a task name. With ``whole`` the batch is one report: such a refusal raises
    :class:`CapacityError`. Raises whatever a decision raises (the store then writes nothing).
    """
    batch = Decided()
    count: int | None = None
    for execution_id, decide in items:
        current = batch.changed.get(execution_id) or stored.get(execution_id) or tombstones.get(execution_id)
        admitted = len(names.added)
        outcome = decide(current, names.label)
        record = outcome.record
        if record is None:
            batch.results.append(outcome)
            continue
        if execution_id not in stored and execution_id not in batch.changed:
            count = tracked() if count is None else count
            if count + len(batch.new) >= max_executions:
                del names.added[admitted:]
                if whole:
                    raise CapacityError(f"tracking {count + len(batch.new)} executions, the limit")
                batch.results.append(Outcome(None, result="capacity"))
                continue
            batch.new.append(execution_id)
        record.version = current.version + 1 if current is not None else 1
        batch.changed[execution_id] = record
        batch.add(outcome.increments)
        batch.results.append(outcome)
        name = record.metric_task_name
        if name not in (UNKNOWN_TASK, OTHER_TASK) and (
            current is None
            or current.status != record.status
            or current.metric_task_name != name
            or current.task_type != record.task_type
            or outcome.declaration is not None
        ):
            batch.task_changes.append((name, current, record, outcome.declaration))
    return batch


def decide_task_changes(batch: Decided, stored_tasks: dict[str, Task]) -> None:
    """Apply the batch's executions' changes to their tasks (read as ``stored_tasks``), in order."""
    for name, before, after, declaration in batch.task_changes:
        _keep(
            batch,
            name,
            stored_tasks,
            apply_run_change(batch.tasks.get(name) or stored_tasks.get(name), name, before, after, declaration),
        )


def decide_tasks(items: Sequence[tuple[str, DecideTask]], stored_tasks: dict[str, Task], names: TaskNames) -> Decided:
    """Return the decisions of ``items`` on tasks read as ``stored_tasks``, in order.

    A task not yet known takes a task name's place, refused (an outcome whose result is
    ``capacity``) once ``names`` is full. Raises whatever a decision raises.
    """
    batch = Decided()
    for name, decide in items:
        current = batch.tasks.get(name) or stored_tasks.get(name)
        admitted = len(names.added)
        outcome = decide(current)
        if outcome.record is not None and current is None and names.label(name) != name:
            del names.added[admitted:]
            batch.results.append(TaskOutcome(None, result="capacity"))
            continue
        _keep(batch, name, stored_tasks, outcome)
        batch.results.append(outcome)
    return batch


def _keep(batch: Decided, name: str, stored_tasks: dict[str, Task], outcome: TaskOutcome) -> None:
    if outcome.record is None:
        return
    stored = stored_tasks.get(name)
    outcome.record.version = stored.version + 1 if stored is not None else 1
    batch.tasks[name] = outcome.record
    batch.add(outcome.increments)
