"""Group commit: the events that request threads of one process submit at once share a transaction.

Each caller still waits until its own event is committed before it answers, so nothing
is acknowledged that is not stored. Whoever arrives while no commit is running leads:
it takes everything queued (its own event among it) into one ``Store.apply_many`` and
hands each waiting thread its outcome. Under load, one transaction, one read and one
write per counter then serve every request in flight, instead of one each.

A request's own batch of events (``apply_many``) is one transaction too, and takes its
turn with the group's: one transaction of the process's request threads at a time.
Several at once, each deciding hundreds of events, only share one GIL and queue on the
store's write lock: on the batch benchmark one at a time per worker wrote 40% more
heartbeats per second than eight.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from ..core.executions import Outcome
from .base import Decide, Store, StoreUnavailable, admitted

__all__ = ["DEFAULT_MAX_BATCH", "GroupCommit"]

log = logging.getLogger(__name__)

#: Events per transaction at most, so one commit never holds the store's write lock for long.
DEFAULT_MAX_BATCH = 256

_PENDING = object()
_LEAD = object()  # the result that tells a waiting thread to lead the next commit


class _Event:
    __slots__ = ("decide", "execution_id", "result", "woken")

    def __init__(self, execution_id: str, decide: Decide):
        self.execution_id = execution_id
        self.decide = decide
        self.result: object = _PENDING
        # Held until the leader wakes this event's thread: one wake-up per waiter, no herd.
        self.woken = threading.Lock()
        self.woken.acquire()


class GroupCommit:
    """Applies events to ``store`` like ``Store.apply``, committing concurrent ones together."""

    def __init__(self, store: Store, max_batch: int = DEFAULT_MAX_BATCH):
        self.store = store
        self.max_batch = max_batch
        self._queue: list[_Event] = []
        self._leading = False
        self._lock = threading.Lock()
        self._turn = threading.Lock()  # held for each transaction: one at a time

    def apply(self, execution_id: str, decide: Decide) -> Outcome:
        """Run ``decide`` on the current record and commit its outcome; returns that outcome.

        Raises ``CapacityError`` and ``StoreUnavailable`` as ``Store.apply``
        does, and whatever ``decide`` itself raised.
        """
        event = _Event(execution_id, decide)
        with self._lock:
            self._queue.append(event)
            leads = not self._leading
            self._leading = True
        if not leads:
            event.woken.acquire()
            leads = event.result is _LEAD
        if leads:
            self._lead(event)
        if isinstance(event.result, BaseException):
            raise event.result
        return admitted(event.result)  # type: ignore[arg-type]

    def apply_many(self, items: Sequence[tuple[str, Decide]], *, whole: bool = False) -> list[Outcome]:
        """Apply ``items`` in one transaction of their own, as ``Store.apply_many`` does,
        once no other commit of this process is running; returns one result per item.

        Raises as ``Store.apply_many`` does.
        """
        with self._turn:
            return self.store.apply_many(items, whole=whole)

    def _lead(self, event: _Event) -> None:
        """Commit queued batches until ``event`` is done, then hand the lead to the next waiter."""
        batch: list[_Event] = []
        try:
            while event.result is _PENDING or event.result is _LEAD:
                # Let the threads that are reading their requests run first: those that
                # reach the queue meanwhile share this commit instead of needing their own.
                # With no other thread ready this returns at once.
                time.sleep(0)
                with self._lock:
                    batch = self._queue[: self.max_batch]
                    del self._queue[: self.max_batch]
                with self._turn:
                    results = self._commit(batch)
                for waiting, result in zip(batch, results):
                    waiting.result = result
                    if waiting is not event:
                        waiting.woken.release()
        finally:
            with self._lock:
                if event.result is _PENDING or event.result is _LEAD:
                    # Interrupted (a worker's timeout): nothing of this batch was committed.
                    for waiting in batch:
                        if waiting.result is _PENDING or waiting.result is _LEAD:
                            waiting.result = StoreUnavailable("the commit was interrupted")
                            if waiting is not event:
                                waiting.woken.release()
                    if event in self._queue:
                        self._queue.remove(event)
                    event.result = StoreUnavailable("the commit was interrupted")
                if self._queue:
                    successor = self._queue[0]
                    successor.result = _LEAD
                    successor.woken.release()
                else:
                    self._leading = False

    def _commit(self, batch: list[_Event]) -> list[object]:
        """Return one result per event: its outcome, or the exception that refused it."""
        try:
            return list(self.store.apply_many([(event.execution_id, event.decide) for event in batch]))
        except StoreUnavailable as exc:
            return [exc] * len(batch)
        except Exception as exc:
            if len(batch) == 1:
                return [exc]
            # A decision that raised took its whole transaction down; apply each event on
            # its own, so that only the faulty one fails.
            log.exception("a group of %d events failed; applying them one by one", len(batch))
            return [self._commit_one(event) for event in batch]

    def _commit_one(self, event: _Event) -> object:
        try:
            return self.store.apply_many([(event.execution_id, event.decide)])[0]
        except Exception as exc:  # StoreUnavailable, or the decision's own error
            return exc
