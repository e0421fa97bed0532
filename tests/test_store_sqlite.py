"""The SQLite store: atomic compare-and-set across processes, limits, retention."""

from __future__ import annotations

import multiprocessing

import pytest

from bridge import state
from bridge.monitor import Monitor
from bridge.state import Heartbeat, Rules
from bridge.store import CapacityError
from bridge.store.sqlite import SQLiteStore

RULES = Rules()
T0 = 1_000_000.0


def open_store(path, **limits) -> SQLiteStore:
    return SQLiteStore(str(path), max_executions=limits.get("max_executions", 10_000),
                       max_task_names=limits.get("max_task_names", 100))


def heartbeat(store, execution_id, now, **fields):
    hb = Heartbeat(execution_id, **fields)
    return store.apply(execution_id, lambda cur, label: state.apply_heartbeat(cur, hb, now, RULES, label))


def _reap_in_child(path, now, barrier):
    store = open_store(path)
    barrier.wait()
    Monitor(store, RULES, clock=lambda: now).reap()


def test_it_counts_each_loss_once_when_processes_reap_at_the_same_moment(tmp_path):
    path = tmp_path / "b.db"
    store = open_store(path)
    for n in range(300):
        heartbeat(store, f"e{n}", T0, task_name="etl")
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(4)
    workers = [context.Process(target=_reap_in_child, args=(path, T0 + 1000, barrier))
               for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    snapshot = store.snapshot()
    assert snapshot.counters[(state.LOST, ("etl",))] == 300
    assert {e.lost_count for e in snapshot.executions} == {1}


def _heartbeat_in_child(path, ids, barrier):
    store = open_store(path)
    barrier.wait()
    for execution_id in ids:
        heartbeat(store, execution_id, T0)


def test_it_applies_every_heartbeat_once_when_processes_write_the_same_executions(tmp_path):
    path = tmp_path / "b.db"
    open_store(path)
    ids = [f"e{n}" for n in range(50)]
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(4)
    workers = [context.Process(target=_heartbeat_in_child, args=(path, ids, barrier)) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    snapshot = open_store(path).snapshot()
    assert {e.heartbeat_count for e in snapshot.executions} == {4}
    assert {e.version for e in snapshot.executions} == {4}
    assert snapshot.counters[(state.HEARTBEATS, ("unknown",))] == 200


def test_it_rolls_back_a_refused_new_execution_entirely(tmp_path):
    store = open_store(tmp_path / "b.db", max_executions=1)
    heartbeat(store, "a", T0, task_name="first")
    with pytest.raises(CapacityError):
        heartbeat(store, "b", T0, task_name="second")
    snapshot = store.snapshot()
    assert snapshot.task_names == ["first"]
    assert [e.execution_id for e in snapshot.executions] == ["a"]


def test_it_frees_capacity_when_executions_expire(tmp_path):
    store = open_store(tmp_path / "b.db", max_executions=1)
    heartbeat(store, "a", T0)
    Monitor(store, RULES, clock=lambda: T0 + 100).reap()  # lost, expires an hour later
    assert store.expire(T0 + 100 + 3600) == 1
    heartbeat(store, "b", T0 + 4000)
    assert [e.execution_id for e in store.snapshot().executions] == ["b"]


def test_it_keeps_working_in_a_forked_child(tmp_path):
    store = open_store(tmp_path / "b.db")
    heartbeat(store, "parent", T0)
    context = multiprocessing.get_context("fork")
    child = context.Process(target=heartbeat, args=(store, "child", T0))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert store.get("child") is not None
