"""Prometheus metrics read from the shared store at scrape time (DESIGN.md section 4).

Definitions (the family names and help texts) and collection live here; exposition
is the ``/metrics`` view. Nothing is kept in a worker's memory, so every worker and
replica answers the same, and prometheus-client's multiprocess mode is not needed.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Iterable

from prometheus_client.core import (CounterMetricFamily, Exemplar, GaugeMetricFamily,
                                    HistogramMetricFamily, Metric)
from prometheus_client.exposition import choose_encoder

from . import __version__
from .state import (COMPLETIONS, DURATION, DURATION_BUCKETS, HEARTBEATS, LOST, RECOVERIES,
                    STATUSES)
from .monitor import REJECTED, TELEMETRY_ERRORS
from .store import ExecutionRow, Snapshot, Store

__all__ = ["EXECUTION_FAMILIES", "ExecutionRenderer", "Exposition", "INGEST_ENDPOINTS", "REJECTION_REASONS"]

OUTCOMES = ("success", "failure")
INGEST_ENDPOINTS = ("heartbeat", "heartbeats", "completion", "container_event")
REJECTION_REASONS = ("invalid_json", "invalid_field", "too_large", "unsupported_media_type",
                     "capacity", "unauthorized", "forbidden")
TELEMETRY_STAGES = ("build", "export")
_BUCKET_LABELS = tuple(f"{b:g}" for b in DURATION_BUCKETS) + ("+Inf",)


class _Families:
    """Hands a list of families to prometheus-client's encoders, which want a registry."""

    def __init__(self, families: list[Metric]):
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return repr(float(value))


#: (name, help) of the per-execution gauge families, in exposition order.
EXECUTION_FAMILIES = (
    ("task_execution_info", "Identity of each tracked execution; always 1."),
    ("task_execution_status", "1 for the execution's current status, 0 for the others."),
    ("task_heartbeat_last_timestamp_seconds", "When the bridge last received a heartbeat (unix seconds)."),
    ("task_heartbeat_interval_seconds", "Heartbeat interval the bridge expects (sent, learned or default)."),
    ("task_execution_start_timestamp_seconds", "When the bridge first heard of the execution (unix seconds)."),
    ("task_execution_end_timestamp_seconds", "When the execution completed or failed (unix seconds)."),
    ("task_progress_ratio", "Reported progress from 0 to 1 (percentage or current_step/total_steps)."),
    ("task_execution_max_runtime_seconds", "Longest run the task declared for itself (max_runtime_seconds)."),
)


class ExecutionRenderer:
    """Renders the per-execution families as exposition text, fast.

    Prometheus text and OpenMetrics agree on gauges, so one rendering serves both. Each
    execution's escaped label set is kept between scrapes and rebuilt only when its
    identity changes; executions that left the store leave the cache with the next scrape.
    """

    def __init__(self) -> None:
        self._labels: dict[str, tuple[tuple, str, str]] = {}

    def render(self, rows: list[ExecutionRow]) -> str:
        """Return the text of every per-execution family for ``rows``."""
        families: list[list[str]] = [[] for _ in EXECUTION_FAMILIES]
        info, status, last, interval, start, end, ratio, max_runtime = families
        previous, labels = self._labels, {}
        for row in rows:
            identity = row[2:8]
            cached = previous.get(row.execution_id)
            if cached is None or cached[0] != identity:
                cached = _label_sets(row, identity)
            labels[row.execution_id] = cached
            _, key, info_line = cached
            info.append(info_line)
            for name in STATUSES:
                status.append(f'task_execution_status{{{key},status="{name}"}} '
                              f'{"1.0" if name == row.status else "0.0"}\n')
            interval.append(f"task_heartbeat_interval_seconds{{{key}}} {_number(row.interval_seconds)}\n")
            start.append(f"task_execution_start_timestamp_seconds{{{key}}} {_number(row.started_at)}\n")
            if row.last_heartbeat_at is not None:
                last.append(f"task_heartbeat_last_timestamp_seconds{{{key}}} {_number(row.last_heartbeat_at)}\n")
            if row.ended_at is not None:
                end.append(f"task_execution_end_timestamp_seconds{{{key}}} {_number(row.ended_at)}\n")
            if row.progress_ratio is not None:
                ratio.append(f"task_progress_ratio{{{key}}} {_number(row.progress_ratio)}\n")
            if row.max_runtime_seconds is not None:
                max_runtime.append(f"task_execution_max_runtime_seconds{{{key}}} "
                                   f"{_number(row.max_runtime_seconds)}\n")
        self._labels = labels
        parts = []
        for (name, documentation), lines in zip(EXECUTION_FAMILIES, families):
            parts.append(f"# HELP {name} {documentation}\n# TYPE {name} gauge\n")
            parts.extend(lines)
        return "".join(parts)


def _label_sets(row: ExecutionRow, identity: tuple) -> tuple[tuple, str, str]:
    key = f'execution_id="{_escape(row.execution_id)}",task_name="{_escape(row.task_name)}"'
    info = (f'task_execution_info{{{key},container_id="{_escape(row.container_id or "")}",'
            f'task_type="{_escape(row.task_type or "")}",trace_id="{row.trace_id}",'
            f'container_name="{_escape(row.container_name or "")}",image="{_escape(row.image or "")}"}} 1.0\n')
    return identity, key, info


