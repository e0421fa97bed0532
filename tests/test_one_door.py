"""One door: every protocol under the same input rules and the same authority.

Each finding of the hostile run has a test here, through the real server on both stores;
the table of bad values goes through every door that takes the field.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from bridge.web.auth import execution_token

from support import ROOT, LiveBridge, free_port, samples, seed_heartbeat, start_redis, total, wait_for

FLEET = "fleet-token-0123456789"
SECRET = "execution-secret-0123456789"
METRICS = "metrics-token-0123456789"
KEY_A, KEY_B = "publickeyaaaa", "publickeybbbb"
HEARTBEAT = "/api/v1/monitoring/heartbeat"
HEARTBEATS = "/api/v1/monitoring/heartbeats"
ENV = {
    "BRIDGE_AUTH_TOKENS": FLEET,
    "BRIDGE_EXECUTION_TOKEN_SECRET": SECRET,
    "BRIDGE_METRICS_TOKEN": METRICS,
    "BRIDGE_PING_KEYS": "key-a,key-b",
    "BRIDGE_SENTRY_KEYS": f"{KEY_A}@1,{KEY_B}",
    "BRIDGE_REAPER_INTERVAL_SECONDS": "0.2",
}
_counter = iter(range(10**6))


def fresh(prefix: str) -> str:
    """Return a name no other test of the module used."""
    return f"{prefix}-{next(_counter)}"


def fresh_uuid() -> str:
    return f"6b1e7c2a-0000-4000-8000-{next(_counter):012d}"


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def door(request, tmp_path_factory):
    """A live bridge with every credential on, on each store; shared by the module's live tests."""
    folder = tmp_path_factory.mktemp(f"door-{request.param}")
    env = dict(ENV)
    server = None
    if request.param == "redis":
        server, env["BRIDGE_STORE_URL"] = start_redis(folder / "redis")
    bridge = LiveBridge(folder, workers=2, env=env).start()
    yield Door(bridge.url)
    bridge.stop()
    if server is not None:
        server.stop()


