"""POST /api/v1/monitoring/heartbeats: many heartbeats, one result each."""

from __future__ import annotations

import pytest

from support import HEARTBEAT, samples, seed_heartbeat, total

BATCH = "/api/v1/monitoring/heartbeats"


def test_it_records_every_heartbeat_of_a_batch_and_answers_one_result_each(client):
    response = client.post(BATCH, json=[seed_heartbeat(f"e{n}", task_name="bulk") for n in range(50)])
    assert response.status_code == 200
    body = response.json
    assert (body["status"], body["accepted"], body["rejected"]) == ("ok", 50, 0)
    assert [r["execution_id"] for r in body["results"]] == [f"e{n}" for n in range(50)]
    assert {r["execution_status"] for r in body["results"]} == {"running"}
    parsed = samples(client.get("/metrics").data.decode())
    assert total(parsed, "task_heartbeats_received_total", task_name="bulk") == 50


def test_it_applies_repeats_of_one_execution_in_order(client):
    client.post(BATCH, json=[seed_heartbeat("same", progress={"percentage": p}) for p in (10, 20, 30)])
    record = client.get("/api/v1/executions/same").json
    assert (record["heartbeat_count"], record["progress"]) == (3, {"percentage": 30})


def test_it_refuses_bad_items_alone_and_counts_them(client):
    response = client.post(
        BATCH,
        json=[
            seed_heartbeat("good-1"),
            {"execution_id": "bad id"},
            seed_heartbeat("good-2", status="nope"),
            seed_heartbeat("good-3"),
        ],
    )
    body = response.json
    assert response.status_code == 200 and (body["accepted"], body["rejected"]) == (2, 2)
    assert [r["status"] for r in body["results"]] == ["ok", "error", "error", "ok"]
    assert (body["results"][1]["field"], body["results"][1]["code"]) == ("execution_id", 400)
    assert body["results"][2]["field"] == "status"
    assert client.get("/api/v1/executions/good-3").status_code == 200
    parsed = samples(client.get("/metrics").data.decode())
    assert total(parsed, "bridge_requests_rejected_total", endpoint="heartbeats", reason="invalid_field") == 2


def test_it_refuses_items_beyond_capacity_and_keeps_the_rest(app, client):
    app.extensions["heartbeat_bridge"].monitor.store.max_executions = 2
    client.post(HEARTBEAT, json=seed_heartbeat("old", task_name="t0"))
    body = client.post(
        BATCH,
        json=[seed_heartbeat("new-1", task_name="t1"), seed_heartbeat("old"), seed_heartbeat("new-2", task_name="t2")],
    ).json
    assert [r.get("code", 200) for r in body["results"]] == [200, 200, 429]
    assert body["results"][2]["field"] == "execution_id"
    assert client.get("/api/v1/executions/new-2").status_code == 404
    task_names = {
        labels
        for (name, labels) in samples(client.get("/metrics").data.decode())
        if name == "task_heartbeats_received_total"
    }
    assert frozenset({("task_name", "t2")}) not in task_names  # the refused item's name is rolled back


@pytest.mark.parametrize("body, status", [({"execution_id": "x"}, 400), ("[", 400)])
def test_it_refuses_a_body_that_is_not_an_array(client, body, status):
    kwargs = {"json": body} if isinstance(body, dict) else {"data": body, "content_type": "application/json"}
    response = client.post(BATCH, **kwargs)
    assert response.status_code == status and response.json["field"] == "body"


def test_it_refuses_too_many_items_with_413(client):
    response = client.post(BATCH, json=[seed_heartbeat(f"e{n}") for n in range(1001)])
    assert response.status_code == 413 and response.json["field"] == "body"
    assert client.get("/api/v1/executions/e0").status_code == 404
