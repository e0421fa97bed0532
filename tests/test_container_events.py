"""POST /api/v1/monitoring/container-events: the Docker agent's start, die and oom reports."""

from __future__ import annotations

import pytest

from support import COMPLETION, HEARTBEAT, samples, seed_completion, seed_heartbeat, total

EVENTS = "/api/v1/monitoring/container-events"
EID = "550e8400-e29b-41d4-a716-446655440000"
CONTAINER = "f" * 64


def report(client, event, execution_id=EID, **extra):
    body = {
        "execution_id": execution_id,
        "event": event,
        "container_id": CONTAINER,
        "container_name": f"/task-{execution_id}",
        "image": "registry.local/crawler:1.4",
    }
    body.update(extra)
    response = client.post(EVENTS, json=body)
    assert response.status_code == 200, response.json
    return response.json


def get(client, execution_id=EID):
    return client.get(f"/api/v1/executions/{execution_id}").json


def test_it_makes_an_unknown_execution_starting_and_running_on_its_first_heartbeat(client):
    assert report(client, "start")["execution_status"] == "starting"
    record = get(client)
    assert (record["container_name"], record["image"]) == (f"task-{EID}", "registry.local/crawler:1.4")
    assert record["heartbeat_count"] == 0
    client.post(HEARTBEAT, json=seed_heartbeat())
    assert get(client)["status"] == "running"


def test_it_puts_image_and_container_name_on_the_info_metric(client):
    report(client, "start")
    parsed = samples(client.get("/metrics").data.decode())
    assert (
        total(
            parsed,
            "task_execution_info",
            execution_id=EID,
            container_name=f"task-{EID}",
            image="registry.local/crawler:1.4",
            container_id=CONTAINER,
        )
        == 1
    )


def test_it_flags_a_container_that_never_reports_after_the_startup_grace(client, clock, monitor):
    report(client, "start")
    clock.advance(119)
    monitor.reap()
    assert get(client)["status"] == "starting"
    clock.advance(2)
    monitor.reap()
    record = get(client)
    assert record["status"] == "lost"
    assert "startup grace" in record["status_reason"]
    assert record["last_heartbeat_at"] is None


def test_it_fails_an_execution_whose_container_exits_without_a_completion(client):
    client.post(HEARTBEAT, json=seed_heartbeat(task_name="crawl"))
    assert report(client, "die", exit_code=3)["execution_status"] == "failed"
    record = get(client)
    assert (record["status"], record["exit_code"]) == ("failed", 3)
    assert record["error_message"] == "exited with code 3"
    assert record["end_cause"] == "container"
    parsed = samples(client.get("/metrics").data.decode())
    assert total(parsed, "task_completions_total", task_name="crawl", outcome="failure") == 1


@pytest.mark.parametrize("how", ["oom event", "oom flag"])
def test_it_says_out_of_memory_for_an_oom_kill(client, how):
    client.post(HEARTBEAT, json=seed_heartbeat())
    if how == "oom event":
        report(client, "oom")
        report(client, "die", exit_code=137)
    else:
        report(client, "die", exit_code=137, oom_killed=True)
    record = get(client)
    assert (record["status"], record["error_message"], record["oom_killed"]) == (
        "failed",
        "killed: out of memory",
        True,
    )


def test_it_completes_an_execution_that_reported_completed_and_exited_0(client):
    client.post(HEARTBEAT, json=seed_heartbeat(status="completed"))
    report(client, "die", exit_code=0)
    assert get(client)["status"] == "completed"


def test_it_changes_nothing_when_the_container_dies_after_the_completion(client):
    client.post(HEARTBEAT, json=seed_heartbeat())
    client.post(COMPLETION, json=seed_completion())
    before = get(client)
    assert report(client, "die", exit_code=0)["duplicate"] is True
    assert get(client) == before


def test_it_keeps_the_status_of_a_running_execution_on_a_repeated_start(client):
    client.post(HEARTBEAT, json=seed_heartbeat())
    report(client, "start")
    assert get(client)["status"] == "running"
    assert get(client)["image"] == "registry.local/crawler:1.4"


@pytest.mark.parametrize(
    "body, field",
    [
        ({"event": "start"}, "execution_id"),
        ({"execution_id": EID, "event": "restart"}, "event"),
        ({"execution_id": EID, "event": "die", "exit_code": "3"}, "exit_code"),
        ({"execution_id": EID, "event": "die", "oom_killed": "yes"}, "oom_killed"),
        ({"execution_id": EID, "event": "start", "image": "a\nb"}, "image"),
    ],
)
def test_it_refuses_a_wrong_field_with_400_naming_it(client, body, field):
    response = client.post(EVENTS, json=body)
    assert response.status_code == 400 and response.json["field"] == field
    parsed = samples(client.get("/metrics").data.decode())
    assert total(parsed, "bridge_requests_rejected_total", endpoint="container_event", reason="invalid_field") == 1