class Door:
    """A live bridge's URL, with the requests each credential makes."""

    def __init__(self, url: str):
        self.url = url
        self.http = requests.Session()

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.http.get(self.url + path, timeout=10, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return self.http.post(self.url + path, timeout=10, **kwargs)

    def fleet(self, method: str, path: str, headers: dict | None = None, **kwargs) -> requests.Response:
        return self.http.request(
            method,
            self.url + path,
            timeout=10,
            headers={"Authorization": f"Bearer {FLEET}", **(headers or {})},
            **kwargs,
        )

    def read(self, path: str) -> requests.Response:
        return self.http.get(self.url + path, headers={"Authorization": f"Bearer {METRICS}"}, timeout=10)

    def execution(self, execution_id: str) -> dict:
        return self.read(f"/api/v1/executions/{execution_id}").json()

    def task(self, name: str) -> dict:
        return self.read(f"/api/v1/tasks/{name}").json()

    def metrics(self) -> dict:
        return samples(self.read("/metrics").text)


def envelope(*check_ins: dict) -> bytes:
    lines = [json.dumps({"event_id": "9ec79c33ec9942ab8353589fcb2e04dc"}).encode()]
    for payload in check_ins:
        lines += [b'{"type":"check_in"}', json.dumps(payload).encode()]
    return b"\n".join(lines) + b"\n"


def sentry_post(door: Door, project: int, body: bytes, key: str = KEY_B, **headers) -> requests.Response:
    return door.post(
        f"/api/{project}/envelope/",
        data=body,
        headers={"X-Sentry-Auth": f"Sentry sentry_key={key}, sentry_version=7", **headers},
    )


@pytest.mark.e2e
class TestAuthority:
    def test_it_refuses_a_ping_or_check_in_that_names_a_native_execution(self, door):
        native = fresh_uuid()
        beat = seed_heartbeat(native, task_name=fresh("native"), interval_seconds=5, progress={"percentage": 40})
        assert door.fleet("POST", HEARTBEAT, json=beat).status_code == 200
        check = fresh_uuid()
        assert door.fleet("PUT", f"/api/v1/tasks/{fresh('pinged')}", json={"ping_uuid": check}).status_code == 200
        before = door.execution(native)
        for action in ("start", "log", "fail", "0"):
            response = door.post(f"/ping/{check}/{action}?rid={native}", data="overwritten")
            assert (response.status_code, response.text.split(":")[0]) == (409, "conflict"), action
        cron = door.get(f"/api/7/cron/{fresh('any-slug')}/{KEY_B}/?status=error&check_in_id={native}")
        assert cron.status_code == 409 and cron.json()["field"] == "check_in_id"
        assert door.execution(native) == before  # interval, progress and status as they were
        assert door.task(beat["task_name"])["consecutive_failures"] == 0

    def test_it_refuses_a_ping_rid_of_another_tasks_run(self, door):
        first, second, run = fresh_uuid(), fresh_uuid(), fresh_uuid()
        for name, check in ((fresh("first"), first), (fresh("second"), second)):
            door.fleet("PUT", f"/api/v1/tasks/{name}", json={"ping_uuid": check})
        assert door.get(f"/ping/{first}/start?rid={run}").status_code == 200
        assert door.get(f"/ping/{second}/fail?rid={run}").status_code == 409
        assert door.execution(run)["status"] == "running"
        assert door.get(f"/ping/{first}?rid={run}").status_code == 200
        assert door.execution(run)["status"] == "completed"

    def test_it_lets_a_ping_key_reach_only_its_own_tasks(self, door):
        made_by_a, declared, declared_for_b = fresh("made-by-a"), fresh("declared"), fresh("for-b")
        assert door.get(f"/ping/key-a/{made_by_a}/start?create=1").status_code == 201
        assert door.get(f"/ping/key-a/{made_by_a}").text == "OK"
        assert door.get(f"/ping/key-b/{made_by_a}/fail").status_code == 404
        assert door.get(f"/ping/key-b/{made_by_a}/fail?create=1").status_code == 404
        door.fleet("PUT", f"/api/v1/tasks/{declared}", json={"period_seconds": 3600})
        assert door.get(f"/ping/key-a/{declared}/fail").status_code == 404
        door.fleet("PUT", f"/api/v1/tasks/{declared_for_b}", json={"ping_key": "key-b"})
        assert door.get(f"/ping/key-a/{declared_for_b}").status_code == 404
        assert door.get(f"/ping/key-b/{declared_for_b}").status_code == 200
        assert door.task(made_by_a)["consecutive_failures"] == 0 and door.task(declared)["runs"] == 0

    def test_it_keeps_a_ping_uuid_to_the_task_that_holds_it_at_every_door(self, door):
        check, holder, thief = fresh_uuid(), fresh("holder"), fresh("thief")
        assert door.fleet("PUT", f"/api/v1/tasks/{holder}", json={"ping_uuid": check}).status_code == 200
        taken = door.fleet("PUT", f"/api/v1/tasks/{thief}", json={"ping_uuid": check.upper()})
        assert (taken.status_code, taken.json()["field"]) == (409, "ping_uuid")
        token = execution_token(SECRET, "thief-run")
        inband = door.post(
            HEARTBEAT,
            headers={"Authorization": f"Bearer {token}"},
            json=seed_heartbeat("thief-run", task_name=thief, task_schedule={"ping_uuid": check}),
        )
        assert (inband.status_code, inband.json()["field"]) == (409, "task_schedule.ping_uuid")
        batch = door.fleet(
            "POST",
            HEARTBEATS,
            json=[
                seed_heartbeat("thief-batch", task_name=thief, task_schedule={"ping_uuid": check}),
                seed_heartbeat(fresh("honest")),
            ],
        ).json()
        assert [item.get("code") for item in batch["results"]] == [409, None] and batch["rejected"] == 1
        assert door.get(f"/ping/{check}").status_code == 200
        assert door.task(holder)["runs"] == 1 and door.read(f"/api/v1/executions/{'thief-run'}").status_code == 404

    def test_it_binds_a_sentry_key_to_its_project_and_a_monitor_to_the_project_that_made_it(self, door):
        slug = fresh("monitor")
        check_in = {"check_in_id": "a" * 32, "monitor_slug": slug, "status": "in_progress"}
        wrong_project = sentry_post(door, 2, envelope(check_in), key=KEY_A)
        assert (wrong_project.status_code, wrong_project.json()["field"]) == (403, "sentry_key")
        assert sentry_post(door, 1, envelope(check_in), key=KEY_A).status_code == 200
        other = sentry_post(door, 3, envelope({**check_in, "check_in_id": "b" * 32, "status": "error"}))
        assert (other.status_code, other.json()["field"]) == (409, "monitor_slug")
        native = fresh("native")
        door.fleet("POST", HEARTBEAT, json=seed_heartbeat(fresh("e"), task_name=native))
        assert sentry_post(door, 3, envelope({**check_in, "monitor_slug": native})).status_code == 409
        assert door.task(slug)["running"] == ["a" * 32] and door.task(native)["runs"] == 1

    def test_it_applies_an_envelope_whole_or_not_at_all(self, door):
        good = [{"check_in_id": f"{n}" * 32, "monitor_slug": fresh("whole"), "status": "ok"} for n in (1, 2)]
        bad = {"check_in_id": "3" * 32, "monitor_slug": fresh("whole"), "status": ["ok"]}
        for _ in range(2):  # a retry of the same envelope is refused the same way
            response = sentry_post(door, 5, envelope(*good, bad))
            assert (response.status_code, response.json()["field"]) == (400, "status")
        foreign = fresh_uuid()
        door.fleet("POST", HEARTBEAT, json=seed_heartbeat(foreign))
        response = sentry_post(door, 5, envelope(*good, {**bad, "status": "ok", "check_in_id": foreign}))
        assert (response.status_code, response.json()["field"]) == (409, "check_in_id")
        for check_in in good:
            assert door.read(f"/api/v1/tasks/{check_in['monitor_slug']}").status_code == 404
        assert sentry_post(door, 5, envelope(*good)).status_code == 200
        assert [door.task(c["monitor_slug"])["runs"] for c in good] == [1, 1]

    def test_it_takes_at_most_a_hundred_check_ins_in_one_envelope(self, door):
        prefix = fresh("storm")
        many = [{"check_in_id": f"{n:032x}", "monitor_slug": prefix, "status": "ok"} for n in range(101)]
        body = gzip.compress(envelope(*many))
        assert len(body) < 4096
        response = sentry_post(door, 6, body, **{"Content-Encoding": "gzip"})
        assert response.status_code == 413 and "100" in response.json()["detail"]
        assert door.read(f"/api/v1/tasks/{prefix}").status_code == 404
        answer = sentry_post(door, 6, envelope(*many[:100]))
        assert answer.status_code == 200, answer.text
        assert door.task(prefix)["runs"] == 100

    def test_it_counts_every_success_ping_once_without_a_run_id(self, door):
        check, name = fresh_uuid(), fresh("paired")
        door.fleet("PUT", f"/api/v1/tasks/{name}", json={"ping_uuid": check})
        threads, pairs = 16, 40
        failures: list[str] = []

        def pinger() -> None:
            with requests.Session() as http:
                for _ in range(pairs):
                    for action in ("/start", ""):
                        response = http.get(f"{door.url}/ping/{check}{action}", timeout=30)
                        if response.status_code != 200:
                            failures.append(f"{action}: {response.status_code} {response.text}")

        workers = [threading.Thread(target=pinger) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(120)
        assert failures == []
        parsed = door.metrics()
        assert total(parsed, "task_completions_total", task_name=name, outcome="success") == threads * pairs
        task = door.task(name)
        assert (task["running_count"], task["consecutive_failures"]) == (0, 0) and task["status"] != "failing"


@pytest.mark.e2e
class TestInputRules:
    @pytest.mark.parametrize(
        "send",
        [
            lambda door: sentry_post(door, 9, envelope({"monitor_slug": "s", "status": ["ok"]})),
            lambda door: sentry_post(door, 9, envelope({"monitor_slug": "s", "status": {"ok": 1}})),
            lambda door: sentry_post(
                door,
                9,
                envelope(
                    {
                        "monitor_slug": "s",
                        "status": "ok",
                        "monitor_config": {"schedule": {"type": "interval", "value": 1, "unit": ["hour"]}},
                    }
                ),
            ),
            lambda door: door.fleet(
                "PUT",
                "/api/v1/tasks/big",
                data='{"period_seconds": 1' + "0" * 400 + "}",
                headers={"Content-Type": "application/json"},
            ),
            lambda door: door.fleet(
                "POST",
                HEARTBEAT,
                data=json.dumps(seed_heartbeat("big", task_name="big")).replace(
                    '"timestamp": 1700000000', '"timestamp": 1' + "0" * 400
                ),
                headers={"Content-Type": "application/json"},
            ),
            lambda door: sentry_post(
                door, 9, envelope({"monitor_slug": "s", "status": "ok", "monitor_config": {"checkin_margin": 10**400}})
            ),
            lambda door: door.fleet(
                "PUT",
                "/api/v1/tasks/lone",
                data='{"description": "\\ud800"}',
                headers={"Content-Type": "application/json"},
            ),
            lambda door: door.fleet(
                "PUT",
                "/api/v1/tasks/lone",
                data='{"labels": {"team": "\\ud800"}}',
                headers={"Content-Type": "application/json"},
            ),
            lambda door: sentry_post(
                door, 9, b'{}\n{"type":"check_in"}\n{"monitor_slug": "\\ud800", "status": "ok"}\n'
            ),
            lambda door: sentry_post(
                door, 9, envelope({"monitor_slug": "s", "status": "ok", "monitor_config": {"owner": "team:\ud800"}})
            ),
            lambda door: sentry_post(door, 9, b"{}\n" + b'{"type":"check_in"}\n' + b"[" * 100_000 + b"]" * 100_000),
            lambda door: sentry_post(door, 9, b"[" * 100_000 + b"]" * 100_000 + b"\n"),
        ],
        ids=[
            "status-list",
            "status-object",
            "unit-list",
            "period-401-digits",
            "timestamp-401-digits",
            "sentry-margin-401-digits",
            "description-surrogate",
            "label-surrogate",
            "slug-surrogate",
            "owner-surrogate",
            "deep-check-in",
            "deep-header",
        ],
    )
    def test_it_answers_the_eight_causes_of_500_with_a_4xx(self, door, send):
        response = send(door)
        assert 400 <= response.status_code < 500, response.text

    def test_it_refuses_a_javascript_link_and_guards_its_pages(self, door):
        token = execution_token(SECRET, "js-run")
        response = door.post(
            HEARTBEAT,
            headers={"Authorization": f"Bearer {token}"},
            json=seed_heartbeat(
                "js-run", task_name="js", task_schedule={"runbook_url": "javascript:fetch('/metrics')"}
            ),
        )
        assert (response.status_code, response.json()["field"]) == (400, "task_schedule.runbook_url")
        door.fleet("PUT", "/api/v1/tasks/linked", json={"runbook_url": "https://runbooks.example/linked"})
        page = door.read("/tasks/linked")
        policy = page.headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy and "script-src" not in policy
        assert 'href="https://runbooks.example/linked"' in page.text

    def test_it_keeps_slugs_to_the_task_name_rules(self, door):
        for slug in ("_other", "a" * 129):
            response = door.get(f"/ping/key-a/{slug}?create=1")
            assert 400 <= response.status_code < 500 and "slug" in response.text
        assert door.read("/api/v1/tasks/_other").status_code == 404

    def test_it_cuts_a_ping_body_to_the_error_message_limit_and_says_so(self, door):
        check, run = fresh_uuid(), fresh_uuid()
        door.fleet("PUT", f"/api/v1/tasks/{fresh('long')}", json={"ping_uuid": check})
        response = door.post(f"/ping/{check}/fail?rid={run}", data="x" * 9000)
        assert response.status_code == 200 and "error_message was 9000 characters" in response.headers["Bridge-Warning"]
        assert len(door.execution(run)["error_message"]) == 4096

    def test_it_takes_latest_as_the_newest_open_check_in_and_records_no_head(self, door):
        slug = fresh("latest")
        cron = f"/api/9/cron/{slug}/{KEY_B}/"
        opened = door.get(cron + "?status=in_progress").json()["id"]
        assert door.http.head(door.url + cron + "?status=error", timeout=10).status_code == 405
        assert door.get(cron + "?status=ok&check_in_id=latest").status_code == 202
        assert door.execution(opened)["status"] == "completed"
        assert door.read("/api/v1/executions/latest").status_code == 404 and door.task(slug)["runs"] == 1


@pytest.mark.e2e
@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_it_keeps_task_names_for_declarations_when_pings_make_tasks(store, tmp_path):
    env = {"BRIDGE_PING_KEYS": "key-a", "BRIDGE_MAX_TASK_NAMES": "20"}
    redis = None
    if store == "redis":
        redis, env["BRIDGE_STORE_URL"] = start_redis(tmp_path / "redis")
    bridge = LiveBridge(tmp_path, workers=1, env=env).start()
    try:
        made = [requests.get(f"{bridge.url}/ping/key-a/made-{n}?create=1", timeout=10).status_code for n in range(25)]
        assert made == [201] * 18 + [429] * 7  # the last tenth of the names stays for declarations
        assert requests.put(f"{bridge.url}/api/v1/tasks/declared", json={}, timeout=10).status_code == 200
        declared = requests.get(f"{bridge.url}/api/v1/tasks/declared", timeout=10).json()
        assert declared["declared_by"] == "api"
        made_task = requests.get(f"{bridge.url}/api/v1/tasks/made-0", timeout=10).json()
        assert made_task["declared_by"] is None  # made by a ping: released like any undeclared task
    finally:
        bridge.stop()
        if redis is not None:
            redis.stop()


@pytest.mark.e2e
class TestTasksFile:
    """A bad rewrite keeps the declarations in force and says so; the reaper never stops."""

    def test_it_keeps_monitoring_through_a_bad_rewrite_and_says_so(self, tmp_path):
        tasks_file = tmp_path / "tasks.yml"
        tasks_file.write_text("tasks:\n  - name: nightly\n    period_seconds: 3600\n")
        bridge = LiveBridge(
            tmp_path,
            workers=2,
            env={
                "BRIDGE_TASKS_FILE": str(tasks_file),
                "BRIDGE_REAPER_INTERVAL_SECONDS": "0.2",
                "BRIDGE_LOG_LEVEL": "INFO",
            },
        ).start()
        try:
            metric = lambda name: total(bridge.metrics(), name)
            wait_for(lambda: metric("bridge_tasks_file_reload_success") == 1, "the file to be applied")
            loaded_at = metric("bridge_tasks_file_last_reload_timestamp_seconds")
            for bad in (
                "tasks:\n  - name: caf\xe9\n".encode("latin-1"),
                b"tasks:\n  - name: nightly\n    1: x\n",
                b"tasks:\n  - name: nightly\n    period_seconds: 1" + b"0" * 400 + b"\n",
            ):
                tasks_file.write_bytes(bad)
                wait_for(lambda: metric("bridge_tasks_file_reload_success") == 0, "the bad file to show")
                requests.post(
                    bridge.url + HEARTBEAT, json=seed_heartbeat("kept-watching", interval_seconds=1), timeout=10
                )
                wait_for(
                    lambda: (
                        requests.get(f"{bridge.url}/api/v1/executions/kept-watching", timeout=10).json()["status"]
                        == "lost"
                    ),
                    "the reaper to find a silent execution",
                )  # the reaper goes on
                assert requests.get(bridge.url + "/readyz", timeout=10).status_code == 200
                nightly = requests.get(f"{bridge.url}/api/v1/tasks/nightly", timeout=10).json()
                assert (nightly.get("declared_by"), nightly.get("period_seconds")) == ("file", 3600), nightly
                tasks_file.write_text("tasks:\n  - name: nightly\n    period_seconds: 3600\n")
                wait_for(lambda: metric("bridge_tasks_file_reload_success") == 1, "the good file again")
            assert metric("bridge_tasks_file_last_reload_timestamp_seconds") >= loaded_at
            # a worker that boots after a bad rewrite still boots, and the bridge goes on serving
            tasks_file.write_bytes(b"tasks: [\n")
            wait_for(lambda: metric("bridge_tasks_file_reload_success") == 0, "the bad file to show")
            for pid in _children(bridge.process.pid):
                os.kill(pid, signal.SIGKILL)
            time.sleep(1)
            wait_for(lambda: _ready(bridge.url), "a new worker to answer")
            assert bridge.process.poll() is None
            errors = [line for line in bridge.log().splitlines() if "BRIDGE_TASKS_FILE" in line and "ERROR" in line]
            assert any("task 'nightly': 1: is not a field" in line for line in errors), errors
        finally:
            bridge.stop()

    def test_it_stops_the_start_on_a_bad_file_with_one_line(self, tmp_path):
        tasks_file = tmp_path / "tasks.yml"
        tasks_file.write_text("tasks:\n  - name: hourly\n    runbook_url: 'javascript:alert(1)'\n")
        result = subprocess.run(
            [sys.executable, "-m", "bridge.server.cli", "serve", "--bind", f"127.0.0.1:{free_port()}"],
            env={
                "PATH": "/usr/bin:/bin",
                "BRIDGE_TASKS_FILE": str(tasks_file),
                "BRIDGE_STORE_URL": f"sqlite:///{tmp_path / 'b.db'}",
            },
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert re.fullmatch(
            r"heartbeat-bridge: BRIDGE_TASKS_FILE: .*: task 'hourly': runbook_url: must be an "
            r"http:// or https:// URL\n",
            result.stderr,
        ), result.stderr


def _children(parent: int) -> list[int]:
    """Return the ids of the processes whose parent is ``parent`` (gunicorn's workers)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            found.append(int(stat.parent.name))
    return found


def _ready(url: str) -> bool:
    try:
        return requests.get(url + "/readyz", timeout=2).status_code == 200
    except requests.RequestException:
        return False
