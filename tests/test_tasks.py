"""Tasks over HTTP: declarations through the API, the file and a heartbeat; runs; metrics."""

from __future__ import annotations

import pytest

from bridge.core.declarations import DeclarationError

from support import COMPLETION, HEARTBEAT, samples, seed_heartbeat, total

TOKEN = "fleet-token-0123456789"


def get_task(client, name="nightly-crawl") -> dict:
    response = client.get(f"/api/v1/tasks/{name}")
    assert response.status_code == 200, response.json
    return response.json


def metrics(client) -> dict:
    return samples(client.get("/metrics").data.decode())


def status(client, name="nightly-crawl") -> str:
    found = {
        dict(labels)["status"]
        for (metric, labels), value in metrics(client).items()
        if metric == "task_status" and dict(labels)["task_name"] == name and value == 1
    }
    assert len(found) == 1, found
    return found.pop()


def run(client, clock, execution_id, task="nightly-crawl", success=True, seconds=60.0, **heartbeat):
    assert client.post(HEARTBEAT, json=seed_heartbeat(execution_id, task_name=task, **heartbeat)).status_code == 200
    clock.advance(seconds)
    assert client.post(COMPLETION, json={"execution_id": execution_id, "success": success}).status_code == 200


def test_it_declares_a_task_and_expects_its_first_run(client, clock):
    declaration = {
        "schedule": "0 2 * * *",
        "timezone": "Europe/Berlin",
        "start_grace_seconds": 600,
        "labels": {"team": "crawling"},
        "description": "the news sites",
        "failure_threshold": 2,
    }
    response = client.put("/api/v1/tasks/nightly-crawl", json=declaration)
    assert response.status_code == 200, response.json
    task = get_task(client)
    assert (task["status"], task["declared_by"], task["schedule"], task["timezone"]) == (
        "new",
        "api",
        "0 2 * * *",
        "Europe/Berlin",
    )
    assert task["next_run_deadline_at"] == task["next_run_at"] + 600 > clock.now
    assert task["labels"] == {"team": "crawling"} and task["failure_threshold"] == 2
    assert client.put("/api/v1/tasks/nightly-crawl", json=declaration).json == task  # the same again: unchanged
    assert [t["task_name"] for t in client.get("/api/v1/tasks").json["tasks"]] == ["nightly-crawl"]


@pytest.mark.parametrize(
    "body, field",
    [
        ({"schedule": "0 25 * * *"}, "schedule"),
        ({"schedule": "0 2 * * *", "timezone": "Europe/Atlantis"}, "timezone"),
        ({"period_seconds": "daily"}, "period_seconds"),
        ({"owner": "me"}, "owner"),
    ],
)
def test_it_refuses_a_bad_declaration_naming_the_field(client, body, field):
    response = client.put("/api/v1/tasks/nightly-crawl", json=body)
    assert response.status_code == 400 and response.json["field"] == field
    assert client.get("/api/v1/tasks/nightly-crawl").status_code == 404
    assert total(metrics(client), "bridge_requests_rejected_total", endpoint="tasks", reason="invalid_field") == 1


def test_it_goes_missed_when_no_run_starts_within_the_grace_and_counts_it_once(client, clock, monitor):
    client.put("/api/v1/tasks/hourly-etl", json={"period_seconds": 3600, "start_grace_seconds": 300})
    clock.advance(3600 + 299)
    monitor.reap()
    assert status(client, "hourly-etl") == "late"
    clock.advance(1)
    monitor.reap()
    monitor.reap()
    assert status(client, "hourly-etl") == "missed"
    assert total(metrics(client), "task_runs_missed_total", task_name="hourly-etl") == 1
    run(client, clock, "late-run", task="hourly-etl")
    assert status(client, "hourly-etl") == "up"
    assert get_task(client, "hourly-etl")["last_executions"][0]["execution_id"] == "late-run"


