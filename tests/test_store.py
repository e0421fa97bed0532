"""The store contract, run against both stores: SQLite, and a real Redis server."""

from __future__ import annotations

import json
import math
import multiprocessing

import pytest

from bridge.core import executions, tasks
from bridge.core.declarations import parse_declaration
from bridge.core.events import Completion, Heartbeat
from bridge.core.executions import Rules
from bridge.service.config import load_settings
from bridge.service.monitor import Monitor
from bridge.store import CapacityError, StoreUnavailable, open_store
from bridge.telemetry import families
from bridge.telemetry.metrics import ExecutionRenderer

from support import empty_store, make_immutable, make_mutable, start_redis, wait_for

RULES = Rules()
T0 = 1_000_000.0


@pytest.fixture(params=["sqlite", "redis", "redis-cluster"])
def store_url(request, tmp_path):
    return empty_store(request, request.param, tmp_path)


def connect(url, render=None, **limits):
    return open_store(
        load_settings(
            {},
            store_url=url,
            max_executions=limits.get("max_executions", 10_000),
            max_task_names=limits.get("max_task_names", 100),
            **{k: v for k, v in limits.items() if k in ("dedup_seconds", "task_retention_seconds")},
        ),
        render or ExecutionRenderer(),
    )


def exposed(store):
    """Return what a scrape shows of each tracked execution, parsed back from the texts the
    store keeps: {execution id: {sample name: (labels, value)}}, the status family by the one
    status at 1."""
    from prometheus_client.parser import text_string_to_metric_families

    snapshot = store.snapshot()
    text = "".join(
        f"# TYPE {family.name} gauge\n" + b"".join(texts).decode()
        for family, texts in zip(families.EXECUTION_FAMILIES, snapshot.exposition)
    )
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name != "task_execution_status" or sample.value == 1:
                found.setdefault(sample.labels["execution_id"], {})[sample.name] = (sample.labels, sample.value)
    assert sum(snapshot.executions.values()) == len(found)
    return found


def heartbeat(store, execution_id, now, **fields):
    hb = Heartbeat(execution_id, **fields)
    return store.apply(execution_id, lambda cur, label: executions.apply_heartbeat(cur, hb, now, RULES, label))


def complete(store, execution_id, now):
    done = Completion(execution_id, success=True)
    return store.apply(execution_id, lambda cur, label: executions.apply_completion(cur, done, now, RULES, label))


def command_calls(server):
    """Return how many times Redis ran each command since its statistics were reset."""
    return {name.removeprefix("cmdstat_"): stat["calls"] for name, stat in server.info("commandstats").items()}


def _reap_in_child(url, now, barrier):
    store = connect(url)
    barrier.wait()
    Monitor(store, RULES, clock=lambda: now).reap()


