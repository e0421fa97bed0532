"""OpenTelemetry traces: one ``task.execution`` span per execution (docs/design.md, Traces).

Spans are built when a segment of an execution ends (completion, final status at the
deadline, loss), from the times kept in the store, by the worker whose
compare-and-set committed that transition: each span is emitted once, and nothing
long-lived sits in a worker's memory. Configuration comes only from the standard
``OTEL_*`` variables; with none set there is no provider and no cost.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from .. import __version__
from ..core.errors import ConfigError
from ..core.executions import Execution
from ..core.ids import segment_span_id

__all__ = [
    "EXECUTION_SPAN",
    "ExecutionSpans",
    "PresetIdGenerator",
    "TracingConfigError",
    "new_provider",
    "provider_from_env",
]

log = logging.getLogger(__name__)

EXECUTION_SPAN = "task.execution"
STATUS_EVENT = "task.status"
DEFAULT_SERVICE_NAME = "heartbeat-bridge"
INSTRUMENTATION_NAME = "heartbeat-bridge"
DEFAULT_OTLP_PROTOCOL = "http/protobuf"
MAX_PROGRESS_ATTRIBUTE = 1024
_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


class TracingConfigError(ConfigError):
    """An ``OTEL_*`` variable asks for something the bridge cannot do."""


class PresetIdGenerator(IdGenerator):
    """Gives the next span started on this thread preset ids; random ones otherwise.

    The SDK asks its id generator for every span id (and for the trace id of root
    spans), so presetting them is how a span gets the ids derived from its execution.
    """

    def __init__(self) -> None:
        self._random = RandomIdGenerator()
        self._preset = threading.local()

    @contextmanager
    def preset(self, trace_id: int, span_id: int) -> Iterator[None]:
        """Within the block, the next trace id and span id asked for are these."""
        self._preset.ids = [trace_id, span_id]
        try:
            yield
        finally:
            self._preset.ids = None

    def _take(self, index: int) -> int | None:
        ids = getattr(self._preset, "ids", None)
        if ids is None or ids[index] is None:
            return None
        value, ids[index] = ids[index], None
        return value

    def generate_trace_id(self) -> int:
        preset = self._take(0)
        return preset if preset is not None else self._random.generate_trace_id()

    def generate_span_id(self) -> int:
        preset = self._take(1)
        return preset if preset is not None else self._random.generate_span_id()

    def is_trace_id_random(self) -> bool:
        return False  # derived from execution ids


def new_provider(resource: Resource | None = None) -> TracerProvider:
    """Return a provider able to give execution spans their derived ids.

    The sampler comes from ``OTEL_TRACES_SAMPLER`` (default: parent-based, always on).
    """
    return TracerProvider(resource=resource or _resource(), id_generator=PresetIdGenerator())


def _resource() -> Resource:
    resource = Resource.create({"service.version": __version__})  # + OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": DEFAULT_SERVICE_NAME}))
    return resource


def exporter_names() -> list[str]:
    """Return the span exporters the ``OTEL_*`` variables turn on; empty when tracing is off."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip().lower() for n in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if not names and any(os.environ.get(v) for v in _ENDPOINT_VARIABLES):
        names = ["otlp"]
    return [name for name in names if name != "none"]


def provider_from_env(on_export_failure: Callable[[int], None] | None = None) -> TracerProvider | None:
    """Return a provider configured by the ``OTEL_*`` variables, or None when tracing is off.

    Tracing is on when ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``;
    ``none`` is off) or, with it unset, when an OTLP endpoint is set. Exporters read
    their own standard variables (endpoint, headers, timeout, compression).
    ``on_export_failure(n)`` is told of each batch of ``n`` spans that failed to export.
    Raises :class:`TracingConfigError` naming the variable at fault.
    """
    exporters = [_exporter(name) for name in exporter_names()]
    if not exporters:
        return None
    provider = new_provider()
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(_CountingExporter(exporter, on_export_failure)))
    return provider


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    if name != "otlp":
        raise TracingConfigError(f"OTEL_TRACES_EXPORTER: unknown exporter {name!r} (use otlp, console or none)")
    variable = (
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
        if os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        else "OTEL_EXPORTER_OTLP_PROTOCOL"
    )
    protocol = os.environ.get(variable, "").strip() or DEFAULT_OTLP_PROTOCOL
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
        except ImportError:
            raise TracingConfigError(
                f"{variable}=grpc needs the gRPC exporter: pip install 'heartbeat-bridge[grpc]'"
            ) from None
        return GrpcExporter()
    raise TracingConfigError(f"{variable} must be http/protobuf or grpc, got {protocol!r}")