class Exposition:
    """One scrape: a store snapshot, rendered as Prometheus text or OpenMetrics."""

    def __init__(self, store: Store, version: str = __version__):
        self.store = store
        self.version = version
        self._renderer = ExecutionRenderer()

    def render(self, accept: str) -> tuple[bytes, str]:
        """Return (body, content type) for a scraper sending the ``Accept`` header ``accept``.

        Raises :class:`~bridge.store.StoreUnavailable`.
        """
        encoder, content_type = choose_encoder(accept)
        snapshot = self.store.snapshot()
        bounded = encoder(_Families([*self._per_task(snapshot), *self._bridge(snapshot)]))
        # Per-execution families first: OpenMetrics's "# EOF" closes the bounded part.
        return self._renderer.render(snapshot.rows).encode() + bounded, content_type

    def _per_task(self, snapshot: Snapshot) -> Iterable[Metric]:
        counters = snapshot.counters
        # Every known task name gets zeros, so increase() sees the first event.
        tasks = set(snapshot.task_names) | {r.task_name for r in snapshot.rows}
        tasks |= {labels[0] for (name, labels) in counters if name.startswith("task_")}
        now = Counter((r.task_name, r.status) for r in snapshot.rows)
        executions = GaugeMetricFamily("task_executions",
                                       "Tracked executions by task name and current status.",
                                       labels=["task_name", "status"])
        heartbeats = _task_counter(HEARTBEATS, "Heartbeats applied to executions.")
        lost = _task_counter(LOST, "Times an execution became lost (no heartbeat in time).")
        recoveries = _task_counter(RECOVERIES, "Times a lost execution sent a heartbeat again.")
        completions = CounterMetricFamily(
            COMPLETIONS, "Executions that ended, by outcome (completion, reported final "
            "status at its deadline, or container death).", labels=["task_name", "outcome"])
        for task in sorted(tasks):
            for name in STATUSES:
                executions.add_metric([task, name], now[(task, name)])
            for family, counter in ((heartbeats, HEARTBEATS), (lost, LOST), (recoveries, RECOVERIES)):
                family.add_metric([task], counters.get((counter, (task,)), 0.0))
            for outcome in OUTCOMES:
                completions.add_metric([task, outcome], counters.get((COMPLETIONS, (task, outcome)), 0.0))
        return (executions, heartbeats, completions, lost, recoveries,
                _durations(counters, snapshot.exemplars))

    def _bridge(self, snapshot: Snapshot) -> Iterable[Metric]:
        rejected = CounterMetricFamily(REJECTED, "Ingest requests refused, by endpoint and reason.",
                                       labels=["endpoint", "reason"])
        seen = {labels for (name, labels) in snapshot.counters if name == REJECTED}
        for endpoint, reason in sorted(seen | {(e, r) for e in INGEST_ENDPOINTS
                                               for r in REJECTION_REASONS}):
            rejected.add_metric([endpoint, reason],
                                snapshot.counters.get((REJECTED, (endpoint, reason)), 0.0))
        telemetry = CounterMetricFamily(TELEMETRY_ERRORS,
                                        "Execution spans that could not be built or exported.",
                                        labels=["stage"])
        for stage in TELEMETRY_STAGES:
            telemetry.add_metric([stage], snapshot.counters.get((TELEMETRY_ERRORS, (stage,)), 0.0))
        limit = self.store.max_executions
        build = GaugeMetricFamily("bridge_build_info", "Version of the running bridge; always 1.",
                                  labels=["version"])
        build.add_metric([self.version], 1)
        return (
            rejected,
            telemetry,
            GaugeMetricFamily("bridge_tracked_executions", "Executions the bridge tracks now.",
                              value=len(snapshot.rows)),
            GaugeMetricFamily("bridge_tracked_executions_limit",
                              "Most executions the bridge will track (BRIDGE_MAX_EXECUTIONS).",
                              value=limit),
            GaugeMetricFamily("bridge_task_names", "Distinct task names in metric labels.",
                              value=len(snapshot.task_names)),
            GaugeMetricFamily("bridge_task_names_limit",
                              "Most distinct task names before _other (BRIDGE_MAX_TASK_NAMES).",
                              value=self.store.max_task_names),
            build,
        )


def _task_counter(name: str, documentation: str) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, labels=["task_name"])


def _durations(counters: dict[tuple[str, tuple[str, ...]], float],
               exemplars: dict[tuple[str, tuple[str, ...]], tuple[str, float]]) -> HistogramMetricFamily:
    """Return the duration histogram; each bucket's exemplar is its latest execution's trace."""
    family = HistogramMetricFamily(
        DURATION, "Run time of executions that ended, from first sight to end.",
        labels=["task_name", "outcome"])
    buckets: dict[tuple[str, ...], dict[str, float]] = defaultdict(dict)
    for (name, labels), value in counters.items():
        if name == DURATION + "_bucket":
            buckets[labels[:2]][labels[2]] = value
    for key in sorted(buckets):
        cumulative, rows = 0.0, []
        for le in _BUCKET_LABELS:
            cumulative += buckets[key].get(le, 0.0)
            exemplar = exemplars.get((DURATION + "_bucket", key + (le,)))
            rows.append((le, cumulative, Exemplar({"trace_id": exemplar[0]}, exemplar[1]))
                        if exemplar else (le, cumulative))
        family.add_metric(list(key), rows, counters.get((DURATION + "_sum", key), 0.0))
    return family
