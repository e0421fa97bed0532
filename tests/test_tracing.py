"""Execution spans (docs/design.md, Traces), recorded with the SDK's in-memory exporter."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from bridge.core.ids import execution_span_id, segment_span_id
from bridge.telemetry import tracing

from support import COMPLETION, HEARTBEAT, samples, seed_completion, seed_heartbeat, total

EID = "550e8400-e29b-41d4-a716-446655440000"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
NS = 1_000_000_000


@pytest.fixture
def exporter():
    return InMemorySpanExporter()


@pytest.fixture
def tracer_provider(exporter):
    provider = tracing.new_provider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


def execution_spans(exporter):
    return [s for s in exporter.get_finished_spans() if s.name == tracing.EXECUTION_SPAN]


def only_execution_span(exporter):
    spans = execution_spans(exporter)
    assert len(spans) == 1, [s.name for s in exporter.get_finished_spans()]
    return spans[0]


def test_it_emits_one_span_with_stage_children_when_an_execution_completes(client, clock, exporter):
    t0 = clock.now
    client.post(
        HEARTBEAT, json=seed_heartbeat(task_name="crawl", task_type="crawler", progress={"stage": "配置加载完成"})
    )
    clock.advance(10)
    client.post(HEARTBEAT, json=seed_heartbeat(progress={"stage": "数据处理中", "percentage": 50}))
    assert execution_spans(exporter) == []  # nothing until the execution ends
    clock.advance(20)
    client.post(COMPLETION, json=seed_completion(exit_code=0))
    span = only_execution_span(exporter)
    assert (span.start_time, span.end_time) == (int(t0 * NS), int((t0 + 30) * NS))
    assert span.status.status_code is StatusCode.OK
    assert span.parent is None
    attributes = dict(span.attributes)
    assert attributes["task.execution_id"] == EID
    assert (attributes["task.name"], attributes["task.type"]) == ("crawl", "crawler")
    assert attributes["container.id"] == f"task-{EID}"
    assert attributes["process.exit.code"] == 0
    assert attributes["task.heartbeat_count"] == 2
    assert attributes["task.progress.ratio"] == 0.5
    assert attributes["task.progress.stage"] == "数据处理中"
    assert "error.type" not in attributes
    stages = sorted(
        (s for s in exporter.get_finished_spans() if s.name != tracing.EXECUTION_SPAN), key=lambda s: s.start_time
    )
    assert [(s.name, s.start_time, s.end_time) for s in stages] == [
        ("配置加载完成", int(t0 * NS), int((t0 + 10) * NS)),
        ("数据处理中", int((t0 + 10) * NS), int((t0 + 30) * NS)),
    ]
    assert {s.parent.span_id for s in stages} == {span.context.span_id}
    assert {s.context.trace_id for s in stages} == {span.context.trace_id}


def test_it_records_status_changes_as_span_events(client, clock, exporter):
    client.post(HEARTBEAT, json=seed_heartbeat())
    clock.advance(5)
    client.post(HEARTBEAT, json=seed_heartbeat(status="failed"))
    clock.advance(5)
    client.post(COMPLETION, json=seed_completion(success=False, error_message="模拟任务执行错误"))
    events = [
        (e.name, e.attributes["task.status"], e.attributes["task.reported_status"])
        for e in only_execution_span(exporter).events
    ]
    assert events == [
        ("task.status", "running", "running"),
        ("task.status", "running", "failed"),
        ("task.status", "failed", "failed"),
    ]


def test_it_derives_ids_from_a_uuid_execution_id(client, exporter):
    client.post(HEARTBEAT, json=seed_heartbeat(EID.upper()))
    client.post(COMPLETION, json=seed_completion())
    context = only_execution_span(exporter).context
    assert f"{context.trace_id:032x}" == EID.replace("-", "")
    assert f"{context.span_id:016x}" == execution_span_id(EID)


def test_it_hashes_other_ids_into_the_trace_id(client, exporter):
    client.post(COMPLETION, json=seed_completion("nightly-etl:42"))
    context = only_execution_span(exporter).context
    assert f"{context.trace_id:032x}" == hashlib.sha256(b"nightly-etl:42").hexdigest()[:32]
    assert f"{context.span_id:016x}" == hashlib.sha256(b"span:nightly-etl:42").hexdigest()[:16]


@pytest.mark.parametrize("where", ["body", "header"])
def test_it_joins_the_trace_of_a_traceparent_in_the_first_heartbeat(client, exporter, where):
    if where == "body":
        client.post(HEARTBEAT, json=seed_heartbeat(traceparent=TRACEPARENT))
    else:
        client.post(HEARTBEAT, json=seed_heartbeat(), headers={"traceparent": TRACEPARENT})
    client.post(COMPLETION, json=seed_completion())
    span = only_execution_span(exporter)
    assert f"{span.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert f"{span.parent.span_id:016x}" == "b7ad6b7169203331"
    assert f"{span.context.span_id:016x}" == execution_span_id(EID)
    assert client.get(f"/api/v1/executions/{EID}").json["trace_id"] == "0af7651916cd43dd8448eb211c80319c"


def test_it_ends_a_lost_segment_and_links_the_recovered_one_to_it(client, clock, monitor, exporter):
    t0 = clock.now
    client.post(HEARTBEAT, json=seed_heartbeat(task_name="etl", progress={"stage": "load"}))
    clock.advance(100)
    monitor.reap()
    lost = only_execution_span(exporter)
    assert lost.status.status_code is StatusCode.ERROR
    assert "no heartbeat" in lost.status.description
    assert dict(lost.attributes)["error.type"] == "lost"
    assert (lost.start_time, lost.end_time) == (int(t0 * NS), int((t0 + 100) * NS))
    clock.advance(20)
    client.post(HEARTBEAT, json=seed_heartbeat(task_name="etl", progress={"stage": "load"}))
    clock.advance(10)
    client.post(COMPLETION, json=seed_completion())
    first, second = sorted(execution_spans(exporter), key=lambda s: s.start_time)
    assert first is not second and first.context.span_id == lost.context.span_id
    assert second.start_time == int((t0 + 120) * NS)
    assert f"{second.context.span_id:016x}" == segment_span_id(EID, 1)
    assert second.context.trace_id == first.context.trace_id
    assert [link.context.span_id for link in second.links] == [first.context.span_id]
    assert dict(second.attributes)["task.recoveries"] == 1
    recovered_stage = [
        s for s in exporter.get_finished_spans() if s.name == "load" and s.parent.span_id == second.context.span_id
    ]
    assert [s.start_time for s in recovered_stage] == [int((t0 + 120) * NS)]


def test_it_marks_a_failure_as_an_error_with_its_message(client, exporter):
    client.post(HEARTBEAT, json=seed_heartbeat())
    client.post(COMPLETION, json=seed_completion(success=False, error_message="disk full", exit_code=3))
    span = only_execution_span(exporter)
    assert (span.status.status_code, span.status.description) == (StatusCode.ERROR, "disk full")
    assert dict(span.attributes)["error.type"] == "task_failed"
    assert dict(span.attributes)["process.exit.code"] == 3


def test_it_emits_nothing_for_heartbeats_or_a_duplicate_completion(client, exporter):
    client.post(HEARTBEAT, json=seed_heartbeat())
    client.post(COMPLETION, json=seed_completion())
    client.post(COMPLETION, json=seed_completion())
    client.post(HEARTBEAT, json=seed_heartbeat())
    assert len(execution_spans(exporter)) == 1


class _Broken(SpanProcessor):
    def on_end(self, span):
        raise RuntimeError("exporter bug")


def test_it_answers_ok_and_counts_when_a_span_cannot_be_built(tracer_provider, client):
    tracer_provider.add_span_processor(_Broken())
    response = client.post(COMPLETION, json=seed_completion())
    assert response.status_code == 200
    parsed = samples(client.get("/metrics").data.decode())
    assert total(parsed, "bridge_telemetry_errors_total", stage="build") == 1


# -- configuration from OTEL_* only -----------------------------------------------------

OTEL_VARIABLES = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_SDK_DISABLED",
)


@pytest.fixture
def otel_env(monkeypatch):
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def exporters_of(provider):
    return [
        type(p.span_exporter._inner).__name__
        for p in provider._active_span_processor._span_processors
        if isinstance(p, BatchSpanProcessor)
    ]


def test_it_traces_nothing_when_no_otel_variable_is_set(otel_env):
    assert tracing.provider_from_env() is None
    otel_env.setenv("OTEL_TRACES_EXPORTER", "none")
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    assert tracing.provider_from_env() is None


def test_it_exports_over_otlp_when_only_an_endpoint_is_set(otel_env):
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    provider = tracing.provider_from_env()
    assert exporters_of(provider) == ["OTLPSpanExporter"]
    assert provider.resource.attributes["service.name"] == "heartbeat-bridge"
    provider.shutdown()


def test_it_takes_exporters_protocol_and_resource_from_otel_variables(otel_env):
    otel_env.setenv("OTEL_TRACES_EXPORTER", "otlp,console")
    otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    otel_env.setenv("OTEL_SERVICE_NAME", "bridge-eu")
    otel_env.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod")
    provider = tracing.provider_from_env()
    kinds = exporters_of(provider)
    assert kinds == ["OTLPSpanExporter", "ConsoleSpanExporter"]
    grpc = provider._active_span_processor._span_processors[0].span_exporter._inner
    assert type(grpc).__module__.startswith("opentelemetry.exporter.otlp.proto.grpc")
    assert provider.resource.attributes["service.name"] == "bridge-eu"
    assert provider.resource.attributes["deployment.environment"] == "prod"
    provider.shutdown()


@pytest.mark.parametrize(
    "name, value",
    [
        ("OTEL_TRACES_EXPORTER", "zipkin"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "udp"),
    ],
)
def test_it_refuses_an_otel_value_it_cannot_honour_naming_the_variable(otel_env, name, value):
    otel_env.setenv("OTEL_TRACES_EXPORTER", "otlp")
    otel_env.setenv(name, value)
    with pytest.raises(tracing.TracingConfigError, match=name):
        tracing.provider_from_env()


def test_it_stops_serve_on_a_bad_otel_value(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bridge.server.cli", "serve"],
        cwd=tmp_path,
        env={"OTEL_TRACES_EXPORTER": "zipkin", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "OTEL_TRACES_EXPORTER" in result.stderr


def test_it_describes_a_container_death_with_semantic_attributes(client, exporter):
    client.post(
        "/api/v1/monitoring/container-events",
        json={
            "execution_id": EID,
            "event": "start",
            "container_id": "c" * 64,
            "container_name": "task-x",
            "image": "crawler:1.4",
        },
    )
    client.post(HEARTBEAT, json=seed_heartbeat(container_id=None))
    client.post(
        "/api/v1/monitoring/container-events",
        json={"execution_id": EID, "event": "die", "exit_code": 137, "oom_killed": True},
    )
    span = only_execution_span(exporter)
    attributes = dict(span.attributes)
    assert attributes["container.image.name"] == "crawler:1.4"
    assert attributes["container.name"] == "task-x"
    assert attributes["process.exit.code"] == 137
    assert attributes["error.type"] == "oom_killed"
    assert span.status.description == "killed: out of memory"
    assert [e.attributes["task.status"] for e in span.events] == ["starting", "running", "failed"]