def test_it_follows_its_runs_to_failing_and_back(client, clock):
    client.put("/api/v1/tasks/nightly-crawl", json={"failure_threshold": 2})
    run(client, clock, "r1", success=False)
    assert status(client) == "up" and get_task(client)["consecutive_failures"] == 1  # below the threshold
    run(client, clock, "r2", success=False)
    assert status(client) == "failing"
    parsed = metrics(client)
    assert total(parsed, "task_consecutive_failures", task_name="nightly-crawl") == 2
    assert total(parsed, "task_failure_threshold", task_name="nightly-crawl") == 2
    assert total(parsed, "task_last_failure_timestamp_seconds", task_name="nightly-crawl") == clock.now
    client.post(HEARTBEAT, json=seed_heartbeat("r3", task_name="nightly-crawl"))
    assert status(client) == "failing" and get_task(client)["running"] == ["r3"]  # a run hides nothing
    clock.advance(10)
    client.post(COMPLETION, json={"execution_id": "r3", "success": True})
    assert status(client) == "up" and get_task(client)["consecutive_failures"] == 0
    assert total(metrics(client), "task_last_success_timestamp_seconds", task_name="nightly-crawl") == clock.now


def test_it_knows_a_task_from_its_executions_alone_and_after_its_declaration_is_withdrawn(client, clock):
    run(client, clock, "r1", task="adhoc-report")
    task = get_task(client, "adhoc-report")
    assert (task["declared_by"], task["status"], task["runs"]) == (None, "up", 1)
    assert client.delete("/api/v1/tasks/adhoc-report").status_code == 404  # nothing the API declared
    client.put("/api/v1/tasks/adhoc-report", json={"period_seconds": 600})
    assert get_task(client, "adhoc-report")["declared_by"] == "api"
    response = client.delete("/api/v1/tasks/adhoc-report")
    assert response.status_code == 200 and response.json["declared_by"] is None
    assert get_task(client, "adhoc-report")["last_executions"][0]["execution_id"] == "r1"


def test_it_takes_a_declaration_from_a_first_heartbeat_but_the_api_wins(client, clock):
    body = seed_heartbeat("r1", task_name="nightly-crawl", task_schedule={"schedule": "0 3 * * *"})
    assert client.post(HEARTBEAT, json=body).status_code == 200
    assert (get_task(client)["declared_by"], get_task(client)["schedule"]) == ("inband", "0 3 * * *")
    client.put("/api/v1/tasks/nightly-crawl", json={"schedule": "0 2 * * *"})
    body = seed_heartbeat("r2", task_name="nightly-crawl", task_schedule={"schedule": "0 4 * * *"})
    client.post(HEARTBEAT, json=body)
    assert (get_task(client)["declared_by"], get_task(client)["schedule"]) == ("api", "0 2 * * *")
    refused = client.post(HEARTBEAT, json=seed_heartbeat("r3", task_schedule={"schedule": "0 4 * * *"}))
    assert refused.status_code == 400 and refused.json["field"] == "task_name"
    bad = client.post(HEARTBEAT, json=seed_heartbeat("r4", task_name="x", task_schedule={"schedule": "daily"}))
    assert bad.status_code == 400 and bad.json["field"] == "task_schedule.schedule"


def test_it_counts_an_announced_execution_as_a_run_and_its_silence_as_a_failure(client, clock, monitor):
    response = client.put(
        "/api/v1/executions/seed-run-1",
        json={"task_name": "nightly-crawl", "task_type": "crawler", "labels": {"team": "crawling"}},
    )
    assert response.status_code == 200 and response.json["execution_status"] == "starting"
    task = get_task(client)
    assert (task["status"], task["running"], task["task_type"]) == ("new", ["seed-run-1"], "crawler")
    client.post(HEARTBEAT, json=seed_heartbeat("seed-run-1"))  # the seed's client sends no task_name
    execution = client.get("/api/v1/executions/seed-run-1").json
    assert (execution["task_name"], execution["status"]) == ("nightly-crawl", "running")
    assert get_task(client)["runs"] == 1
    clock.advance(3 * 30)
    monitor.reap()
    assert status(client) == "failing" and get_task(client)["consecutive_failures"] == 1
    assert client.put("/api/v1/executions/seed-run-1", json={"task_name": "other"}).json["execution_status"] == "lost"