class _CountingExporter(SpanExporter):
    """Passes spans on, and reports every batch that could not be exported."""

    def __init__(self, inner: SpanExporter, on_failure: Callable[[int], None] | None):
        self._inner = inner
        self._on_failure = on_failure

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._inner.export(spans)
        except Exception:  # an exporter bug must not kill the export thread
            log.exception("span export raised")
            result = SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS and self._on_failure is not None:
            try:
                self._on_failure(len(spans))
            except Exception:
                log.exception("could not count a failed span export")
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._inner.force_flush(timeout_millis)


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _parent(traceparent: str | None) -> Context | None:
    """Return the context of a W3C ``traceparent``, or None for a root span."""
    if not traceparent:
        return None
    _version, trace_id, span_id, flags = traceparent.split("-")
    remote = SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=True, trace_flags=TraceFlags(int(flags, 16)))
    return trace.set_span_in_context(NonRecordingSpan(remote))


class ExecutionSpans:
    """Turns an ended segment of an execution into its spans."""

    def __init__(self, provider: TracerProvider, on_error: Callable[[], None] | None = None):
        if not isinstance(provider.id_generator, PresetIdGenerator):
            raise TypeError("the provider must come from bridge.telemetry.tracing.new_provider()")
        self._ids: PresetIdGenerator = provider.id_generator
        self._tracer = provider.get_tracer(INSTRUMENTATION_NAME, __version__)
        self._on_error = on_error

    def emit(self, record: Execution) -> None:
        """Emit the execution span of ``record``'s current segment and its stage children.

        Never raises: a failure is logged and reported to ``on_error``, since telemetry
        must not fail the request that ended the execution.
        """
        try:
            self._emit(record)
        except Exception:
            log.exception("could not build the span of execution %s", record.execution_id)
            if self._on_error is not None:
                try:
                    self._on_error()
                except Exception:
                    log.exception("could not count a span error")

    def _emit(self, record: Execution) -> None:
        start = record.segment_started_at or record.started_at
        end = max(start, record.ended_at if record.ended_at is not None else record.updated_at)
        trace_id = int(record.trace_id, 16)
        links = []
        if record.segment > 0:  # a recovery: point back at the segment that was lost
            previous = SpanContext(
                trace_id,
                int(segment_span_id(record.execution_id, record.segment - 1), 16),
                is_remote=True,
                trace_flags=TraceFlags(TraceFlags.SAMPLED),
            )
            links.append(Link(previous, {"task.link": "recovered_from"}))
        with self._ids.preset(trace_id, int(segment_span_id(record.execution_id, record.segment), 16)):
            span = self._tracer.start_span(
                EXECUTION_SPAN,
                context=_parent(record.traceparent),
                kind=SpanKind.INTERNAL,
                start_time=_ns(start),
                links=links,
                attributes=_attributes(record),
            )
        for at, status, reported in record.events:
            span.add_event(
                STATUS_EVENT,
                {"task.status": status, "task.reported_status": reported or ""},
                timestamp=_ns(min(max(at, start), end)),
            )
        inside = trace.set_span_in_context(span)
        for stage, stage_start, stage_end in record.stages:
            stage_start = min(max(stage_start, start), end)
            child = self._tracer.start_span(
                stage,
                context=inside,
                start_time=_ns(stage_start),
                attributes={"task.stage": stage, "task.execution_id": record.execution_id},
            )
            child.end(end_time=_ns(min(max(stage_end if stage_end is not None else end, stage_start), end)))
        if record.status == "completed":
            span.set_status(Status(StatusCode.OK))
        else:
            span.set_status(Status(StatusCode.ERROR, record.error_message or record.status_reason or record.status))
        span.end(end_time=_ns(end))


def _attributes(record: Execution) -> dict[str, Any]:
    attributes = {
        "task.execution_id": record.execution_id,
        "task.name": record.task_name or "",
        "task.type": record.task_type or "",
        "task.status": record.status,
        "task.heartbeat_count": record.heartbeat_count,
        "task.interval_seconds": record.interval_seconds,
        "task.recoveries": record.recoveries,
        "task.segment": record.segment,
        "task.progress": json.dumps(record.progress, ensure_ascii=False)[:MAX_PROGRESS_ATTRIBUTE],
    }
    if record.progress_ratio is not None:
        attributes["task.progress.ratio"] = record.progress_ratio
    if record.stages:
        attributes["task.progress.stage"] = record.stages[-1].name
    if record.container_id:
        attributes["container.id"] = record.container_id
    if record.container_name:
        attributes["container.name"] = record.container_name
    if record.image:
        attributes["container.image.name"] = record.image
    if record.exit_code is not None:
        attributes["process.exit.code"] = record.exit_code
    if record.status == "lost":
        attributes["error.type"] = "lost"
    elif record.status == "failed":
        attributes["error.type"] = (
            "oom_killed"
            if record.oom_killed
            else "container_exited"
            if record.end_cause == "container"
            else "task_failed"
        )
    return attributes
