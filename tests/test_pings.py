"""Healthchecks pings: the answers Healthchecks gives, runitor's exact requests, the curl lines of its docs."""

from __future__ import annotations

import subprocess

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support import require_binary, samples, total

CHECK = "5f6a3b2c-1d2e-4f5a-8b9c-0d1e2f3a4b5c"
RID = "6b1e7c2a-0000-4000-8000-000000000001"


@pytest.fixture
def settings_overrides():
    return {"ping_keys": ("key-1",), "ping_body_bytes": 100}


@pytest.fixture
def declared(client):
    assert (
        client.put(
            "/api/v1/tasks/backup", json={"ping_uuid": CHECK.upper(), "period_seconds": 3600, "failure_threshold": 2}
        ).status_code
        == 200
    )
    return client


def task(client, name="backup") -> dict:
    return client.get(f"/api/v1/tasks/{name}").json


def execution(client, execution_id) -> dict:
    return client.get(f"/api/v1/executions/{execution_id}").json


def rejected(client, reason) -> float:
    return total(
        samples(client.get("/metrics").data.decode()), "bridge_requests_rejected_total", endpoint="ping", reason=reason
    )


def test_it_answers_ok_in_plain_text_with_the_body_limit(declared):
    for method in ("get", "head", "post"):
        response = getattr(declared, method)(f"/ping/{CHECK}")
        assert response.status_code == 200 and response.headers["Ping-Body-Limit"] == "100"
        assert response.content_type.startswith("text/plain") and response.data == (b"" if method == "head" else b"OK")
    assert task(declared)["runs"] == 3 and task(declared)["status"] == "up"


@pytest.mark.parametrize(
    "url, status, text, reason",
    [
        ("/ping/00000000-0000-4000-8000-000000000000", 404, b"not found", "not_found"),
        (f"/ping/{CHECK}/256", 400, b"invalid url format", "invalid_field"),
        (f"/ping/{CHECK}/restart", 404, b"not found", "not_found"),
        (
            f"/ping/{CHECK}?rid=not-a-uuid",
            400,
            b"invalid uuid format: rid must be a UUID (8-4-4-4-12 hex digits)",
            "invalid_field",
        ),
        ("/ping/key-1/no-such-task", 404, b"not found", "not_found"),  # a slug with no task
        ("/ping/key-2/backup?create=1", 404, b"not found", "not_found"),  # not a ping key
        ("/ping/key-1/Backup", 400, b"invalid url format", "invalid_field"),
    ],
)
def test_it_refuses_as_healthchecks_does_and_counts_it(declared, url, status, text, reason):
    response = declared.get(url)
    assert (response.status_code, response.data) == (status, text)
    assert rejected(declared, reason) == 1
    assert task(declared)["runs"] == 0


def test_it_makes_a_run_of_a_start_and_its_exit_status_with_the_output_as_the_error(declared):
    assert declared.get(f"/ping/{CHECK}/start?rid={RID}").status_code == 200
    assert task(declared)["running_count"] == 1 and execution(declared, RID)["task_name"] == "backup"
    output = "x" * 150 + "\ndisk full"
    assert declared.post(f"/ping/{CHECK}/2?rid={RID}", data=output).data == b"OK"
    run = execution(declared, RID)
    assert (run["status"], run["exit_code"], run["error_message"]) == ("failed", 2, "x" * 100)  # the first 100 bytes
    declared.post(f"/ping/{CHECK}/fail", data="again")  # no start before it: a run of its own
    assert task(declared)["status"] == "failing" and task(declared)["consecutive_failures"] == 2
    parsed = samples(declared.get("/metrics").data.decode())
    assert total(parsed, "task_status", task_name="backup", status="failing") == 1
    assert total(parsed, "task_completions_total", task_name="backup", outcome="failure") == 2


def test_it_closes_the_run_a_start_without_a_run_id_opened(declared):
    declared.get(f"/ping/{CHECK}/start")
    [opened] = task(declared)["running"]
    assert opened.startswith("hc.")
    declared.post(f"/ping/{CHECK}/log", data="halfway")
    assert execution(declared, opened)["progress"] == {"log": "halfway"}
    declared.get(f"/ping/{CHECK}/0")
    assert execution(declared, opened)["status"] == "completed"
    assert (task(declared)["runs"], task(declared)["running"]) == (1, [])
    assert declared.post(f"/ping/{CHECK}/log", data="after").data == b"OK"  # no open run: nothing to log on
    assert task(declared)["runs"] == 1


def test_it_gives_a_started_run_its_runtime_budget_not_a_heartbeat_window(declared, clock, monitor):
    declared.put("/api/v1/tasks/backup", json={"ping_uuid": CHECK, "max_runtime_seconds": 7200})
    declared.get(f"/ping/{CHECK}/start?rid={RID}")
    clock.advance(7199)  # pings send no heartbeats: ninety silent seconds are not a loss
    monitor.reap()
    assert execution(declared, RID)["status"] == "running"
    clock.advance(2)
    monitor.reap()
    assert execution(declared, RID)["status"] == "lost" and task(declared)["consecutive_failures"] == 1


