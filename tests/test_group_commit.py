"""Group commit: concurrent events of one process share a transaction, each answered on its own."""

from __future__ import annotations

import sys
import threading

import pytest

from bridge.core import executions
from bridge.core.events import Heartbeat
from bridge.core.executions import Rules
from bridge.service.config import load_settings
from bridge.store import CapacityError, GroupCommit, StoreUnavailable, open_store
from bridge.telemetry import families
from bridge.telemetry.metrics import ExecutionRenderer

from support import wait_for

RULES = Rules()
T0 = 1_000_000.0


def beat(execution_id, now=T0):
    hb = Heartbeat(execution_id, task_name="etl")
    return lambda cur, label: executions.apply_heartbeat(cur, hb, now, RULES, label)


@pytest.fixture
def store(tmp_path):
    return open_store(
        load_settings({}, store_url=f"sqlite:///{tmp_path / 'b.db'}", max_executions=5), ExecutionRenderer()
    )


class Recording:
    """Passes batches to a real store; the first waits until the test lets it go."""

    def __init__(self, store):
        self.store = store
        self.batches = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def apply_many(self, items, *, whole=False):
        self.batches.append([execution_id for execution_id, _ in items])
        self.entered.set()
        assert self.release.wait(30)
        return self.store.apply_many(items, whole=whole)

    def apply(self, execution_id, decide):
        return self.store.apply(execution_id, decide)


def _waiting_in(thread: threading.Thread, function: str) -> bool:
    """Return True when ``thread`` is stopped in ``function`` of the group commit (on a lock:
    blocking in C, its innermost Python frame is that function's)."""
    frame = sys._current_frames().get(thread.ident)
    return frame is not None and frame.f_code.co_name == function and frame.f_code.co_filename.endswith("group.py")


def run_all(group, calls):
    """Start each ``(execution_id, decide)`` in a thread; return the threads and their results."""
    results = {}

    def call(execution_id, decide):
        try:
            results[execution_id] = group.apply(execution_id, decide)
        except Exception as exc:
            results[execution_id] = exc

    threads = [threading.Thread(target=call, args=item) for item in calls]
    for thread in threads:
        thread.start()
    return threads, results


def test_it_commits_the_events_that_arrive_during_a_commit_together(store):
    recording = Recording(store)
    group = GroupCommit(recording)
    first, results = run_all(group, [("a", beat("a"))])
    assert recording.entered.wait(30)
    rest, later = run_all(group, [(f"e{n}", beat(f"e{n}")) for n in range(4)])
    wait_for(lambda: len(group._queue) == 4, "the four events to queue")
    recording.release.set()
    for thread in first + rest:
        thread.join(30)
    assert recording.batches == [["a"], ["e0", "e1", "e2", "e3"]]
    assert {r.result for r in {**results, **later}.values()} == {"accepted"}
    assert store.snapshot().counters[(families.HEARTBEATS, ("etl",))] == 5


def test_it_fails_only_the_event_whose_decision_raised(store):
    recording = Recording(store)
    group = GroupCommit(recording)
    first, _ = run_all(group, [("a", beat("a"))])
    assert recording.entered.wait(30)

    def broken(cur, label):
        raise ValueError("a bug in one decision")

    rest, results = run_all(group, [("b", beat("b")), ("bad", broken), ("c", beat("c"))])
    wait_for(lambda: len(group._queue) == 3, "the three events to queue")
    recording.release.set()
    for thread in first + rest:
        thread.join(30)
    assert isinstance(results["bad"], ValueError)
    assert results["b"].result == results["c"].result == "accepted"
    assert {r.execution_id for r in store.query()} == {"a", "b", "c"}


def test_it_hands_each_caller_its_own_capacity_refusal(store):
    group = GroupCommit(store)
    for n in range(5):
        group.apply(f"e{n}", beat(f"e{n}"))
    with pytest.raises(CapacityError):
        group.apply("one-too-many", beat("one-too-many"))
    assert group.apply("e0", beat("e0", T0 + 30)).record.heartbeat_count == 2


def test_it_gives_every_waiting_caller_the_store_failure(store):
    recording = Recording(store)
    group = GroupCommit(recording)
    first, results = run_all(group, [("a", beat("a"))])
    assert recording.entered.wait(30)
    rest, later = run_all(group, [("b", beat("b")), ("c", beat("c"))])
    wait_for(lambda: len(group._queue) == 2, "the two events to queue")

    def unavailable(items, *, whole=False):
        raise StoreUnavailable("disk full")

    recording.store = type("Failing", (), {"apply_many": staticmethod(unavailable)})()
    recording.release.set()
    for thread in first + rest:
        thread.join(30)
    assert all(isinstance(r, StoreUnavailable) for r in {**results, **later}.values())
    assert store.query() == [] and store.snapshot().executions == {}


def test_it_lets_a_new_caller_lead_once_the_last_commit_is_done(store):
    group = GroupCommit(store)
    threads, _ = run_all(group, [(f"e{n}", beat(f"e{n}")) for n in range(3)])
    for thread in threads:
        thread.join(30)
    assert group.apply("e0", beat("e0", T0 + 30)).record.heartbeat_count == 2
    # and so does the caller after it, from another thread: no lead was left behind
    again, results = run_all(group, [("e1", beat("e1", T0 + 30))])
    again[0].join(30)
    assert results["e1"].record.heartbeat_count == 2


def test_it_runs_a_batch_only_once_the_running_commit_is_done(store):
    recording = Recording(store)
    group = GroupCommit(recording)
    first, results = run_all(group, [("a", beat("a"))])
    assert recording.entered.wait(30)
    batch = []
    batch_thread = threading.Thread(target=lambda: batch.extend(group.apply_many([("b", beat("b")), ("c", beat("c"))])))
    batch_thread.start()
    wait_for(lambda: _waiting_in(batch_thread, "apply_many"), "the batch to wait for its turn")
    assert recording.batches == [["a"]]
    recording.release.set()
    for thread in first + [batch_thread]:
        thread.join(30)
    assert recording.batches == [["a"], ["b", "c"]]
    assert [r.result for r in batch] == ["accepted", "accepted"] and results["a"].result == "accepted"
