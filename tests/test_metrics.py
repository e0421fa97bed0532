"""GET /metrics: every family of docs/design.md, checked by promtool and both parsers, on each
store (SQLite, one Redis server, a 3-master Redis Cluster): the executions' samples are the
texts each store kept when it wrote them."""

from __future__ import annotations

import subprocess

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from support import (
    COMPLETION,
    HEARTBEAT,
    empty_store,
    require_binary,
    samples,
    seed_completion,
    seed_heartbeat,
    total,
)

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


@pytest.fixture(params=["sqlite", "redis", "redis-cluster"])
def settings_overrides(request, tmp_path):
    """Each test runs on each store."""
    return {"store_url": empty_store(request, request.param, tmp_path)}


@pytest.fixture
def fleet(client, clock, monitor):
    """A small fleet in every state, with label values that need escaping, and declared tasks."""
    client.put(
        "/api/v1/tasks/etl", json={"schedule": "0 2 * * *", "max_runtime_seconds": 600, "labels": {"team": "data"}}
    )
    client.put("/api/v1/tasks/never-ran", json={"period_seconds": 60})
    client.post(
        HEARTBEAT,
        json=seed_heartbeat(
            "run-1",
            task_name='示例 "quoted" \\ task',
            task_type="crawler",
            progress={"current_step": 3, "total_steps": 10},
        ),
    )
    client.post(HEARTBEAT, json=seed_heartbeat("lost-1", task_name="etl", max_runtime_seconds=60))
    client.post(HEARTBEAT, json=seed_heartbeat("done-1", task_name="etl"))
    client.post(HEARTBEAT, json=seed_heartbeat("fail-1", task_name="etl", progress={"percentage": 40}))
    clock.advance(45)
    client.post(
        HEARTBEAT,
        json=seed_heartbeat(
            "run-1", task_name='示例 "quoted" \\ task', progress={"current_step": 3, "total_steps": 10}
        ),
    )
    client.post(COMPLETION, json=seed_completion("done-1"))
    client.post(COMPLETION, json=seed_completion("fail-1", success=False))
    clock.advance(50)
    monitor.reap()  # lost-1 silent for 95 s
    client.post(HEARTBEAT, data=b"{", content_type="application/json")
    return client


def scrape(client, accept=None) -> str:
    response = client.get("/metrics", headers={"Accept": accept} if accept else {})
    assert response.status_code == 200
    return response.data.decode()


def test_it_exposes_one_gauge_sample_per_state_for_each_execution(fleet):
    parsed = samples(scrape(fleet))
    states = {
        dict(ls)["status"]: v
        for (n, ls), v in parsed.items()
        if n == "task_execution_status" and dict(ls)["execution_id"] == "lost-1"
    }
    assert states == {"starting": 0, "running": 0, "completed": 0, "failed": 0, "lost": 1}
    trace_id = fleet.get("/api/v1/executions/run-1").json["trace_id"]
    assert (
        total(
            parsed,
            "task_execution_info",
            execution_id="run-1",
            task_type="crawler",
            container_id="task-run-1",
            task_name='示例 "quoted" \\ task',
            trace_id=trace_id,
        )
        == 1
    )


def test_it_exposes_heartbeat_times_intervals_and_progress(fleet, clock):
    parsed = samples(scrape(fleet))
    assert total(parsed, "task_heartbeat_last_timestamp_seconds", execution_id="run-1") == clock.now - 50
    assert total(parsed, "task_heartbeat_interval_seconds", execution_id="run-1") == 45
    assert total(parsed, "task_progress_ratio", execution_id="run-1") == pytest.approx(0.3)
    assert total(parsed, "task_progress_ratio", execution_id="fail-1") == pytest.approx(0.4)
    assert total(parsed, "task_execution_max_runtime_seconds", execution_id="lost-1") == 60
    assert total(parsed, "task_execution_end_timestamp_seconds", execution_id="done-1") == clock.now - 50
    assert not [
        k for k in parsed if k[0] == "task_execution_end_timestamp_seconds" and dict(k[1])["execution_id"] == "run-1"
    ]


