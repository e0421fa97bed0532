"""GET /api/v1/executions and /api/v1/executions/<id>."""

from __future__ import annotations

import hashlib
import re

import pytest

from support import COMPLETION, HEARTBEAT, seed_completion, seed_heartbeat

CONTRACT_FIELDS = {
    "execution_id",
    "container_id",
    "task_name",
    "task_type",
    "status",
    "progress",
    "started_at",
    "last_heartbeat_at",
    "ended_at",
    "heartbeat_count",
    "interval_seconds",
    "success",
    "error_message",
    "exit_code",
    "result_data",
    "trace_id",
}


def test_it_answers_404_with_a_json_error_for_an_unknown_id(client):
    for execution_id in ("nope", "not an id", "x" * 300):
        response = client.get(f"/api/v1/executions/{execution_id}")
        assert response.status_code == 404
        assert response.json["field"] == "execution_id"


def test_it_returns_every_field_of_the_contract(client):
    client.post(HEARTBEAT, json=seed_heartbeat("job-1"))
    record = client.get("/api/v1/executions/job-1").json
    assert CONTRACT_FIELDS <= set(record)
    assert not {"gaps", "version"} & set(record)


def test_it_derives_trace_ids_from_uuids_and_hashes_other_ids(client):
    uuid = "550e8400-e29b-41d4-a716-446655440000"
    client.post(HEARTBEAT, json=seed_heartbeat(uuid))
    client.post(HEARTBEAT, json=seed_heartbeat("job-1"))
    assert client.get(f"/api/v1/executions/{uuid}").json["trace_id"] == uuid.replace("-", "")
    trace_id = client.get("/api/v1/executions/job-1").json["trace_id"]
    assert trace_id == hashlib.sha256(b"job-1").hexdigest()[:32]
    assert re.fullmatch("[0-9a-f]{32}", trace_id)


def test_it_filters_by_status_and_task_name(client):
    client.post(HEARTBEAT, json=seed_heartbeat("a", task_name="etl"))
    client.post(HEARTBEAT, json=seed_heartbeat("b", task_name="crawl"))
    client.post(COMPLETION, json=seed_completion("c", task_name="etl"))
    ids = lambda **q: [e["execution_id"] for e in client.get("/api/v1/executions", query_string=q).json["executions"]]
    assert ids() == ["a", "b", "c"]
    assert ids(status="running") == ["a", "b"]
    assert ids(task_name="etl") == ["a", "c"]
    assert ids(status="completed", task_name="etl") == ["c"]
    assert ids(status="lost") == []


def test_it_pages_with_after(client):
    for n in range(5):
        client.post(HEARTBEAT, json=seed_heartbeat(f"e{n}"))
    first = client.get("/api/v1/executions?limit=2").json
    assert [e["execution_id"] for e in first["executions"]] == ["e0", "e1"]
    assert first["next_after"] == "e1"
    rest = client.get("/api/v1/executions?limit=10&after=e1").json
    assert [e["execution_id"] for e in rest["executions"]] == ["e2", "e3", "e4"]
    assert rest["next_after"] is None


def test_it_refuses_a_bad_filter_with_400(client):
    assert client.get("/api/v1/executions?status=done").json["field"] == "status"
    assert client.get("/api/v1/executions?limit=0").json["field"] == "limit"
    assert client.get("/api/v1/executions?limit=abc").status_code == 400


@pytest.mark.parametrize("limit", ["%C2%B2", "%EF%BC%91%EF%BC%92", "1e2", "-1", "+5", " 5", "9" * 5000, "1001"])
def test_it_refuses_a_limit_that_is_not_ascii_digits_from_1_to_1000(client, limit):
    response = client.get(f"/api/v1/executions?limit={limit}")
    assert (response.status_code, response.json["field"]) == (400, "limit")


def test_it_forgets_a_lost_execution_on_delete_and_refuses_a_running_one(client, clock, monitor):
    client.post(HEARTBEAT, json=seed_heartbeat("gone-1", task_name="crawl"))
    client.post(HEARTBEAT, json=seed_heartbeat("live-1", task_name="crawl"))
    clock.advance(80)
    client.post(HEARTBEAT, json=seed_heartbeat("live-1", task_name="crawl"))
    clock.advance(20)
    monitor.reap()
    assert client.get("/api/v1/executions/gone-1").json["status"] == "lost"
    lost_before = client.get("/metrics").data.decode().count('execution_id="gone-1"')
    assert lost_before > 0

    answer = client.delete("/api/v1/executions/gone-1")
    assert (answer.status_code, answer.json["execution_status"], answer.json["forgotten"]) == (200, "lost", True)
    assert client.get("/api/v1/executions/gone-1").status_code == 404
    scrape = client.get("/metrics").data.decode()
    assert 'execution_id="gone-1"' not in scrape
    assert 'task_executions_lost_total{task_name="crawl"} 1.0' in scrape  # history stays
    assert client.delete("/api/v1/executions/gone-1").status_code == 404
    refused = client.delete("/api/v1/executions/live-1")
    assert (refused.status_code, refused.json["field"]) == (409, "execution_id")
    assert client.get("/api/v1/executions/live-1").json["status"] == "running"
