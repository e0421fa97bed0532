"""Task health beyond a failure streak: too-short and unexpected runs, overlap, recovery,
dependencies and pauses, through every door, on both stores and across replicas."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from bridge.service.config import load_settings
from bridge.web import create_app

from support import COMPLETION, HEARTBEAT, FakeClock, samples, seed_heartbeat, start_redis, total

T0 = 1_800_000_000.0
HEALTH = {
    "min_runtime_seconds": 30,
    "early_grace_seconds": 120,
    "max_concurrency": 2,
    "recovery_threshold": 2,
    "depends_on": ["upstream"],
}


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    server.stop()


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'b.db'}"
    import redis

    url = request.getfixturevalue("redis_server")
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture
def bridge(store_url, tmp_path):
    """An app on each store, with a clock the test moves, and a tasks file it may write."""
    clock = FakeClock(T0)
    tasks_file = tmp_path / "tasks.yml"
    tasks_file.write_text("tasks: []\n")
    settings = load_settings(
        {}, store_url=store_url, reaper_interval_seconds=3600, tasks_file=str(tasks_file), sentry_keys=()
    )
    app = create_app({"SETTINGS": settings, "CLOCK": clock, "TESTING": True})
    monitor = app.extensions["heartbeat_bridge"].monitor
    yield app.test_client(), clock, monitor, tasks_file
    monitor.store.close()


def get_task(client, name: str) -> dict:
    response = client.get(f"/api/v1/tasks/{name}")
    assert response.status_code == 200, response.json
    return response.json


def metrics(client) -> dict:
    return samples(client.get("/metrics").data.decode())


def run(client, clock, execution_id: str, task: str, seconds: float = 60, success: bool = True) -> None:
    client.post(HEARTBEAT, json=seed_heartbeat(execution_id, task_name=task))
    clock.advance(seconds)
    client.post(COMPLETION, json={"execution_id": execution_id, "success": success})


def declare_by(door: str, client, monitor, tasks_file, name: str, fields: dict) -> None:
    """Declare task ``name`` with ``fields`` through one door."""
    if door == "api":
        assert client.put(f"/api/v1/tasks/{name}", json=fields).status_code == 200
    elif door == "file":
        tasks_file.write_text(json.dumps({"tasks": [{"name": name, **fields}]}))
        monitor.tasks_file.forget()
        monitor.refresh_tasks_file()
    elif door == "inband":
        response = client.post(HEARTBEAT, json=seed_heartbeat(f"{name}-first", task_name=name, task_schedule=fields))
        assert response.status_code == 200, response.json
    else:  # a Sentry check-in's monitor_config: the one field Sentry has a word for
        config = {"recovery_threshold": fields["recovery_threshold"]}
        response = client.post(f"/api/9/cron/{name}/anykey0123/?status=ok", json={"monitor_config": config})
        assert response.status_code == 202, response.json


@pytest.mark.parametrize("door", ["api", "file", "inband", "sentry"])
def test_it_takes_every_health_field_through_every_door(bridge, door):
    client, _, monitor, tasks_file = bridge
    declare_by(door, client, monitor, tasks_file, "nightly", HEALTH)
    task = get_task(client, "nightly")
    wanted = {"recovery_threshold": 2} if door == "sentry" else HEALTH
    assert {field: task[field] for field in wanted} == wanted


@pytest.mark.parametrize("door", ["api", "file", "inband"])
def test_it_refuses_a_task_that_depends_on_itself_at_every_door(bridge, door):
    client, _, monitor, tasks_file = bridge
    if door == "file":
        tasks_file.write_text(json.dumps({"tasks": [{"name": "loop", "depends_on": ["loop"]}]}))
        monitor.tasks_file.forget()
        monitor.refresh_tasks_file()
        assert total(metrics(client), "bridge_tasks_file_reload_success") == 0
    elif door == "api":
        response = client.put("/api/v1/tasks/loop", json={"depends_on": ["loop"]})
        assert (response.status_code, response.json["field"]) == (400, "depends_on")
    else:
        response = client.post(
            HEARTBEAT, json=seed_heartbeat("loop-1", task_name="loop", task_schedule={"depends_on": ["loop"]})
        )
        assert (response.status_code, response.json["field"]) == (400, "task_schedule.depends_on")
    assert client.get("/api/v1/tasks/loop").status_code == 404


def test_it_tells_health_and_activity_apart(bridge):
    client, clock, _, _ = bridge
    client.put("/api/v1/tasks/etl", json={"failure_threshold": 2})
    assert get_task(client, "etl")["status"] == "new"
    run(client, clock, "e1", "etl", success=False)
    task = get_task(client, "etl")
    assert (task["status"], task["consecutive_failures"]) == ("up", 1)  # failed below its threshold
    run(client, clock, "e2", "etl", success=False)
    client.post(HEARTBEAT, json=seed_heartbeat("e3", task_name="etl"))
    task = get_task(client, "etl")
    assert (task["status"], task["running_count"]) == ("failing", 1)  # a run in progress hides nothing
    parsed = metrics(client)
    assert total(parsed, "task_status", task_name="etl", status="failing") == 1
    assert total(parsed, "task_executions", task_name="etl", status="running") == 1


def test_it_clears_failing_after_the_recovery_threshold(bridge):
    client, clock, _, _ = bridge
    client.put("/api/v1/tasks/etl", json={"recovery_threshold": 2})
    run(client, clock, "f1", "etl", success=False)
    run(client, clock, "s1", "etl")
    assert get_task(client, "etl")["status"] == "failing"
    run(client, clock, "s2", "etl")
    assert get_task(client, "etl")["status"] == "up"


def test_it_counts_too_short_and_unexpected_runs_and_shows_the_allowed_overlap(bridge):
    client, clock, _, _ = bridge
    client.put("/api/v1/tasks/crawl", json={"period_seconds": 3600, "min_runtime_seconds": 30, "max_concurrency": 1})
    run(client, clock, "quick", "crawl", seconds=2)
    run(client, clock, "double", "crawl", seconds=60)  # started 2 s after the first: a double start
    parsed = metrics(client)
    assert total(parsed, "task_runs_too_short_total", task_name="crawl") == 1
    assert total(parsed, "task_runs_unexpected_total", task_name="crawl") == 1
    assert total(parsed, "task_max_concurrency", task_name="crawl") == 1
    assert "min_runtime_seconds" not in (get_task(client, "crawl")["last_run_note"] or "")  # the last was long
    run(client, clock, "quick-again", "crawl", seconds=1)
    assert "less than its min_runtime_seconds" in client.get("/tasks/crawl").data.decode()


def test_it_says_which_upstream_holds_a_task_back(bridge):
    client, clock, _, _ = bridge
    client.put("/api/v1/tasks/upstream", json={})
    client.put("/api/v1/tasks/report", json={"depends_on": ["upstream"]})
    assert total(metrics(client), "task_upstream_unhealthy", task_name="report") == 0
    run(client, clock, "u1", "upstream", success=False)
    held = metrics(client)
    assert total(held, "task_upstream_unhealthy", task_name="report") == 1
    assert total(held, "task_upstream_blocking", task_name="report", upstream="upstream") == 1  # the dashboard's
    page = client.get("/tasks/report").data.decode()
    assert 'href="/tasks/upstream">upstream</a> unhealthy' in page
    run(client, clock, "u2", "upstream")
    healthy = metrics(client)
    assert total(healthy, "task_upstream_unhealthy", task_name="report") == 0
    assert total(healthy, "task_upstream_blocking", task_name="report") == 0


def test_it_pauses_for_a_while_missing_nothing_and_resumes_by_itself(bridge):
    client, clock, monitor, _ = bridge
    client.put("/api/v1/tasks/hourly", json={"period_seconds": 600, "start_grace_seconds": 60})
    paused = client.post("/api/v1/tasks/hourly/pause", json={"seconds": 3600})
    assert (paused.status_code, paused.json["status"], paused.json["paused_until"]) == (200, "paused", T0 + 3600)
    assert total(metrics(client), "task_paused_until_timestamp_seconds", task_name="hourly") == T0 + 3600
    for _ in range(6):  # six slots pass during the pause; the last round is at its end
        clock.advance(600)
        monitor.reap()
    task = get_task(client, "hourly")
    assert (task["status"], task["missed_runs"]) == ("new", 0)  # resumed at its end, nothing missed
    assert task["next_run_deadline_at"] == T0 + 3600 + 600 + 60
    resumed = metrics(client)
    assert total(resumed, "task_runs_missed_total", task_name="hourly") == 0
    assert total(resumed, "task_paused_until_timestamp_seconds", task_name="hourly") == 0  # no pause, no end


def test_it_pauses_until_resumed_or_the_next_run(bridge):
    client, clock, monitor, _ = bridge
    client.put("/api/v1/tasks/hourly", json={"period_seconds": 600, "start_grace_seconds": 60})
    assert client.post("/api/v1/tasks/hourly/pause").json["paused_until"] is None
    clock.advance(7200)
    monitor.reap()
    assert get_task(client, "hourly")["status"] == "paused"
    run(client, clock, "back", "hourly")  # a run resumes an open-ended pause, as a ping does at Healthchecks
    assert get_task(client, "hourly")["status"] == "up"
    client.post("/api/v1/tasks/hourly/pause")
    resumed = client.post("/api/v1/tasks/hourly/resume")
    assert resumed.json["status"] in ("up", "new") and not resumed.json["paused"]


@pytest.mark.parametrize(
    "body, field",
    [
        ({"seconds": 0}, "seconds"),
        ({"seconds": "soon"}, "seconds"),
        ({"until": T0 - 10}, "until"),
        ({"seconds": 60, "until": T0 + 60}, "until"),
        ({"for": 60}, "for"),
    ],
)
def test_it_refuses_a_bad_pause_naming_the_field(bridge, body, field):
    client, *_ = bridge
    client.put("/api/v1/tasks/hourly", json={})
    response = client.post("/api/v1/tasks/hourly/pause", json=body)
    assert (response.status_code, response.json["field"]) == (400, field)
    assert client.post("/api/v1/tasks/nobody/pause").status_code == 404
    assert client.get("/api/v1/tasks/hourly/pause").status_code == 405


@pytest.mark.e2e
def test_it_counts_too_short_runs_and_resumes_a_pause_once_across_replicas(live_bridge, tmp_path):
    server, url = start_redis(tmp_path / "redis")
    env = {"BRIDGE_STORE_URL": url, "BRIDGE_REAPER_INTERVAL_SECONDS": "0.2"}
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    try:
        replicas = [live_bridge(workers=2, env=env, data_dir=tmp_path / name) for name in ("a", "b")]
        requests.put(replicas[0].url + "/api/v1/tasks/quick", timeout=10, json={"min_runtime_seconds": 60})
        ids = [str(uuid.uuid4()) for _ in range(40)]

        def quick_run(pair):
            index, execution_id = pair
            replica = replicas[index % 2]
            requests.post(
                replica.url + HEARTBEAT, timeout=10, json={"execution_id": execution_id, "task_name": "quick"}
            )
            for other in replicas:  # the completion reaches both replicas: one run, counted once
                requests.post(other.url + COMPLETION, timeout=10, json={"execution_id": execution_id, "success": True})

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(quick_run, enumerate(ids)))
        for replica in replicas:
            assert total(replica.metrics(), "task_runs_too_short_total", task_name="quick") == 40
        paused = requests.post(replicas[1].url + "/api/v1/tasks/quick/pause", json={"seconds": 1}, timeout=10)
        assert paused.json()["status"] == "paused"
        deadline = time.monotonic() + 30
        while (
            time.monotonic() < deadline
            and requests.get(replicas[0].url + "/api/v1/tasks/quick", timeout=10).json()["status"] == "paused"
        ):
            time.sleep(0.2)
        task = requests.get(replicas[0].url + "/api/v1/tasks/quick", timeout=10).json()
        assert (task["status"], task["paused"], task["missed_runs"]) == ("up", False, 0)
    finally:
        server.stop()