def test_it_counts_each_loss_once_when_processes_reap_at_the_same_moment(store_url):
    store = connect(store_url)
    for n in range(300):
        heartbeat(store, f"e{n}", T0, task_name="etl")
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(4)
    workers = [context.Process(target=_reap_in_child, args=(store_url, T0 + 1000, barrier)) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    assert store.snapshot().counters[(families.LOST, ("etl",))] == 300
    assert {e.lost_count for e in store.query(limit=1000)} == {1}


def _heartbeat_in_child(url, ids, barrier):
    store = connect(url)
    barrier.wait()
    for execution_id in ids:
        heartbeat(store, execution_id, T0)


def test_it_applies_every_heartbeat_once_when_processes_write_the_same_executions(store_url):
    connect(store_url)
    ids = [f"e{n}" for n in range(50)]
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(4)
    workers = [context.Process(target=_heartbeat_in_child, args=(store_url, ids, barrier)) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    store = connect(store_url)
    assert {(e.heartbeat_count, e.version) for e in store.query(limit=1000)} == {(4, 4)}
    assert store.snapshot().counters[(families.HEARTBEATS, ("unknown",))] == 200


def test_it_rolls_back_a_refused_new_execution_entirely(store_url):
    store = connect(store_url, max_executions=1)
    heartbeat(store, "a", T0, task_name="first")
    with pytest.raises(CapacityError):
        heartbeat(store, "b", T0, task_name="second")
    assert store.snapshot().task_names == ["first"]
    assert list(exposed(store)) == ["a"]


def test_it_refuses_a_new_execution_beyond_the_limit_when_decided_before_the_lock(store_url):
    # No task name to add: the batch is decided on a plain read, and written only if its
    # new executions still fit.
    store = connect(store_url, max_executions=1)
    heartbeat(store, "a", T0)
    with pytest.raises(CapacityError):
        heartbeat(store, "b", T0)
    assert list(exposed(store)) == ["a"]
    assert heartbeat(store, "a", T0 + 30).record.heartbeat_count == 2


def test_it_writes_a_redis_batch_after_one_read_in_one_script_call(redis_url):
    import redis

    server = redis.Redis.from_url(redis_url)
    server.flushdb()
    store = connect(redis_url)
    # The script compares the stored bytes with those read: text that JSON escapes must
    # come through its argument unchanged, or every batch would fall back to WATCH.
    progress = {"stage": '数据 "quoted" \\ back\nslash\u0001', "percentage": 12.5}
    heartbeat(store, "a", T0, task_name="etl", progress=progress)  # a new task name: under WATCH
    heartbeat(store, "a", T0 + 30, task_name="etl", progress=progress)  # loads the script
    server.config_resetstat()
    heartbeat(store, "a", T0 + 60, task_name="etl", progress=progress)
    calls = command_calls(server)
    # The store's read, then the script, whose own check reads the records once more.
    assert (calls.get("mget"), calls.get("evalsha")) == (2, 1)
    assert "watch" not in calls and "exec" not in calls
    record = store.get("a")
    assert (record.heartbeat_count, record.progress) == (3, progress)


def test_it_writes_a_batch_too_large_for_one_lua_command_in_one_script_call(redis_url):
    import redis

    server = redis.Redis.from_url(redis_url)
    server.flushdb()
    store = connect(redis_url)
    ids = [f"e{n}" for n in range(4500)]  # 9,000 arguments to MSET: past Lua's 8,000

    def beat(execution_id, now):
        hb = Heartbeat(execution_id)
        return execution_id, lambda cur, label: executions.apply_heartbeat(cur, hb, now, RULES, label)

    store.apply_many([beat(i, T0) for i in ids])
    server.config_resetstat()
    store.apply_many([beat(i, T0 + 30 + n / 1000) for n, i in enumerate(ids)])
    calls = command_calls(server)
    assert calls.get("evalsha") == 1 and "watch" not in calls
    assert {(r.heartbeat_count, r.version) for r in store.query(limit=5000)} == {(2, 2)}
    assert len(exposed(store)) == 4500
    last = store.get(ids[-1])
    assert store.due(last.deadline_at, 5000)[-1] == ids[-1]
    assert len(store.due(last.deadline_at, 5000)) == 4500
    assert store.snapshot().counters[(families.HEARTBEATS, ("unknown",))] == 9000


def test_it_loads_the_write_script_again_when_redis_has_lost_it(redis_url):
    import redis

    server = redis.Redis.from_url(redis_url)
    server.flushdb()
    store = connect(redis_url)
    heartbeat(store, "a", T0)
    server.script_flush()  # as a restarted Redis
    server.config_resetstat()
    heartbeat(store, "a", T0 + 30)
    calls = command_calls(server)
    assert (calls.get("evalsha"), calls.get("script|load")) == (2, 1) and "watch" not in calls
    assert store.get("a").heartbeat_count == 2


def test_it_says_unavailable_while_redis_is_stuck_and_writes_again_after(redis_url, monkeypatch):
    import redis

    from bridge.store import redis as redis_store

    server = redis.Redis.from_url(redis_url)
    server.flushdb()
    monkeypatch.setattr(redis_store, "SOCKET_TIMEOUT_SECONDS", 0.2)
    store = connect(redis_url)
    heartbeat(store, "a", T0)
    server.client_pause(1000)  # the store's read gets its answer only after its timeout
    with pytest.raises(StoreUnavailable):
        heartbeat(store, "a", T0 + 30)
    server.client_unpause()
    # The late answer to the timed-out read must not be taken for the next command's.
    heartbeat(store, "b", T0 + 31)
    assert (store.get("a").heartbeat_count, store.get("b").heartbeat_count) == (1, 1)
    assert heartbeat(store, "a", T0 + 60).record.heartbeat_count == 2


def test_it_caps_task_names(store_url):
    store = connect(store_url, max_task_names=2)
    for n in range(4):
        heartbeat(store, f"e{n}", T0, task_name=f"t{n}")
    labels = {
        execution_id: samples["task_execution_info"][0]["task_name"] for execution_id, samples in exposed(store).items()
    }
    assert labels == {"e0": "t0", "e1": "t1", "e2": "_other", "e3": "_other"}


def test_it_frees_capacity_when_executions_expire(store_url):
    store = connect(store_url, max_executions=1)
    heartbeat(store, "a", T0)
    Monitor(store, RULES, clock=lambda: T0 + 100).reap()  # lost, expires an hour later
    assert store.expire(T0 + 100 + 3599) == 0
    assert store.expire(T0 + 100 + 3600) == 1
    assert store.get("a") is None and store.due(T0 + 10**6, 10) == []
    heartbeat(store, "b", T0 + 4000)
    assert list(exposed(store)) == ["b"]


def test_it_finds_due_executions_by_deadline(store_url):
    store = connect(store_url)
    heartbeat(store, "early", T0)
    heartbeat(store, "late", T0 + 50)
    assert store.due(T0 + 90, 10) == ["early"]
    assert store.due(T0 + 140, 10) == ["early", "late"]
    assert store.due(T0 + 140, 1) == ["early"]


def test_it_queries_with_filters_and_pages(store_url):
    store = connect(store_url)
    for n in range(5):
        heartbeat(store, f"e{n}", T0, task_name="even" if n % 2 == 0 else "odd")
    complete(store, "e2", T0 + 1)
    ids = lambda **q: [e.execution_id for e in store.query(**q)]
    assert ids() == ["e0", "e1", "e2", "e3", "e4"]
    assert ids(limit=2) == ["e0", "e1"] and ids(after="e1", limit=2) == ["e2", "e3"]
    assert ids(task_name="even") == ["e0", "e2", "e4"]
    assert ids(status="completed") == ["e2"]
    assert ids(status="running", task_name="even", after="e0") == ["e4"]


def test_it_keeps_counters_and_exemplars(store_url):
    store = connect(store_url)
    heartbeat(store, "a", T0, task_name="etl")
    complete(store, "a", T0 + 45)
    snapshot = store.snapshot()
    assert snapshot.counters[(families.COMPLETIONS, ("etl", "success"))] == 1
    assert snapshot.exemplars[(families.DURATION + "_bucket", ("etl", "success", "60"))] == (
        store.get("a").trace_id,
        45.0,
    )
    store.count("bridge_requests_rejected_total", ("heartbeat", "invalid_json"), 2)
    assert store.snapshot().counters[("bridge_requests_rejected_total", ("heartbeat", "invalid_json"))] == 2


def test_it_keeps_working_in_a_forked_child(store_url):
    store = connect(store_url)
    heartbeat(store, "parent", T0)
    context = multiprocessing.get_context("fork")
    child = context.Process(target=heartbeat, args=(store, "child", T0))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert store.get("child") is not None


def test_it_says_unavailable_when_redis_is_gone(tmp_path):
    server, url = start_redis(tmp_path / "redis")
    store = connect(url)
    heartbeat(store, "a", T0)
    server.stop()
    with pytest.raises(StoreUnavailable):
        heartbeat(store, "a", T0 + 1)
    with pytest.raises(StoreUnavailable):
        store.ping()


def test_it_keeps_each_executions_exposition_in_step_with_its_record(store_url):
    store = connect(store_url)
    heartbeat(store, "a", T0, task_name="etl", progress={"percentage": 40}, max_runtime_seconds=60)
    assert "task_execution_end_timestamp_seconds" not in exposed(store)["a"]
    complete(store, "a", T0 + 5)
    samples = exposed(store)["a"]
    record = store.get("a")
    status, _ = samples["task_execution_status"]
    assert (status["status"], status["task_name"]) == (record.status, record.metric_task_name) == ("completed", "etl")
    assert [
        samples[name][1]
        for name in (
            "task_progress_ratio",
            "task_execution_end_timestamp_seconds",
            "task_execution_max_runtime_seconds",
        )
    ] == [0.4, T0 + 5, 60]
    assert store.snapshot().executions == {("etl", "completed"): 1}


def test_it_keeps_the_texts_of_a_batch_whose_heartbeats_change_different_families(store_url):
    """Each heartbeat writes only the texts its change touches: the kept texts must still be
    each record's whole rendering."""
    store = connect(store_url)
    render = ExecutionRenderer()
    beats = {
        "a": Heartbeat("a", task_name="etl", progress={"percentage": 40}),
        "b": Heartbeat("b", task_name="etl"),
        "c": Heartbeat("c", task_name="etl", progress={"percentage": 10}),
    }
    later = {
        "a": Heartbeat("a", task_name="etl", progress={"percentage": 60}),  # last heartbeat, progress
        "b": Heartbeat("b", task_name="etl"),  # the last heartbeat alone
        "c": Heartbeat("c", task_name="etl", interval_seconds=90, container_id="c-2"),  # and interval, info
    }
    for now, events in ((T0, beats), (T0 + 30, later)):
        store.apply_many(
            [
                (key, lambda cur, label, hb=hb, now=now: executions.apply_heartbeat(cur, hb, now, RULES, label))
                for key, hb in events.items()
            ]
        )
    kept = [sorted(b"".join(texts).decode().splitlines()) for texts in store.snapshot().exposition]
    records = [store.get(key) for key in beats]
    assert kept == [
        sorted(line for record in records for line in render(record)[family].splitlines())
        for family in range(render.families)
    ]
    assert [record.heartbeat_count for record in records] == [2, 2, 2]


def test_it_applies_a_batch_in_order_refusing_only_what_is_over_capacity(store_url):
    store = connect(store_url, max_executions=1)
    beat = lambda execution_id, now: (
        execution_id,
        lambda cur, label: executions.apply_heartbeat(cur, Heartbeat(execution_id, task_name="etl"), now, RULES, label),
    )
    done = Completion("a", success=True)
    results = store.apply_many(
        [
            beat("a", T0),
            beat("a", T0 + 30),
            beat("b", T0 + 31),
            ("a", lambda cur, label: executions.apply_completion(cur, done, T0 + 40, RULES, label)),
        ]
    )
    assert [r.result for r in results] == ["accepted", "accepted", "capacity", "accepted"]
    record = store.get("a")
    assert (record.status, record.heartbeat_count, record.last_heartbeat_at) == ("completed", 2, T0 + 30)
    assert store.get("b") is None
    assert store.snapshot().counters[(families.HEARTBEATS, ("etl",))] == 2


def test_it_decides_again_when_another_writer_changed_the_record_first(store_url):
    store, other = connect(store_url), connect(store_url)
    heartbeat(store, "a", T0, task_name="etl")
    seen = []

    def decide(current, label):
        seen.append(current.heartbeat_count)
        if len(seen) == 1:  # another worker commits between this decision and its write
            heartbeat(other, "a", T0 + 10)
        return executions.apply_heartbeat(current, Heartbeat("a"), T0 + 20, RULES, label)

    store.apply("a", decide)
    assert seen == [1, 2]
    assert store.get("a").heartbeat_count == 3
    assert store.snapshot().counters[(families.HEARTBEATS, ("etl",))] == 3


def test_it_decides_again_when_another_writer_added_the_execution_first(store_url):
    store, other = connect(store_url), connect(store_url)
    heartbeat(store, "known", T0, task_name="etl")  # the task name is stored: no lock needed
    seen = []

    def decide(current, label):
        seen.append(current and current.heartbeat_count)
        if len(seen) == 1:  # another worker adds the execution between this decision and its write
            heartbeat(other, "new", T0 + 10, task_name="etl")
        return executions.apply_heartbeat(current, Heartbeat("new", task_name="etl"), T0 + 20, RULES, label)

    store.apply("new", decide)
    assert seen == [None, 1]
    assert store.get("new").heartbeat_count == 2
    assert store.snapshot().counters[(families.HEARTBEATS, ("etl",))] == 3
    assert len(exposed(store)) == 2


def test_it_renders_every_execution_again_when_the_rendering_changes(store_url):
    store = connect(store_url)
    heartbeat(store, "a", T0, task_name="etl", labels={"team": "data"})
    assert "label_team" not in exposed(store)["a"]["task_execution_info"][0]
    store.close()
    store = connect(store_url, ExecutionRenderer(("team",)))
    assert exposed(store)["a"]["task_execution_info"][0]["label_team"] == "data"
    heartbeat(store, "b", T0, task_name="etl")
    assert exposed(store)["b"]["task_execution_info"][0]["label_team"] == ""


def test_it_keeps_each_text_whole_when_a_record_holds_a_control_character(store_url):
    # The input rules let none in; a record from before them may hold one (Redis's scripts
    # split their arguments at one).
    store = connect(store_url)

    def decide(current, label):
        outcome = executions.apply_heartbeat(current, Heartbeat("a", task_name="etl"), T0, RULES, label)
        outcome.record.container_name = "odd\x1fname"
        return outcome

    store.apply("a", decide)
    heartbeat(store, "a", T0 + 30)
    samples = exposed(store)["a"]
    assert samples["task_execution_info"][0]["container_name"] in ("odd\x1fname", "odd name")
    assert samples["task_heartbeat_last_timestamp_seconds"][1] == T0 + 30


def test_it_renders_the_executions_of_a_store_written_before_scrapes_copied_text(tmp_path):
    import sqlite3

    from bridge.store.codec import encode_record

    record = heartbeat(connect(f"sqlite:///{tmp_path / 'new.db'}"), "a", T0, task_name="etl").record
    with sqlite3.connect(tmp_path / "b.db") as conn:  # the layout of the version before
        conn.executescript("""
            CREATE TABLE executions (execution_id TEXT PRIMARY KEY, status TEXT NOT NULL, task_name TEXT,
                deadline_at REAL, expires_at REAL, version INTEGER NOT NULL, data TEXT NOT NULL, metric_row TEXT)
                WITHOUT ROWID;
            CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
            INSERT INTO meta VALUES ('tracked', 1);""")
        conn.execute(
            "INSERT INTO executions VALUES ('a', 'running', 'etl', ?, ?, 1, ?, '[]')",
            (record.deadline_at, record.expires_at, encode_record(record)),
        )
    store = connect(f"sqlite:///{tmp_path / 'b.db'}")
    assert exposed(store)["a"]["task_execution_status"][0]["status"] == "running"
    with sqlite3.connect(tmp_path / "b.db") as conn:
        assert "metric_row" not in {row[1] for row in conn.execute("PRAGMA table_info(executions)")}
        indexes = {
            name
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE tbl_name = 'executions'"
                " AND type = 'index' AND name LIKE 'executions_%'"
            )
        }
    assert indexes == {
        "executions_deadline",
        "executions_expiry",
        "executions_status",
        "executions_task",
        "executions_kind",
    }
    assert store.due(record.deadline_at, 10) == ["a"]
    assert [r.execution_id for r in store.query(task_name="etl")] == ["a"]
    complete(store, "a", T0 + 5)
    assert exposed(store)["a"]["task_execution_status"][0]["status"] == "completed"


def test_it_renders_the_executions_of_a_redis_store_written_before_scrapes_copied_text(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    heartbeat(connect(redis_url), "a", T0, task_name="etl")
    # the layout of the version before: a row per execution, no texts
    client.delete("{hb}:kinds", "{hb}:exposition", *client.keys("{hb}:exposition:*"))
    client.hset("{hb}:rows", "a", "[]")
    store = connect(redis_url)
    assert exposed(store)["a"]["task_execution_status"][0]["status"] == "running"
    assert not client.exists("{hb}:rows")


def test_it_opens_a_read_only_file_it_brought_up_to_date_and_answers_writes_unavailable(tmp_path):
    store = connect(f"sqlite:///{tmp_path / 'b.db'}")
    heartbeat(store, "a", T0, task_name="etl")  # and kept open, so the write-ahead log stays
    files = [tmp_path / name for name in ("b.db", "b.db-wal")]
    make_immutable(*files)
    try:
        reader = connect(f"sqlite:///{tmp_path / 'b.db'}")  # a worker starting now
        assert reader.get("a").task_name == "etl" and list(exposed(reader)) == ["a"]
        with pytest.raises(StoreUnavailable):
            heartbeat(reader, "a", T0 + 30)
    finally:
        make_mutable(*files)
    heartbeat(reader, "a", T0 + 60)
    assert reader.get("a").heartbeat_count == 2


def test_it_reads_records_stored_as_objects_by_earlier_versions(tmp_path):
    import sqlite3

    url = f"sqlite:///{tmp_path / 'b.db'}"
    store = connect(url)
    heartbeat(store, "a", T0, task_name="etl")
    original = store.get("a")
    legacy = original.to_dict() | {"a_field_of_a_later_version": 1}
    with sqlite3.connect(tmp_path / "b.db") as conn:
        conn.execute("UPDATE executions SET data = ? WHERE execution_id = 'a'", (json.dumps(legacy),))
    assert store.get("a") == original
    heartbeat(store, "a", T0 + 30)
    assert (store.get("a").heartbeat_count, store.get("a").task_name) == (2, "etl")


def test_it_answers_unavailable_when_another_writer_holds_the_lock_too_long(tmp_path, monkeypatch):
    import fcntl

    from bridge.store import sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "SCRAPE_READERS", 2)
    store = open_store(
        load_settings({}, store_url=f"sqlite:///{tmp_path / 'b.db'}", sqlite_busy_timeout_seconds=0.2),
        ExecutionRenderer(),
    )
    heartbeat(store, "a", T0)
    with open(tmp_path / "b.db-writer", "w") as hung_writer:
        fcntl.flock(hung_writer, fcntl.LOCK_EX)
        with pytest.raises(StoreUnavailable, match="locked by another writer"):
            heartbeat(store, "a", T0 + 30)
        assert list(exposed(store)) == ["a"]  # a scrape does not wait for it: it reads alone
    heartbeat(store, "a", T0 + 60)
    assert store.get("a").heartbeat_count == 2


def fail(store, execution_id, now):
    done = Completion(execution_id, success=False)
    return store.apply(execution_id, lambda cur, label: executions.apply_completion(cur, done, now, RULES, label))


def test_it_answers_a_late_repeat_after_retention_as_a_duplicate_within_the_dedup_window(store_url):
    store = connect(store_url, dedup_seconds=600)
    heartbeat(store, "late", T0)
    complete(store, "late", T0 + 10)
    assert store.expire(T0 + 10 + RULES.retention) == 1
    assert store.get("late") is None  # gone from the query API and /metrics
    assert complete(store, "late", T0 + 5000).result == "duplicate"  # a completion retried
    assert heartbeat(store, "late", T0 + 5000).result == "ignored"
    assert store.get("late") is None
    counted = store.snapshot().counters
    assert counted[(families.COMPLETIONS, ("unknown", "success"))] == 1
    if store_url.startswith("redis"):  # Redis forgets it by itself, a window of real time from now
        import redis

        assert 590_000 < redis.Redis.from_url(store_url).pttl("{hb}:t:late") <= 600_000
    else:
        store.expire(T0 + 10 + RULES.retention + 600)  # past the window: the id is forgotten
        assert complete(store, "late", T0 + 10 + RULES.retention + 601).result == "accepted"


def test_it_keeps_no_tombstone_for_a_lost_execution_or_with_a_zero_window(store_url):
    store = connect(store_url, dedup_seconds=600)
    heartbeat(store, "silent", T0)
    Monitor(store, RULES, clock=lambda: T0 + 100).reap()  # lost, expires an hour later
    store.expire(T0 + 100 + RULES.retention)
    assert store.get("silent") is None
    assert heartbeat(store, "silent", T0 + 5000).transition == (None, "running")  # back: a new run
    store = connect(store_url, dedup_seconds=0)
    heartbeat(store, "done", T0)
    complete(store, "done", T0)
    store.expire(T0 + RULES.retention)
    assert complete(store, "done", T0 + RULES.retention + 1).result == "accepted"


def test_it_releases_a_task_name_nothing_tracked_carried_for_the_task_retention(store_url):
    store = connect(store_url, max_task_names=2, task_retention_seconds=100)
    heartbeat(store, "a", T0, task_name="once")
    heartbeat(store, "b", T0, task_name="kept")
    complete(store, "a", T0)
    assert heartbeat(store, "c", T0, task_name="new").record.metric_task_name == "_other"
    store.expire(T0 + RULES.retention)  # "once" leaves with its only execution
    store.expire(T0 + RULES.retention + 99)
    assert "once" in store.snapshot().task_names
    store.expire(T0 + RULES.retention + 100)
    snapshot = store.snapshot()
    assert sorted(snapshot.task_names) == ["kept"]
    assert not [key for key in snapshot.counters if key[1][:1] == ("once",)]  # its series went too
    assert heartbeat(store, "d", T0 + 4000, task_name="new").record.metric_task_name == "new"
    assert sorted(store.snapshot().task_names) == ["kept", "new"]


def test_it_answers_filtered_queries_from_an_index_on_redis(redis_url):
    import redis

    server = redis.Redis.from_url(redis_url)
    server.flushdb()
    store = connect(redis_url)
    for n in range(2500):
        heartbeat(store, f"e{n:05}", T0, task_name="rare" if n % 500 == 0 else "common")
    complete(store, "e00500", T0)
    server.config_resetstat()
    found = store.query(task_name="rare", limit=100)
    assert [r.execution_id for r in found] == [f"e{n:05}" for n in range(0, 2500, 500)]
    assert [r.execution_id for r in store.query(status="completed")] == ["e00500"]
    assert [r.execution_id for r in store.query(status="running", task_name="rare", after="e00000")] == [
        "e01000",
        "e01500",
        "e02000",
    ]
    assert command_calls(server)["mget"] == 3  # one small read each, not every record
    store.expire(T0 + RULES.retention)
    assert store.query(status="completed") == []
    assert server.zcard("{hb}:status:completed") == 0


def test_it_keeps_every_key_in_one_hash_slot_of_a_redis_cluster(redis_cluster):
    import redis

    redis_cluster.flush()
    store = connect(redis_cluster.url)
    assert isinstance(store._redis, redis.RedisCluster)
    heartbeat(store, "a", T0, task_name="etl")
    complete(store, "a", T0 + 10)
    heartbeat(store, "b", T0, task_name="etl")
    Monitor(store, RULES, clock=lambda: T0 + 20).reap()
    store.expire(T0 + 10 + RULES.retention)
    keys = []
    for port in redis_cluster.ports:
        with redis.Redis(port=port) as node:
            keys += [(port, key) for key in node.keys("*")]
    assert {port for port, _ in keys} == {next(iter(keys))[0]}, "all keys on one master"
    assert {key.decode().partition("}")[0] for _, key in keys} == {"{hb"}
    assert {b"{hb}:x:b", b"{hb}:t:a", b"{hb}:task:etl"} <= {key for _, key in keys}


def declare(store, name, now, **fields):
    declaration = parse_declaration(fields, name)
    return store.apply_tasks([(name, lambda cur: tasks.apply_declaration(cur, name, "api", declaration, now))])[0]


def _reap_tasks_in_child(url, now, barrier):
    store = connect(url)
    barrier.wait()
    Monitor(store, RULES, clock=lambda: now).reap()


def test_it_counts_each_missed_slot_once_when_processes_reap_at_the_same_moment(store_url):
    store = connect(store_url)
    for n in range(20):
        declare(store, f"t{n}", T0, period_seconds=60, start_grace_seconds=10)
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(4)
    workers = [
        context.Process(target=_reap_tasks_in_child, args=(store_url, T0 + 60 * 5 + 20, barrier)) for _ in range(4)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    counters = store.snapshot().counters
    assert {counters[(families.TASK_RUNS_MISSED, (f"t{n}",))] for n in range(20)} == {5.0}
    assert {task.missed_runs for task in store.tasks()} == {5}
    assert store.due_tasks(T0 + 60 * 5 + 20, 100) == []


def test_it_writes_a_run_to_its_task_with_the_execution(store_url):
    store = connect(store_url)
    declare(store, "etl", T0, period_seconds=3600)
    heartbeat(store, "a", T0 + 10, task_name="etl")
    assert (store.get_task("etl").running_ids, store.get_task("etl").last_start_at) == (["a"], T0 + 10)
    assert store.get_task("etl").next_run_at == T0 + 10 + 3600
    heartbeat(store, "a", T0 + 40)  # a heartbeat changes nothing of the task
    assert store.get_task("etl").version == 2
    complete(store, "a", T0 + 50)
    task = store.get_task("etl")
    assert (task.running, task.last_success_at, task.version) == (0, T0 + 50, 3)
    assert [t.task_name for t in store.snapshot().tasks] == ["etl"]


def test_it_decides_a_run_again_when_another_writer_changed_its_task_first(store_url, monkeypatch):
    from bridge.store import batch

    store, other = connect(store_url), connect(store_url)
    declare(store, "etl", T0, period_seconds=3600)
    decided = []

    def apply_run_change(*args):
        decided.append(args[0].version)
        if len(decided) == 1:  # another worker changes the task after it was read, before the write
            declare(other, "etl", T0 + 5, period_seconds=60)
        return tasks.apply_run_change(*args)

    monkeypatch.setattr(batch, "apply_run_change", apply_run_change)
    heartbeat(store, "a", T0 + 10, task_name="etl")
    assert decided == [1, 2]  # decided again on the task as the other worker left it
    task = store.get_task("etl")
    assert task.running_ids == ["a"] and task.next_run_at == T0 + 10 + 60  # the later declaration's period
    assert store.get("a").heartbeat_count == 1


def test_it_refuses_a_new_task_beyond_the_task_name_limit(store_url):
    store = connect(store_url, max_task_names=1)
    declare(store, "first", T0)
    assert declare(store, "second", T0).result == "capacity"
    assert [task.task_name for task in store.tasks()] == ["first"]


def test_it_keeps_a_declared_task_past_the_retention_and_releases_one_that_only_ran(store_url):
    store = connect(store_url, task_retention_seconds=100)
    declare(store, "declared", T0, period_seconds=60)
    heartbeat(store, "a", T0, task_name="ran")
    complete(store, "a", T0)
    store.expire(T0 + RULES.retention)
    store.expire(T0 + RULES.retention + 200)
    assert [task.task_name for task in store.tasks()] == ["declared"]
    assert store.get_task("ran") is None
    assert store.due_tasks(math.inf, 10) == ["declared"]
    store.apply_tasks([("declared", lambda cur: tasks.apply_declaration(cur, "declared", "api", None, T0))])
    store.expire(T0 + RULES.retention + 300)  # undeclared, it never ran: nothing keeps it
    assert store.tasks() == [] and store.snapshot().task_names == []


def test_it_forgets_an_ended_or_lost_execution_at_once_and_counts_nothing(store_url):
    store = connect(store_url, dedup_seconds=600)
    heartbeat(store, "silent", T0, task_name="crawl")
    heartbeat(store, "busy", T0, task_name="crawl")
    heartbeat(store, "done", T0, task_name="crawl")
    complete(store, "done", T0 + 1)
    monitor = Monitor(store, RULES, clock=lambda: T0 + 100)
    heartbeat(store, "busy", T0 + 50)
    monitor.reap()  # silent is lost
    before = store.snapshot().counters
    assert [monitor.forget(e).result for e in ("silent", "done", "busy", "nobody")] == [
        "accepted",
        "accepted",
        "live",
        "missing",
    ]
    assert list(exposed(store)) == ["busy"]
    assert store.get("silent") is None and store.get("done") is None and store.get("busy").status == "running"
    assert store.snapshot().counters == before
    assert monitor.forget("silent").result == "missing"
    assert complete(store, "done", T0 + 110).result == "duplicate"  # its tombstone answers repeats
    assert heartbeat(store, "silent", T0 + 120).transition == (None, "running")  # a lost one may come back


U1, U2 = "5f6a3b2c-1d2e-4f5a-8b9c-0d1e2f3a4b5c", "6b1e7c2a-0000-4000-8000-000000000001"


def test_it_indexes_each_ping_uuid_to_the_one_task_that_holds_it(store_url):
    store = connect(store_url, task_retention_seconds=100)
    declare(store, "holder", T0, ping_uuid=U1.upper())
    assert store.task_by_ping_uuid(U1) == "holder"
    declare(store, "latecomer", T0, ping_uuid=U1)  # even past the doors' check, never taken from its holder
    assert store.task_by_ping_uuid(U1) == "holder"
    declare(store, "holder", T0, ping_uuid=U2)  # the holder moves to another uuid: the first is free
    assert (store.task_by_ping_uuid(U1), store.task_by_ping_uuid(U2)) == (None, "holder")
    declare(store, "latecomer", T0 + 1, ping_uuid=U1, period_seconds=60)
    assert store.task_by_ping_uuid(U1) == "latecomer"
    store.apply_tasks([("latecomer", lambda cur: tasks.apply_declaration(cur, "latecomer", "api", None, T0))])
    assert store.task_by_ping_uuid(U1) is None
    store.expire(T0 + 1000)  # withdrawn and never run: the task, its name and its uuid go
    assert store.get_task("latecomer") is None and store.task_by_ping_uuid(U2) == "holder"


def test_it_keeps_the_last_task_names_for_declarations(store_url):
    store = connect(store_url, max_task_names=3)
    claim = lambda name: store.apply_tasks(
        [(name, lambda cur: tasks.apply_claim(cur, name, ping_key="k"))], headroom=1
    )[0]
    assert [claim(name).result for name in ("a", "b", "c")] == ["accepted", "accepted", "capacity"]
    assert declare(store, "declared", T0).result == "accepted"
    assert store.get_task("a").created_by_ping_key == "k" and store.get_task("c") is None


def test_it_notes_a_shared_fact_and_says_what_it_replaced(store_url):
    store = connect(store_url)
    assert store.note("tasks_file.error", "bad: line 3") is None
    assert store.note("tasks_file.error", "") == "bad: line 3"
    assert store.note("tasks_file.ok", 1.0) is None and store.note("tasks_file.ok", 0.0) == 1.0
    assert store.snapshot().notes == {"tasks_file.error": "", "tasks_file.ok": 0.0}


def test_it_applies_no_task_change_as_nothing(store_url):
    assert connect(store_url).apply_tasks([]) == []  # an empty tasks file


def _ids_by_family(snapshot) -> list[list[str]]:
    import re

    return [
        re.findall(r'execution_id="([^"]*)"', b"".join(texts).decode())
        for family, texts in zip(families.EXECUTION_FAMILIES, snapshot.exposition)
        if family.name == "task_execution_info" or family.name == "task_heartbeat_last_timestamp_seconds"
    ]


def test_it_reads_a_scrape_in_ranges_that_show_one_moment(tmp_path, monkeypatch):
    import sqlite3
    import threading

    from bridge.store import sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "SCRAPE_READERS", 3)
    path = tmp_path / "b.db"
    store = connect(f"sqlite:///{path}")
    for first in range(0, 3000, 500):
        store.apply_many(
            [
                (
                    f"e{n}",
                    lambda cur, label, n=n: executions.apply_heartbeat(cur, Heartbeat(f"e{n}"), T0, RULES, label),
                )
                for n in range(first, first + 500)
            ]
        )
    stop = threading.Event()

    def write() -> None:  # new executions at the end, and every range's rows moved
        n = 3000
        while not stop.is_set():
            heartbeat(store, f"e{n}", T0)
            heartbeat(store, f"e{n % 3000}", T0 + n)
            n += 1

    def scrape(seen: list) -> None:
        for _ in range(40):
            snapshot = store.snapshot()
            info, last = _ids_by_family(snapshot)
            seen.append((len(set(info)), len(info), sorted(info) == sorted(last), sum(snapshot.executions.values())))

    writer = threading.Thread(target=write)
    scrapes: list[list] = [[], []]
    scrapers = [threading.Thread(target=scrape, args=(seen,)) for seen in scrapes]
    writer.start()
    for scraper in scrapers:
        scraper.start()
    for scraper in scrapers:
        scraper.join(120)
    stop.set()
    writer.join(30)
    assert len(scrapes[0]) == len(scrapes[1]) == 40  # two scrapes at once: one has the readers
    for distinct, listed, in_step, counted in scrapes[0] + scrapes[1]:
        assert distinct == listed == counted and in_step
    assert max(counted for *_, counted in scrapes[0]) > 3000
    # the readers' transactions ended: a checkpoint can take the whole log (once the store's
    # own checkpointer, which may be at work, is done)
    checkpoint = sqlite3.connect(path)
    wait_for(lambda: checkpoint.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0, "a whole checkpoint")
    # the same bytes as one connection reading every row
    split = store.snapshot()
    monkeypatch.setattr(sqlite_store, "SCRAPE_READERS", 1)
    whole = store.snapshot()
    assert [b"".join(texts) for texts in split.exposition] == [b"".join(texts) for texts in whole.exposition]
    assert len(split.exposition[0]) > 1 and len(whole.exposition[0]) == 1  # read in ranges, then at once


def test_it_copies_the_log_into_the_database_after_writes_while_a_writer_holds_the_lock(tmp_path):
    import fcntl

    path = tmp_path / "b.db"
    store = connect(f"sqlite:///{path}")
    empty = path.stat().st_size
    with open(tmp_path / "b.db-writer", "w") as writer:  # written below SQLite's own threshold
        store.apply_many(
            [
                (
                    f"e{n}",
                    lambda cur, label, n=n: executions.apply_heartbeat(cur, Heartbeat(f"e{n}"), T0, RULES, label),
                )
                for n in range(300)
            ]
        )
        fcntl.flock(writer, fcntl.LOCK_EX)  # another writer's turn: the copy does not wait for it
        wait_for(lambda: path.stat().st_size > empty + 300 * 1024, "the log's pages in the database file")
    assert len(exposed(store)) == 300


def test_it_closes_the_checkpoints_connection_only_where_a_fork_waits_for_it(tmp_path):
    """A fork in the middle of a close would hand the child SQLite's locks, held forever."""
    import sqlite3

    from bridge.store import sqlite as sqlite_store

    opened, held_at_close = [], []

    class Watched(sqlite3.Connection):
        def execute(self, sql, *args):
            if len(opened) == 1:  # the first connection's checkpoint fails: it is closed, and reopened
                raise sqlite3.OperationalError("disk I/O error")
            return super().execute(sql, *args)

        def close(self):
            held_at_close.append(sqlite_store._CHECKPOINTING.locked())
            super().close()

    def open_connection():
        opened.append(sqlite3.connect(tmp_path / "b.db", factory=Watched))
        return opened[-1]

    checkpointer = sqlite_store._Checkpointer(open_connection)
    checkpointer.written()
    wait_for(lambda: held_at_close, "the failed checkpoint's connection closed")
    checkpointer.written()
    wait_for(lambda: len(opened) == 2, "a connection opened again")
    checkpointer.stop()
    assert held_at_close == [True, True]
