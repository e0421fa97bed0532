"""Two bridge replicas (separate gunicorn servers) sharing one real Redis."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from support import COMPLETION, HEARTBEAT, RedisCluster, samples, start_redis, total, wait_for

WAIT_SECONDS = 30.0


def start_store(topology: str, folder):
    """Return (server, store URL): one Redis, or a 3-master Redis Cluster."""
    if topology == "redis":
        return start_redis(folder / "redis")
    cluster = RedisCluster(folder / "cluster").start()
    return cluster, cluster.url


@pytest.mark.parametrize("topology", ["redis", "redis-cluster"])
def test_it_counts_exactly_once_across_replicas_and_both_answer_the_same(live_bridge, tmp_path, topology):
    server, url = start_store(topology, tmp_path)
    env = {"BRIDGE_STORE_URL": url, "BRIDGE_LOST_AFTER_INTERVALS": "2", "BRIDGE_REAPER_INTERVAL_SECONDS": "0.2"}
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    replicas = [live_bridge(workers=2, env=env, data_dir=tmp_path / name) for name in ("a", "b")]
    pool = ThreadPoolExecutor(16)
    ids = [str(uuid.uuid4()) for _ in range(60)]
    silent, finishing, steady = ids[:20], ids[20:40], ids[40:]
    rounds = iter(range(10**6))

    def beat(execution_id):
        replica = replicas[next(rounds) % 2]  # alternate: no execution sticks to one replica
        response = requests.post(
            replica.url + HEARTBEAT,
            timeout=10,
            json={"execution_id": execution_id, "status": "running", "task_name": "replicated", "interval_seconds": 1},
        )
        assert response.status_code == 200, response.text

    def complete(pair):
        replica, execution_id = pair
        response = requests.post(
            replica.url + COMPLETION, timeout=10, json={"execution_id": execution_id, "success": True}
        )
        assert response.status_code == 200, response.text
        return response.json()["duplicate"]

    try:
        for _ in range(2):
            list(pool.map(beat, ids))
        # every completion sent to both replicas at once
        duplicates = list(pool.map(complete, [(r, e) for e in finishing for r in replicas]))
        assert sorted(duplicates) == [False] * 20 + [True] * 20
        deadline = time.monotonic() + WAIT_SECONDS
        lost = lambda: requests.get(
            replicas[0].url + "/api/v1/executions", timeout=10, params={"status": "lost", "limit": "1000"}
        ).json()["executions"]
        while len(lost()) < 20 and time.monotonic() < deadline:
            list(pool.map(beat, steady))
            time.sleep(0.3)
        for _ in range(4):  # more reaper rounds in all four workers
            list(pool.map(beat, steady))
            time.sleep(0.3)
        assert sorted(e["execution_id"] for e in lost()) == sorted(silent)
        assert {e["lost_count"] for e in lost()} == {1}

        scrapes = [requests.get(r.url + "/metrics", timeout=10).text for r in replicas]
        assert scrapes[0] == scrapes[1]
        metrics = replicas[1].metrics()
        assert total(metrics, "task_executions_lost_total", task_name="replicated") == 20
        assert total(metrics, "task_completions_total", task_name="replicated", outcome="success") == 20
        assert total(metrics, "task_executions", task_name="replicated", status="running") == 20
    finally:
        pool.shutdown()
        for replica in replicas:
            replica.stop()
        server.stop()


def test_it_counts_missed_slots_and_failure_streaks_once_across_replicas(live_bridge, tmp_path):
    server, url = start_redis(tmp_path / "redis")
    env = {"BRIDGE_STORE_URL": url, "BRIDGE_REAPER_INTERVAL_SECONDS": "0.2"}
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    replicas = [live_bridge(workers=2, env=env, data_dir=tmp_path / name) for name in ("a", "b")]
    pool = ThreadPoolExecutor(16)
    try:
        declared = requests.put(
            replicas[0].url + "/api/v1/tasks/periodic", timeout=10, json={"period_seconds": 2, "start_grace_seconds": 1}
        ).json()
        requests.put(replicas[1].url + "/api/v1/tasks/flaky", timeout=10, json={"failure_threshold": 3})

        def run(n):  # each run's events go to both replicas, each event to both at once
            execution_id = f"flaky-{n}"
            for event, body in (
                (HEARTBEAT, {"execution_id": execution_id, "task_name": "flaky"}),
                (COMPLETION, {"execution_id": execution_id, "success": False}),
            ):
                answers = list(
                    pool.map(
                        lambda r, event=event, body=body: requests.post(r.url + event, json=body, timeout=10), replicas
                    )
                )
                assert all(a.status_code == 200 for a in answers), [a.text for a in answers]

        list(pool.map(run, range(6)))
        flaky = requests.get(replicas[1].url + "/api/v1/tasks/flaky", timeout=10).json()
        assert (flaky["consecutive_failures"], flaky["runs"], flaky["status"]) == (6, 6, "failing")

        # slots at 2, 4 and 6 s after the declaration pass their grace, reaped by four workers: wait
        # for the third (a busy machine's reapers are late, never early), then check none counted twice
        missed = lambda: requests.get(replicas[1].url + "/api/v1/tasks/periodic", timeout=10).json()["missed_runs"]
        wait_for(lambda: missed() >= 3, "three missed slots", timeout=30)
        periodic = requests.get(replicas[1].url + "/api/v1/tasks/periodic", timeout=10).json()
        passed = (time.time() - declared["next_run_at"] - 1) // 2 + 1  # deadlines passed by now
        assert passed - 1 <= periodic["missed_runs"] <= passed
        scrapes = [requests.get(r.url + "/metrics", timeout=10).text for r in replicas]
        counted = [total(samples(text), "task_runs_missed_total", task_name="periodic") for text in scrapes]
        assert counted[0] == counted[1] >= periodic["missed_runs"] >= 3

        requests.post(replicas[0].url + HEARTBEAT, json={"execution_id": "flaky-ok", "task_name": "flaky"}, timeout=10)
        list(
            pool.map(
                lambda r: requests.post(
                    r.url + COMPLETION, json={"execution_id": "flaky-ok", "success": True}, timeout=10
                ),
                replicas,
            )
        )
        flaky = requests.get(replicas[0].url + "/api/v1/tasks/flaky", timeout=10).json()
        assert (flaky["consecutive_failures"], flaky["runs"]) == (0, 7)
    finally:
        pool.shutdown()
        for replica in replicas:
            replica.stop()
        server.stop()


@pytest.mark.parametrize("topology", ["redis", "redis-cluster"])
def test_it_follows_pings_and_check_ins_from_one_replica_to_the_other(live_bridge, tmp_path, topology):
    server, url = start_store(topology, tmp_path)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    replicas = [live_bridge(workers=2, env={"BRIDGE_STORE_URL": url}, data_dir=tmp_path / name) for name in "ab"]
    check = str(uuid.uuid4())
    try:
        requests.put(replicas[0].url + "/api/v1/tasks/backup", json={"ping_uuid": check}, timeout=10)
        assert requests.get(f"{replicas[1].url}/ping/{check}/start", timeout=10).text == "OK"
        [opened] = requests.get(replicas[0].url + "/api/v1/tasks/backup", timeout=10).json()["running"]
        assert requests.post(f"{replicas[0].url}/ping/{check}/1", data="tape jammed", timeout=10).text == "OK"
        run = requests.get(f"{replicas[1].url}/api/v1/executions/{opened}", timeout=10).json()
        assert (run["status"], run["exit_code"], run["error_message"]) == ("failed", 1, "tape jammed")

        cron = "/api/7/cron/import-job/any-key/"
        check_in = requests.get(replicas[1].url + cron + "?status=in_progress", timeout=10).json()["id"]
        assert requests.get(replicas[0].url + cron + "?status=ok", timeout=10).status_code == 202
        job = requests.get(replicas[0].url + "/api/v1/tasks/import-job", timeout=10).json()
        assert (job["runs"], job["running"], job["last_executions"][0]["execution_id"]) == (1, [], check_in)
        scrapes = [requests.get(r.url + "/metrics", timeout=10).text for r in replicas]
        assert scrapes[0] == scrapes[1]
        assert total(samples(scrapes[0]), "task_completions_total", task_name="backup", outcome="failure") == 1
    finally:
        for replica in replicas:
            replica.stop()
        server.stop()
