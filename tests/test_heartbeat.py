"""POST /api/v1/monitoring/heartbeat: the state machine and input checks, over HTTP."""

from __future__ import annotations

import json

import pytest

from bridge.store import StoreUnavailable

from support import COMPLETION, HEARTBEAT, samples, seed_completion, seed_heartbeat, total

EID = "550e8400-e29b-41d4-a716-446655440000"


def get(client, execution_id=EID) -> dict:
    response = client.get(f"/api/v1/executions/{execution_id}")
    assert response.status_code == 200, response.json
    return response.json


def metric(client, name, **labels) -> float:
    return total(samples(client.get("/metrics").data.decode()), name, **labels)


def test_it_accepts_the_seed_troubleshooting_call(client):
    response = client.post(
        HEARTBEAT,
        data='{"execution_id":"test","container_id":"test","status":"running"}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 200
    assert response.json["status"] == "ok"
    assert get(client, "test")["status"] == "running"


def test_it_records_the_seed_payload(client, clock):
    body = seed_heartbeat(progress={"stage": "数据处理中", "current_step": 3, "total_steps": 10, "percentage": 30.0})
    response = client.post(HEARTBEAT, json=body)
    assert response.json == {
        "status": "ok",
        "execution_id": EID,
        "execution_status": "running",
        "interval_seconds": 30.0,
    }
    record = get(client)
    assert record["container_id"] == f"task-{EID}"
    assert record["progress"]["stage"] == "数据处理中"
    assert record["progress_ratio"] == pytest.approx(0.3)
    assert record["heartbeat_count"] == 1
    assert record["started_at"] == record["last_heartbeat_at"] == clock.now
    assert record["client_timestamp"] == 1_700_000_000


@pytest.mark.parametrize("number", [2**53 + 1, 2**63 - 1, -(2**63), 2**64, -(2**63) - 1, 10**30, -(10**40)])
def test_it_keeps_integers_of_any_size_exactly(client, number):
    # JSON numbers in a progress document come back as sent, however long: through the
    # request's parser, the stored record and the answer (orjson alone would round some).
    body = json.dumps(seed_heartbeat(progress={"rows": number, "stage": "load"}))
    assert client.post(HEARTBEAT, data=body, content_type="application/json").status_code == 200
    assert get(client)["progress"] == {"rows": number, "stage": "load"}
    assert json.loads(client.get(f"/api/v1/executions/{EID}").data)["progress"]["rows"] == number


def test_it_normalises_uuids_to_lower_case(client):
    client.post(HEARTBEAT, json=seed_heartbeat(EID.upper()))
    client.post(HEARTBEAT, json=seed_heartbeat(EID))
    assert get(client)["heartbeat_count"] == 2
    assert get(client, EID.upper())["execution_id"] == EID


def test_it_takes_the_optional_extensions(client):
    client.post(
        HEARTBEAT,
        json=seed_heartbeat(
            task_name="示例数据采集任务",
            task_type="crawler",
            interval_seconds=10,
            max_runtime_seconds=600,
            labels={"team": "data"},
            traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
    )
    record = get(client)
    assert record["task_name"] == "示例数据采集任务"
    assert record["task_type"] == "crawler"
    assert (record["interval_seconds"], record["interval_source"]) == (10, "reported")
    assert record["max_runtime_seconds"] == 600
    assert record["labels"] == {"team": "data"}
    assert record["trace_id"] == "0af7651916cd43dd8448eb211c80319c"


def test_it_uses_server_time_for_liveness_not_the_client_timestamp(client, clock, monitor):
    client.post(HEARTBEAT, json=seed_heartbeat(timestamp=1))  # a client clock far behind
    clock.advance(60)
    monitor.reap()
    assert get(client)["status"] == "running"


def test_it_marks_a_silent_execution_lost_after_three_intervals(client, clock, monitor):
    client.post(HEARTBEAT, json=seed_heartbeat())
    clock.advance(89.9)
    monitor.reap()
    assert get(client)["status"] == "running"
    clock.advance(0.2)
    monitor.reap()
    record = get(client)
    assert record["status"] == "lost"
    assert "no heartbeat for 90s" in record["status_reason"]
    assert metric(client, "task_executions_lost_total") == 1


def test_it_counts_a_loss_once_however_often_the_reaper_runs(client, clock, monitor):
    client.post(HEARTBEAT, json=seed_heartbeat())
    for _ in range(5):
        clock.advance(60)
        monitor.reap()
    assert get(client)["lost_count"] == 1
    assert metric(client, "task_executions_lost_total") == 1


def test_it_recovers_a_lost_execution_on_its_next_heartbeat(client, clock, monitor):
    client.post(HEARTBEAT, json=seed_heartbeat(task_name="etl"))
    clock.advance(100)
    monitor.reap()
    response = client.post(HEARTBEAT, json=seed_heartbeat(task_name="etl"))
    assert response.json["execution_status"] == "running"
    record = get(client)
    assert (record["status"], record["recoveries"], record["expires_at"]) == ("running", 1, None)
    assert metric(client, "task_execution_recoveries_total", task_name="etl") == 1
    assert metric(client, "task_executions_lost_total", task_name="etl") == 1


def test_it_learns_an_interval_longer_than_the_default_from_the_gaps(client, clock, monitor):
    for _ in range(4):
        client.post(HEARTBEAT, json=seed_heartbeat())
        clock.advance(60)
    record = get(client)
    assert (record["interval_seconds"], record["interval_source"]) == (60, "learned")
    clock.advance(120)  # 180 s after the last heartbeat: three learned intervals
    monitor.reap()
    assert get(client)["status"] == "lost"


def test_it_never_learns_an_interval_below_the_default(client, clock):
    for _ in range(6):
        client.post(HEARTBEAT, json=seed_heartbeat())
        clock.advance(2)
    assert (get(client)["interval_seconds"], get(client)["interval_source"]) == (30, "default")


def test_it_keeps_an_interval_the_task_sent(client, clock):
    client.post(HEARTBEAT, json=seed_heartbeat(interval_seconds=5))
    for _ in range(4):
        clock.advance(1)
        client.post(HEARTBEAT, json=seed_heartbeat())
    assert get(client)["interval_seconds"] == 5


@pytest.mark.parametrize("reported", ["completed", "failed"])
def test_it_finalises_a_reported_final_status_at_the_deadline(client, clock, monitor, reported):
    client.post(HEARTBEAT, json=seed_heartbeat(task_name="etl"))
    clock.advance(30)
    client.post(HEARTBEAT, json=seed_heartbeat(status=reported, task_name="etl"))
    last = clock.now
    assert get(client)["status"] == "running"
    clock.advance(91)
    monitor.reap()
    record = get(client)
    assert record["status"] == reported
    assert record["ended_at"] == last
    assert record["success"] is (reported == "completed")
    outcome = "success" if reported == "completed" else "failure"
    assert metric(client, "task_completions_total", task_name="etl", outcome=outcome) == 1
    assert metric(client, "task_executions_lost_total") == 0


def test_it_answers_ok_and_ignores_heartbeats_after_the_completion(client, clock):
    client.post(HEARTBEAT, json=seed_heartbeat())
    client.post(COMPLETION, json=seed_completion())
    before = get(client)
    clock.advance(5)
    response = client.post(HEARTBEAT, json=seed_heartbeat(status="completed", progress={"stage": "任务完成"}))
    assert response.status_code == 200
    assert response.json["status"] == "ok" and response.json["ignored"] is True
    assert get(client) == before


def test_it_refuses_new_executions_beyond_the_limit_but_keeps_the_tracked_ones(app, client):
    app.extensions["heartbeat_bridge"].monitor.store.max_executions = 2
    assert client.post(HEARTBEAT, json=seed_heartbeat("a")).status_code == 200
    assert client.post(HEARTBEAT, json=seed_heartbeat("b")).status_code == 200
    refused = client.post(HEARTBEAT, json=seed_heartbeat("c"))
    assert refused.status_code == 429
    assert "Retry-After" in refused.headers
    assert client.post(HEARTBEAT, json=seed_heartbeat("a")).status_code == 200
    assert client.get("/api/v1/executions/c").status_code == 404
    assert metric(client, "bridge_requests_rejected_total", endpoint="heartbeat", reason="capacity") == 1


def test_it_caps_task_names_in_labels_with_other(app, client):
    app.extensions["heartbeat_bridge"].monitor.store.max_task_names = 2
    for n in range(4):
        client.post(HEARTBEAT, json=seed_heartbeat(f"e{n}", task_name=f"task{n}"))
    parsed = samples(client.get("/metrics").data.decode())
    assert total(parsed, "task_heartbeats_received_total", task_name="_other") == 2
    assert {dict(ls)["task_name"] for (n, ls) in parsed if n == "task_execution_info"} == {"task0", "task1", "_other"}
    assert get(client, "e3")["task_name"] == "task3"  # the JSON API keeps the real name


def test_it_drops_finished_executions_after_the_retention(client, clock, monitor):
    client.post(COMPLETION, json=seed_completion())
    clock.advance(3599)
    monitor.reap()
    assert client.get(f"/api/v1/executions/{EID}").status_code == 200
    clock.advance(2)
    monitor.reap()
    assert client.get(f"/api/v1/executions/{EID}").status_code == 404
    assert f'execution_id="{EID}"' not in client.get("/metrics").data.decode()


# -- refusals: a clear 4xx naming the field, and nothing accepted before is lost ----------

DEEP = {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}}


@pytest.mark.parametrize(
    "body, field",
    [
        ({"container_id": "c"}, "execution_id"),
        ({"execution_id": 7}, "execution_id"),
        ({"execution_id": ""}, "execution_id"),
        ({"execution_id": 'a"b'}, "execution_id"),
        ({"execution_id": "a\nb"}, "execution_id"),
        ({"execution_id": "a b"}, "execution_id"),
        ({"execution_id": "x" * 129}, "execution_id"),
        ({"execution_id": "ok", "container_id": ["c"]}, "container_id"),
        ({"execution_id": "ok", "status": "done"}, "status"),
        ({"execution_id": "ok", "progress": [1, 2]}, "progress"),
        ({"execution_id": "ok", "progress": DEEP}, "progress"),
        ({"execution_id": "ok", "progress": {"s": "\ud800"}}, "progress"),
        ({"execution_id": "ok", "timestamp": "now"}, "timestamp"),
        ({"execution_id": "ok", "timestamp": 1_700_000_000_000}, "timestamp"),
        ({"execution_id": "ok", "timestamp": True}, "timestamp"),
        ({"execution_id": "ok", "interval_seconds": 0}, "interval_seconds"),
        ({"execution_id": "ok", "task_name": "a\u0000b"}, "task_name"),
        ({"execution_id": "ok", "labels": {"bad-key": "v"}}, "labels"),
        ({"execution_id": "ok", "labels": {"k": 1}}, "labels"),
        ({"execution_id": "ok", "traceparent": "00-zz"}, "traceparent"),
        ([seed_heartbeat()], "body"),
    ],
)
def test_it_refuses_a_wrong_field_with_400_naming_it(client, body, field):
    response = client.post(HEARTBEAT, data=json.dumps(body), content_type="application/json")
    assert response.status_code == 400
    assert response.json["field"] == field
    assert response.json["error"]


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b"",
        b"NaN",
        b'{"execution_id": "a", "progress": {"p": NaN}}',
        b'{"execution_id": "a", "timestamp": Infinity}',
        b'{"execution_id": "a", "timestamp": 1e999}',
        b'{"execution_id": "\xff\xfe"}',
        b"[" * 100_00 + b"]" * 100_00,
        b'{"execution_id": "a", "p": ' + b"1" * 5000 + b"}",
    ],
)
def test_it_refuses_malformed_json_with_400(client, raw):
    response = client.post(HEARTBEAT, data=raw, content_type="application/json")
    assert response.status_code == 400
    assert response.json["field"] == "body"


