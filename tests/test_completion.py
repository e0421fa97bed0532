"""POST /api/v1/monitoring/completion: final, idempotent, counted once."""

from __future__ import annotations

import pytest

from support import COMPLETION, HEARTBEAT, samples, seed_completion, seed_heartbeat, total

EID = "550e8400-e29b-41d4-a716-446655440000"


def get(client, execution_id=EID) -> dict:
    return client.get(f"/api/v1/executions/{execution_id}").json


def test_it_completes_an_execution_with_the_seed_payload(client, clock):
    client.post(HEARTBEAT, json=seed_heartbeat(task_name="crawl"))
    clock.advance(150)
    result = {"processed_records": 1000, "output_files": ["result.json", "summary.txt"]}
    response = client.post(COMPLETION, json=seed_completion(result_data=result))
    assert response.status_code == 200
    assert response.json == {"status": "ok", "execution_id": EID, "duplicate": False, "execution_status": "completed"}
    record = get(client)
    assert (record["status"], record["success"], record["ended_at"]) == ("completed", True, clock.now)
    assert record["result_data"] == result
    parsed = samples(client.get("/metrics").data.decode())
    assert total(parsed, "task_completions_total", task_name="crawl", outcome="success") == 1
    assert total(parsed, "task_execution_duration_seconds_count", task_name="crawl") == 1
    assert total(parsed, "task_execution_duration_seconds_sum", task_name="crawl") == 150
    assert total(parsed, "task_execution_duration_seconds_bucket", task_name="crawl", le="120") == 0
    assert total(parsed, "task_execution_duration_seconds_bucket", task_name="crawl", le="300") == 1


def test_it_fails_an_execution_with_its_error_and_exit_code(client):
    client.post(HEARTBEAT, json=seed_heartbeat())
    client.post(COMPLETION, json=seed_completion(success=False, error_message="模拟任务执行错误", exit_code=3))
    record = get(client)
    assert (record["status"], record["success"]) == ("failed", False)
    assert (record["error_message"], record["exit_code"]) == ("模拟任务执行错误", 3)


def test_it_answers_a_repeated_completion_as_a_duplicate_and_changes_nothing(client, clock):
    client.post(HEARTBEAT, json=seed_heartbeat())
    client.post(COMPLETION, json=seed_completion(result_data={"n": 1}))
    before = get(client)
    clock.advance(10)
    again = client.post(COMPLETION, json=seed_completion(success=False, error_message="late"))
    assert again.status_code == 200
    assert again.json["status"] == "ok" and again.json["duplicate"] is True
    assert get(client) == before
    parsed = samples(client.get("/metrics").data.decode())
    assert total(parsed, "task_completions_total") == 1


def test_it_completes_an_execution_it_never_heard_a_heartbeat_from(client, clock):
    response = client.post(COMPLETION, json=seed_completion("quick-job"))
    assert response.json["execution_status"] == "completed"
    record = get(client, "quick-job")
    assert record["heartbeat_count"] == 0
    assert record["started_at"] == record["ended_at"] == clock.now


def test_it_ends_a_lost_execution_on_a_late_completion(client, clock, monitor):
    client.post(HEARTBEAT, json=seed_heartbeat())
    clock.advance(200)
    monitor.reap()
    assert get(client)["status"] == "lost"
    client.post(COMPLETION, json=seed_completion(success=False))
    record = get(client)
    assert (record["status"], record["deadline_at"]) == ("failed", None)
    assert record["expires_at"] == clock.now + 3600


def test_it_cuts_an_overlong_error_message_instead_of_refusing_it(client):
    response = client.post(COMPLETION, json=seed_completion(success=False, error_message="e" * 10_000))
    assert response.status_code == 200
    message = get(client)["error_message"]
    assert len(message) == 4096 and message.endswith("…")


@pytest.mark.parametrize(
    "body, field",
    [
        ({"execution_id": EID}, "success"),
        ({"execution_id": EID, "success": "true"}, "success"),
        ({"execution_id": EID, "success": 1}, "success"),
        ({"success": True}, "execution_id"),
        ({"execution_id": EID, "success": True, "result_data": "done"}, "result_data"),
        ({"execution_id": EID, "success": False, "error_message": {"e": 1}}, "error_message"),
        ({"execution_id": EID, "success": False, "exit_code": "3"}, "exit_code"),
        ({"execution_id": EID, "success": False, "exit_code": 2**40}, "exit_code"),
    ],
)
def test_it_refuses_a_wrong_field_with_400_naming_it(client, body, field):
    response = client.post(COMPLETION, json=body)
    assert response.status_code == 400
    assert response.json["field"] == field
    assert client.get(f"/api/v1/executions/{EID}").status_code == 404


@pytest.mark.parametrize(
    "result_data, said",
    [
        ({"x": "y" * 20_000}, "more than 16384"),
        ({"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}}, "nested deeper than 8"),
    ],
)
def test_it_keeps_a_completion_whose_result_data_is_too_large_and_says_it_dropped_it(client, result_data, said):
    response = client.post(
        COMPLETION, json=seed_completion(success=False, result_data=result_data, error_message="boom")
    )
    assert response.status_code == 200
    assert response.json["execution_status"] == "failed"
    [warning] = response.json["warnings"]
    assert said in warning and "result_data" in warning and warning.endswith("dropped")
    record = client.get(f"/api/v1/executions/{EID}").json
    assert (record["status"], record["result_data"], record["error_message"]) == ("failed", None, "boom")
    parsed = samples(client.get("/metrics").data.decode())
    assert total(parsed, "bridge_requests_rejected_total", endpoint="completion") == 0
    assert total(parsed, "task_completions_total", outcome="failure") == 1


def test_it_says_it_cut_an_overlong_error_message(client):
    response = client.post(COMPLETION, json=seed_completion(success=False, error_message="e" * 5000))
    assert response.json["warnings"] == ["error_message was 5000 characters: cut to 4096"]
    assert len(client.get(f"/api/v1/executions/{EID}").json["error_message"]) == 4096


def test_it_refuses_the_reserved_task_name_other(client):
    response = client.post(COMPLETION, json=seed_completion(task_name="_other"))
    assert (response.status_code, response.json["field"]) == (400, "task_name")
    assert client.get(f"/api/v1/executions/{EID}").status_code == 404