def test_it_counts_executions_by_task_and_status(fleet):
    parsed = samples(scrape(fleet))
    assert total(parsed, "task_executions", task_name="etl", status="lost") == 1
    assert total(parsed, "task_executions", task_name="etl", status="completed") == 1
    assert total(parsed, "task_executions", task_name="etl", status="failed") == 1
    assert total(parsed, "task_executions", task_name="etl", status="running") == 0
    assert total(parsed, "task_heartbeats_received_total", task_name="etl") == 3
    assert total(parsed, "task_executions_lost_total", task_name="etl") == 1
    assert total(parsed, "task_completions_total", task_name="etl", outcome="failure") == 1
    assert total(parsed, "bridge_tracked_executions") == 4
    assert total(parsed, "bridge_tracked_executions_limit") == 100_000
    assert total(parsed, "bridge_requests_rejected_total", reason="invalid_json") == 1
    assert ("bridge_build_info", frozenset({("version", "0.1.0")})) in parsed


def test_it_passes_promtool_check_metrics_with_nothing_reported(fleet):
    promtool = require_binary("promtool")
    result = subprocess.run(
        [promtool, "check", "metrics"], input=scrape(fleet).encode(), capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == "" and result.stderr.decode().strip() == ""


def test_it_carries_no_sample_timestamps_in_either_format(fleet):
    for family in parse_text(scrape(fleet)):
        assert all(s.timestamp is None for s in family.samples), family.name
    for family in parse_openmetrics(scrape(fleet, OPENMETRICS)):
        assert all(s.timestamp is None for s in family.samples), family.name


def test_it_answers_openmetrics_when_the_scraper_asks(fleet):
    response = fleet.get("/metrics", headers={"Accept": OPENMETRICS})
    assert response.content_type.startswith("application/openmetrics-text")
    text = response.data.decode()
    assert text.endswith("# EOF\n")
    families = {f.name: f for f in parse_openmetrics(text)}
    assert families["task_completions"].type == "counter"
    assert families["task_execution_duration_seconds"].type == "histogram"
    assert fleet.get("/metrics").content_type.startswith("text/plain")


def test_it_exports_nothing_for_an_empty_store_but_the_bridge_series(client):
    parsed = samples(scrape(client))
    assert not [n for n, _ in parsed if n.startswith("task_execution_info")]
    assert total(parsed, "bridge_tracked_executions") == 0


def test_it_links_duration_buckets_to_traces_with_exemplars(fleet):
    trace_ids = {fleet.get(f"/api/v1/executions/{e}").json["trace_id"] for e in ("done-1", "fail-1")}
    exemplars = {}
    for family in parse_openmetrics(scrape(fleet, OPENMETRICS)):
        for s in family.samples:
            if s.exemplar is not None:
                exemplars[(s.labels["outcome"], s.labels["le"])] = s.exemplar
    assert {e.labels["trace_id"] for e in exemplars.values()} == trace_ids
    # the exemplar sits on the bucket its value falls in: both ran 45 s
    assert exemplars[("success", "60")].value == 45
    assert ("success", "30") not in exemplars


def test_it_renders_exactly_what_prometheus_client_would(fleet, app, client):
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.exposition import generate_latest

    from bridge.core.executions import STATUSES

    client.post(
        "/api/v1/monitoring/container-events",
        json={"execution_id": "run-1", "event": "start", "container_name": 'odd\\name "x"', "image": "i:1"},
    )
    rows = app.extensions["heartbeat_bridge"].monitor.store.query()
    key = ["execution_id", "task_name"]
    info = GaugeMetricFamily(
        "task_execution_info", "", labels=key + ["container_id", "task_type", "trace_id", "container_name", "image"]
    )
    status = GaugeMetricFamily("task_execution_status", "", labels=key + ["status"])
    gauges = {name: GaugeMetricFamily(name, "", labels=key) for name, field in REFERENCE_GAUGES}
    for r in rows:
        info.add_metric(
            [
                r.execution_id,
                r.metric_task_name,
                r.container_id or "",
                r.task_type or "",
                r.trace_id,
                r.container_name or "",
                r.image or "",
            ],
            1,
        )
        for name in STATUSES:
            status.add_metric([r.execution_id, r.metric_task_name, name], 1 if name == r.status else 0)
        for name, field in REFERENCE_GAUGES:
            if getattr(r, field) is not None:
                gauges[name].add_metric([r.execution_id, r.metric_task_name], getattr(r, field))

    class Families:
        def collect(self):
            return [info, status, *gauges.values()]

    reference = samples(generate_latest(Families()).decode())
    ours = {k: v for k, v in samples(scrape(client)).items() if k in reference or k[0] in dict(REFERENCE_GAUGES)}
    assert ours == reference
    assert ("container_name", 'odd\\name "x"') in {item for (_, labels) in reference for item in labels}


REFERENCE_GAUGES = (
    ("task_heartbeat_last_timestamp_seconds", "last_heartbeat_at"),
    ("task_heartbeat_interval_seconds", "interval_seconds"),
    ("task_execution_start_timestamp_seconds", "started_at"),
    ("task_execution_end_timestamp_seconds", "ended_at"),
    ("task_progress_ratio", "progress_ratio"),
    ("task_execution_max_runtime_seconds", "max_runtime_seconds"),
)


def _every_field_set():
    from bridge.core.executions import Execution, Stage, StatusChange

    return Execution(
        "run-1",
        "running",
        "0af7651916cd43dd8448eb211c80319c",
        "etl",
        1000.0,
        1030.0,
        container_id="c1",
        container_name="worker",
        image="etl:1",
        task_name="etl",
        task_type="batch",
        reported_status="running",
        status_reason="ok",
        progress={"percentage": 30},
        progress_ratio=0.3,
        labels={"team": "data", "other": "x"},
        last_heartbeat_at=1030.0,
        client_timestamp=1029.0,
        ended_at=1100.0,
        deadline_at=1120.0,
        expires_at=5000.0,
        heartbeat_count=2,
        interval_seconds=30.0,
        gaps=[30.0],
        max_runtime_seconds=600.0,
        error_message="none",
        exit_code=0,
        result_data={"rows": 1},
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        segment_started_at=1000.0,
        stages=[Stage("load", 1000.0, None)],
        events=[StatusChange(1000.0, "running", "running")],
        version=2,
        protocol="hc",
    )


def _another(field, value):
    """Return a value of ``field`` other than ``value``."""
    if field == "status":
        return "lost"
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 7
    if isinstance(value, str):
        return value + "-2"
    if isinstance(value, dict):
        return {key: f"{item}-2" for key, item in value.items()}
    return []


def test_it_renders_again_every_family_whose_samples_read_a_changed_field():
    from dataclasses import fields

    from bridge.telemetry.metrics import ExecutionRenderer

    render = ExecutionRenderer(("team",))
    before = _every_field_set()
    never_none = {"execution_id", "trace_id", "metric_task_name", "status", "started_at", "interval_seconds"}
    for field in (f.name for f in fields(before)):
        for value in (_another(field, getattr(before, field)), *([] if field in never_none else [None])):
            after = before.clone()
            setattr(after, field, value)
            texts = list(render(before))
            for family, text in render.changes(before, after).items():
                texts[family] = text
            assert texts == list(render(after)), field


def test_it_renders_a_heartbeats_moves_alone():
    from bridge.telemetry.metrics import ExecutionRenderer

    render = ExecutionRenderer()
    before = _every_field_set()
    after = before.clone()
    after.last_heartbeat_at, after.progress_ratio, after.deadline_at, after.heartbeat_count = 1060.0, 0.5, 1150.0, 3
    changed = render.changes(before, after)
    assert sorted(changed) == [2, 6]  # the last heartbeat and the progress
    assert all(changed[family] == render(after)[family] for family in changed)
    assert render.changes(None, after) == {k: t for k, t in enumerate(render(after)) if t}