def test_it_refuses_a_body_over_the_limit_with_413(client):
    body = seed_heartbeat(progress={"blob": "x" * 70_000})
    response = client.post(HEARTBEAT, json=body)
    assert response.status_code == 413
    assert response.json["field"] == "body"


def test_it_refuses_a_progress_over_the_field_limit_with_413(client):
    response = client.post(HEARTBEAT, json=seed_heartbeat(progress={"blob": "x" * 20_000}))
    assert response.status_code == 413
    assert response.json["field"] == "progress"


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_it_refuses_a_body_that_is_not_json_with_415(client, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post(HEARTBEAT, data=json.dumps(seed_heartbeat()), headers=headers)
    assert response.status_code == 415
    assert response.json["field"] == "Content-Type"


def test_it_loses_nothing_already_accepted_when_refusing_bad_input(client):
    client.post(HEARTBEAT, json=seed_heartbeat(progress={"percentage": 40}))
    before = get(client)
    client.post(HEARTBEAT, data=json.dumps(seed_heartbeat(status="bogus")), content_type="application/json")
    client.post(HEARTBEAT, data=b"{", content_type="application/json")
    assert get(client) == before


def test_it_counts_each_refusal_by_reason(client):
    client.post(HEARTBEAT, data=b"{", content_type="application/json")
    client.post(HEARTBEAT, json={"execution_id": "a b"})
    client.post(HEARTBEAT, data=b"{}", content_type="text/plain")
    parsed = samples(client.get("/metrics").data.decode())
    for reason in ("invalid_json", "invalid_field", "unsupported_media_type"):
        assert total(parsed, "bridge_requests_rejected_total", endpoint="heartbeat", reason=reason) == 1


def test_it_answers_503_while_the_store_is_locked_and_recovers_by_itself(client, app, tmp_path):
    import sqlite3

    client.post(HEARTBEAT, json=seed_heartbeat())
    blocker = sqlite3.connect(tmp_path / "bridge.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        response = client.post(HEARTBEAT, json=seed_heartbeat())
        assert response.status_code == 503
        assert response.headers["Retry-After"]
        assert client.get("/readyz").status_code == 503
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert client.post(HEARTBEAT, json=seed_heartbeat()).status_code == 200
    assert client.get("/readyz").status_code == 200
    assert get(client)["heartbeat_count"] == 2


# -- the fast path (bridge.web.fastpath) and the Flask view answer alike ------------------------


def test_it_answers_on_the_fast_path_exactly_as_the_flask_view_does(app, client):
    from werkzeug.test import Client

    view = Client(app.wsgi_app.wrapped)  # the Flask app without the fast path in front
    traceparent = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    for path, make, headers in [
        (HEARTBEAT, seed_heartbeat, {}),  # a new execution
        (HEARTBEAT, seed_heartbeat, traceparent),  # a running one
        (COMPLETION, seed_completion, {}),
        (HEARTBEAT, seed_heartbeat, {}),
    ]:  # ignored after the end
        fast = client.post(path, json=make("fast-1"), headers=headers)
        slow = view.post(path, json=make("flask1"), headers=headers)
        assert (fast.status, fast.headers.to_wsgi_list()) == (slow.status, slow.headers.to_wsgi_list())
        assert fast.data == slow.data.replace(b'"flask1"', b'"fast-1"')
    assert get(client, "fast-1")["heartbeat_count"] == get(client, "flask1")["heartbeat_count"] == 2


def test_it_answers_a_plain_heartbeat_on_the_fast_path(app, client):
    from flask import request_started

    through_flask = []
    with request_started.connected_to(lambda sender, **extra: through_flask.append(1), app):
        assert client.post(HEARTBEAT, json=seed_heartbeat()).status_code == 200
        assert (
            client.post(
                HEARTBEAT,
                json=seed_heartbeat(),
                content_type="application/json; charset=utf-8",
                headers={"Authorization": "Bearer unused"},
            ).status_code
            == 200
        )
        assert through_flask == []
        assert client.post(HEARTBEAT, json={"execution_id": "a b"}).status_code == 400
        assert through_flask == [1]  # refused input is answered, and counted, by the view
        app.debug = True  # Flask's debugger and indented answers
        assert client.post(HEARTBEAT, json=seed_heartbeat()).status_code == 200
        assert through_flask == [1, 1]
    assert metric(client, "bridge_requests_rejected_total", endpoint="heartbeat", reason="invalid_field") == 1


def test_it_hands_a_heartbeat_to_flask_when_the_fast_path_fails_before_applying_it(client, monkeypatch):
    import bridge.web.fastpath

    def broken(*args, **kwargs):
        raise RuntimeError("injected")

    monkeypatch.setattr(bridge.web.fastpath, "parse_heartbeat", broken)
    response = client.post(HEARTBEAT, json=seed_heartbeat())
    assert response.status_code == 200 and response.json["execution_status"] == "running"
    assert get(client)["heartbeat_count"] == 1


@pytest.mark.parametrize("error, status", [(StoreUnavailable, 503), (RuntimeError, 500)])
def test_it_applies_a_heartbeat_once_when_its_commit_fails(app, client, monkeypatch, error, status):
    calls = []

    def failing(hb):
        calls.append(hb.execution_id)
        raise error("injected")

    monkeypatch.setattr(app.extensions["heartbeat_bridge"].monitor, "heartbeat", failing)
    response = client.post(HEARTBEAT, json=seed_heartbeat())
    assert response.status_code == status
    assert set(response.json) == {"error"}
    assert calls == [EID]


def test_it_refuses_a_body_shorter_than_its_content_length_with_400(client):
    import io

    body = json.dumps(seed_heartbeat()).encode()
    response = client.post(
        HEARTBEAT, input_stream=io.BytesIO(body[:-5]), content_length=len(body), content_type="application/json"
    )
    assert response.status_code == 400
    assert client.get(f"/api/v1/executions/{EID}").status_code == 404