def test_it_gives_an_undeclared_budget_an_hour(declared, clock, monitor):
    declared.get(f"/ping/{CHECK}/start?rid={RID}")
    clock.advance(3599)
    monitor.reap()
    declared.post(f"/ping/{CHECK}/log?rid={RID}", data="still copying")  # a sign of life
    clock.advance(3599)
    monitor.reap()
    assert execution(declared, RID)["status"] == "running"
    clock.advance(2)
    monitor.reap()
    assert execution(declared, RID)["status"] == "lost"


def test_it_creates_a_task_from_a_slug_with_create(client):
    response = client.post("/ping/key-1/nightly-sync/start?create=1")
    assert (response.status_code, response.data) == (201, b"Created")
    assert (task(client, "nightly-sync")["status"], task(client, "nightly-sync")["running_count"]) == ("new", 1)
    assert client.get("/ping/key-1/nightly-sync").data == b"OK"
    assert task(client, "nightly-sync")["runs"] == 1


def test_it_finds_a_pings_task_by_an_index_not_by_reading_every_task(declared, monitor, monkeypatch):
    def every_task():
        raise AssertionError("a ping read every task")

    monkeypatch.setattr(monitor.store, "tasks", every_task)
    assert declared.get("/ping/00000000-0000-4000-8000-000000000000").status_code == 404
    assert declared.get(f"/ping/{CHECK}").status_code == 200


@given(
    path=st.lists(
        st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/?#%"), max_size=40),
        min_size=1,
        max_size=4,
    ),
    query=st.dictionaries(st.sampled_from(["rid", "create", "x"]), st.text(max_size=40), max_size=3),
    body=st.binary(max_size=300),
    method=st.sampled_from(["get", "post", "head"]),
)
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_it_never_answers_500_to_any_ping(declared, path, query, body, method):
    response = getattr(declared, method)(
        "/ping/" + "/".join(path), query_string=query, **({"data": body} if method == "post" else {})
    )
    assert response.status_code < 500, (path, query, response.data)


class TestLive:
    @pytest.fixture
    def bridge(self, live_bridge):
        bridge = live_bridge(env={"BRIDGE_PING_BODY_BYTES": "64"})
        requests.put(bridge.url + "/api/v1/tasks/backup", json={"ping_uuid": CHECK}, timeout=10)
        return bridge

    def test_it_takes_runitors_requests(self, bridge):
        # runitor: POST <base>/<uuid>/start?rid=<run id>, text/plain, no body; it reads Ping-Body-Limit
        # from the answer and sends at most that much of the output's tail with the exit status.
        headers = {"Content-Type": "text/plain", "User-Agent": "runitor/v1.3.0-build.4 (+https://bdd.fi/x/runitor)"}
        start = requests.post(f"{bridge.url}/ping/{CHECK}/start?rid={RID}", headers=headers, timeout=10)
        assert (start.status_code, start.text, start.headers["Ping-Body-Limit"]) == (200, "OK", "64")
        output = "".join(f"line {n}\n" for n in range(100))
        tail = output.encode()[-int(start.headers["Ping-Body-Limit"]) :]
        end = requests.post(f"{bridge.url}/ping/{CHECK}/3?rid={RID}", data=tail, headers=headers, timeout=10)
        assert (end.status_code, end.text) == (200, "OK")
        run = requests.get(f"{bridge.url}/api/v1/executions/{RID}", timeout=10).json()
        assert (run["status"], run["exit_code"], run["task_name"]) == ("failed", 3, "backup")
        assert run["error_message"] == tail.decode().strip() and run["error_message"].endswith("line 99")

    def test_it_takes_the_curl_lines_of_the_healthchecks_docs(self, bridge):
        curl = require_binary("curl")
        url = f"{bridge.url}/ping/{CHECK}"
        for argv in (
            [curl, "-fsS", "-m", "10", "--retry", "5", "-o", "/dev/null", url],
            [curl, "-fsS", "-m", "10", "--retry", "5", "-I", url],
            [curl, "-fsS", "-m", "10", "--retry", "5", "-o", "/dev/null", f"{url}/start"],
            [curl, "-fsS", "-m", "10", "--retry", "5", "--data-raw", "backed up 3 GB", f"{url}/log"],
            [curl, "-fsS", "-m", "10", "--retry", "5", "-o", "/dev/null", "--data-raw", "no space left", f"{url}/fail"],
        ):
            result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            assert result.returncode == 0, (argv, result.stderr)
        backup = requests.get(f"{bridge.url}/api/v1/tasks/backup", timeout=10).json()
        assert backup["runs"] == 3 and backup["consecutive_failures"] == 1  # GET, HEAD, and start..fail
        failed, *earlier = backup["last_executions"]
        assert [run["status"] for run in earlier] == ["completed", "completed"] and failed["status"] == "failed"
        run = requests.get(f"{bridge.url}/api/v1/executions/{failed['execution_id']}", timeout=10).json()
        assert (run["error_message"], run["progress"]) == ("no space left", {"log": "backed up 3 GB"})