def test_it_keeps_a_task_declared_in_the_file_from_the_api(tmp_path, clock):
    from bridge.service.config import load_settings
    from bridge.web import create_app

    tasks_file = tmp_path / "tasks.yml"
    tasks_file.write_text("tasks:\n  - name: nightly-crawl\n    schedule: '0 2 * * *'\n")
    settings = load_settings(
        {}, store_url=f"sqlite:///{tmp_path / 'b.db'}", tasks_file=str(tasks_file), reaper_interval_seconds=3600
    )
    app = create_app({"SETTINGS": settings, "CLOCK": clock, "TESTING": True})
    client = app.test_client()
    monitor = app.extensions["heartbeat_bridge"].monitor
    monitor.reap()
    assert get_task(client)["declared_by"] == "file"
    response = client.put("/api/v1/tasks/nightly-crawl", json={"schedule": "0 5 * * *"})
    assert response.status_code == 409 and response.json["field"] == "task_name"
    tasks_file.write_text("tasks:\n  - name: hourly-etl\n    period_seconds: 3600\n")
    monitor.reap()  # the file changed: it is read once it held still for a round
    assert get_task(client)["declared_by"] == "file"
    monitor.reap()
    assert client.get("/api/v1/tasks/nightly-crawl").status_code == 404  # undeclared, and it never ran
    assert get_task(client, "hourly-etl")["declared_by"] == "file"
    tasks_file.write_text("tasks:\n  - name: hourly-etl\n    period_seconds: -1\n")
    monitor.reap()
    monitor.reap()  # a broken file changes nothing
    assert total(metrics(client), "bridge_tasks_file_reload_success") == 0
    assert get_task(client, "hourly-etl")["period_seconds"] == 3600


class TestWithTokens:
    @pytest.fixture
    def settings_overrides(self):
        return {
            "auth_tokens": (TOKEN,),
            "execution_token_secret": "execution-secret-0123456789",
            "metrics_token": "metrics-token-0123456789",
        }

    def test_it_declares_with_a_fleet_token_only(self, client):
        body = {"period_seconds": 60}
        assert client.put("/api/v1/tasks/t", json=body).status_code == 401
        from bridge.web.auth import execution_token

        execution = execution_token("execution-secret-0123456789", "t")
        assert (
            client.put("/api/v1/tasks/t", json=body, headers={"Authorization": f"Bearer {execution}"}).status_code
            == 403
        )
        assert client.put("/api/v1/tasks/t", json=body, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert client.get("/api/v1/tasks/t").status_code == 401
        assert (
            client.get("/api/v1/tasks/t", headers={"Authorization": "Bearer metrics-token-0123456789"}).json[
                "period_seconds"
            ]
            == 60
        )


class TestAtTheTaskNameLimit:
    @pytest.fixture
    def settings_overrides(self):
        return {"max_task_names": 1, "metric_labels": ("team",)}

    def test_it_refuses_a_new_task_past_the_limit(self, client):
        assert client.put("/api/v1/tasks/first", json={"labels": {"team": "a"}}).status_code == 200
        response = client.put("/api/v1/tasks/second", json={})
        assert response.status_code == 429
        assert client.get("/api/v1/tasks/second").status_code == 404

    def test_it_exports_the_allowlisted_labels(self, client):
        client.put("/api/v1/tasks/first", json={"labels": {"team": "data", "owner": "ann"}})
        client.post(HEARTBEAT, json=seed_heartbeat("e1", task_name="first", labels={"team": "web", "cost": "9"}))
        parsed = metrics(client)
        assert total(parsed, "task_info", task_name="first", label_team="data", schedule="") == 1
        assert not [labels for (name, labels) in parsed if name == "task_info" and ("label_owner", "ann") in labels]
        assert total(parsed, "task_execution_info", execution_id="e1", label_team="web") == 1


def test_it_reads_a_changed_tasks_file_once_it_holds_still(tmp_path):
    from bridge.service.tasks_file import TasksFile

    path = tmp_path / "tasks.yml"
    path.write_text("tasks:\n  - name: nightly\n    period_seconds: 3600\n")
    tasks_file = TasksFile(str(path))
    assert list(tasks_file.read_if_changed() or {}) == ["nightly"]  # the first look reads
    assert tasks_file.read_if_changed() is None
    path.write_bytes(b"")  # caught between an editor's truncation and its write
    assert tasks_file.read_if_changed() is None
    path.write_text("tasks:\n  - name: nightly\n    period_seconds: 3600\n  - name: hourly\n    period_seconds: 60\n")
    assert tasks_file.read_if_changed() is None  # changed again since the last look
    assert list(tasks_file.read_if_changed() or {}) == ["nightly", "hourly"]
    assert tasks_file.read_if_changed() is None
    path.write_bytes(b"")  # emptied on purpose, and left so
    assert tasks_file.read_if_changed() is None
    assert tasks_file.read_if_changed() == {}
    path.unlink()
    assert tasks_file.read_if_changed() is None
    with pytest.raises(DeclarationError, match="cannot be read"):
        tasks_file.read_if_changed()
    assert tasks_file.read_if_changed() is None  # said once
