"""Faults: the store goes away under load and comes back; the bridge says 503, loses nothing,
recovers without a restart, and declares nobody lost over its own outage."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import threading
import time

import pytest
import requests

from support import HEARTBEAT, make_immutable, make_mutable, start_redis, unavailable, wait_for, workers_holding

EXECUTIONS = [f"fault-{n}" for n in range(20)]
OUTAGE_SECONDS = 13  # past the 10 s that make a gap an outage, and the 6 s lost-window
PROMPTLY = 3.0  # a 503 must not wait for timeouts: not a benchmark, a bound far below them


def test_it_rides_out_redis_stopping_and_restarting_under_load(live_bridge, tmp_path):
    redis, url = start_redis(tmp_path / "redis", durable=True)
    try:
        _ride_out_redis_outage(live_bridge, redis, url)
    finally:
        redis.stop()


def _ride_out_redis_outage(live_bridge, redis, url):
    bridge = live_bridge(
        workers=2,
        env={"BRIDGE_STORE_URL": url, "BRIDGE_LOST_AFTER_INTERVALS": "2", "BRIDGE_REAPER_INTERVAL_SECONDS": "0.2"},
    )
    answers: list[tuple[float, int, float]] = []
    stop = threading.Event()

    def beat(session, execution_id):
        started = time.monotonic()
        answers.append((started, *_timed_heartbeat(session, bridge, execution_id, interval=3)))

    def load():
        session = requests.Session()
        while not stop.is_set():
            for execution_id in EXECUTIONS:
                beat(session, execution_id)
            time.sleep(0.3)

    session = requests.Session()
    for execution_id in EXECUTIONS:
        beat(session, execution_id)
    assert {code for _, code, _ in answers} == {200}
    worker = threading.Thread(target=load)
    worker.start()
    try:
        time.sleep(1)
        redis.stop()
        down_at = time.monotonic()
        wait_for(lambda: requests.get(bridge.url + "/readyz", timeout=5).status_code == 503, "readyz to fail")
        time.sleep(OUTAGE_SECONDS)
        redis.start_until(redis.ready)
        up_at = time.monotonic()
        wait_for(
            lambda: requests.get(bridge.url + "/readyz", timeout=5).status_code == 200,
            "readyz to recover without a restart",
        )
        time.sleep(3)  # several reaper rounds and heartbeats after the store came back
    finally:
        stop.set()
        worker.join(30)

    during = [(code, took) for started, code, took in answers if down_at + 1 < started < up_at - 1]
    assert during and {code for code, _ in during} == {503}
    assert max(took for _, took in during) < PROMPTLY
    after = [code for started, code, _ in answers if started > up_at + 2]
    assert after and set(after) == {200}
    records = {
        e["execution_id"]: e
        for e in requests.get(bridge.url + "/api/v1/executions", params={"limit": "1000"}, timeout=10).json()[
            "executions"
        ]
    }
    assert set(records) == set(EXECUTIONS)  # everything accepted before the fault is there
    assert {(r["status"], r["lost_count"]) for r in records.values()} == {("running", 0)}


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def small_disk(tmp_path):
    """A small tmpfs of its own, which the test can fill up (mounting needs root)."""
    if os.geteuid() != 0:
        unavailable("mounting a tmpfs needs root")
    folder = tmp_path / "store"
    folder.mkdir()
    _mount("-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder))
    yield folder
    subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30)


def _fill(folder) -> None:
    """Take every free byte of the filesystem holding ``folder``."""
    with open(folder / "filler", "wb") as filler:
        try:
            while True:
                filler.write(b"\0" * 65536)
        except OSError:
            pass


def _timed_heartbeat(session, bridge, execution_id, interval=5) -> tuple[int, float]:
    """Post a heartbeat; return (status code, 0 when no answer came; seconds taken)."""
    started = time.monotonic()
    try:
        code = session.post(
            bridge.url + HEARTBEAT,
            timeout=10,
            json={"execution_id": execution_id, "status": "running", "interval_seconds": interval},
        ).status_code
    except requests.RequestException:
        code = 0
    return code, time.monotonic() - started


def _survive_store_fault(bridge, make_fault, clear_fault, refused_ids, database) -> None:
    """Heartbeats before a store fault, during it (quick 503s, readyz failing) and after it
    (recovery without a restart, nothing accepted lost, nobody lost)."""
    # Every worker has opened the store (its write-ahead log) before the fault: one that boots
    # into it cannot, and gunicorn stops when a worker fails to boot.
    wal = database.with_name(database.name + "-wal")
    wait_for(lambda: workers_holding(bridge, wal) == bridge.workers, "every worker to open the store")
    session = requests.Session()
    assert {_timed_heartbeat(session, bridge, e)[0] for e in EXECUTIONS} == {200}
    make_fault()
    try:
        refused = [_timed_heartbeat(session, bridge, e) for e in refused_ids]
        assert {code for code, _ in refused} == {503}
        assert max(took for _, took in refused) < PROMPTLY
        assert requests.get(bridge.url + "/readyz", timeout=5).status_code == 503
    finally:
        clear_fault()
    wait_for(
        lambda: requests.get(bridge.url + "/readyz", timeout=5).status_code == 200,
        "readyz to recover without a restart",
    )
    assert {_timed_heartbeat(session, bridge, e)[0] for e in EXECUTIONS} == {200}
    records = requests.get(bridge.url + "/api/v1/executions", params={"limit": "1000"}, timeout=10).json()
    assert {(e["execution_id"], e["status"], e["lost_count"], e["heartbeat_count"]) for e in records["executions"]} == {
        (e, "running", 0, 2) for e in EXECUTIONS
    }


def test_it_answers_503_while_the_sqlite_disk_is_full_and_recovers(live_bridge, tmp_path, small_disk):
    bridge = live_bridge(
        workers=2,
        data_dir=tmp_path,
        env={"BRIDGE_STORE_URL": f"sqlite:///{small_disk / 'bridge.db'}", "BRIDGE_REAPER_INTERVAL_SECONDS": "0.2"},
    )
    try:  # new executions need new pages, which a full disk cannot give
        _survive_store_fault(
            bridge,
            lambda: _fill(small_disk),
            (small_disk / "filler").unlink,
            [f"new-{e}" for e in EXECUTIONS],
            small_disk / "bridge.db",
        )
    finally:
        bridge.stop()  # before the small disk is unmounted


def test_it_answers_503_while_the_sqlite_file_is_read_only_and_recovers(live_bridge, tmp_path):
    bridge = live_bridge(workers=2, env={"BRIDGE_REAPER_INTERVAL_SECONDS": "0.2"})
    database = tmp_path / "bridge.db"
    # The database and its write-ahead log; not the -shm file, which SQLite maps into
    # memory (an immutable mapping ends the process with SIGBUS, not a refused write).
    files = (database, database.with_name("bridge.db-wal"))
    _survive_store_fault(bridge, lambda: make_immutable(*files), lambda: make_mutable(*files), EXECUTIONS, database)


def test_it_acknowledges_nothing_after_the_database_files_are_removed(live_bridge, tmp_path):
    bridge = live_bridge(workers=2, env={"BRIDGE_THREADS": "4"})
    database = tmp_path / "bridge.db"
    acknowledged: list[str] = []
    after_removal: list[str] = []  # sent once the files were gone, and acknowledged
    refused: list[int] = []
    stop, removed = threading.Event(), threading.Event()

    def load(worker: int):
        session = requests.Session()
        n = 0
        while not stop.is_set():
            execution_id = f"gone-{worker}-{n}"
            n += 1
            sent_after_removal = removed.is_set()
            try:
                response = session.post(bridge.url + HEARTBEAT, json={"execution_id": execution_id}, timeout=10)
            except requests.RequestException:
                continue
            if response.status_code == 200:
                (after_removal if sent_after_removal else acknowledged).append(execution_id)
            elif response.headers.get("Retry-After"):
                refused.append(response.status_code)

    threads = [threading.Thread(target=load, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(acknowledged) > 50, "heartbeats before the removal")
        for suffix in ("", "-wal", "-shm"):
            os.remove(f"{database}{suffix}")
        removed.set()
        time.sleep(3)
        readiness = [requests.get(bridge.url + "/readyz", timeout=10).status_code for _ in range(20)]
        assert readiness == [503] * 20
        assert requests.get(bridge.url + "/metrics", timeout=10).status_code == 503
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert refused and set(refused) == {503}
    bridge.stop()
    bridge.start()  # a new, empty database: whatever was acknowledged after the removal must be in it
    missing = [
        e for e in after_removal if requests.get(f"{bridge.url}/api/v1/executions/{e}", timeout=10).status_code != 200
    ]
    assert missing == []
    assert not database.with_name("bridge.db-journal").exists()


def test_it_answers_503_everywhere_on_a_corrupted_database(live_bridge, tmp_path):
    bridge = live_bridge(workers=2)
    for n in range(300):  # enough rows for several pages
        requests.post(
            bridge.url + HEARTBEAT,
            json={"execution_id": f"page-{n}", "task_name": f"t{n % 7}", "progress": {"note": "x" * 200}},
            timeout=10,
        )
    database = tmp_path / "bridge.db"
    with sqlite3.connect(database) as conn:  # every page into the file; the log restarts, so
        wait_for(  # caches are stale (once the bridge's own checkpoint, which may be at work, is done)
            lambda: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0, "a whole checkpoint"
        )
    page = 4096
    with open(database, "r+b") as file:
        for offset in range(page, os.path.getsize(database), page):  # every page but the first
            file.seek(offset)
            file.write(os.urandom(page))
    answers = {
        "heartbeat": requests.post(bridge.url + HEARTBEAT, json={"execution_id": "page-1"}, timeout=10),
        "new": requests.post(bridge.url + HEARTBEAT, json={"execution_id": "page-new"}, timeout=10),
        "metrics": requests.get(bridge.url + "/metrics", timeout=10),
        "query": requests.get(bridge.url + "/api/v1/executions", params={"status": "running"}, timeout=10),
        "one": requests.get(bridge.url + "/api/v1/executions/page-2", timeout=10),
        "readyz": requests.get(bridge.url + "/readyz", timeout=10),
    }
    assert {name: r.status_code for name, r in answers.items()} == {name: 503 for name in answers}
    assert all(r.headers.get("Retry-After") and r.json()["error"] for r in answers.values())
    assert "malformed" in bridge.log()
