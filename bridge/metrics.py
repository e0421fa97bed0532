"""Prometheus metrics read from the shared store at scrape time (DESIGN.md section 4).

Definitions (the family names and help texts) and collection live here; exposition
is the ``/metrics`` view. Nothing is kept in a worker's memory, so every worker and
replica answers the same, and prometheus-client's multiprocess mode is not needed.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Iterable, Iterator

from prometheus_client.core import (CounterMetricFamily, Exemplar, GaugeMetricFamily,
                                    HistogramMetricFamily, Metric)
from prometheus_client.registry import Collector

from . import __version__
from .state import (COMPLETIONS, DURATION, DURATION_BUCKETS, HEARTBEATS, LOST, RECOVERIES,
                    STATUSES)
from .monitor import REJECTED, TELEMETRY_ERRORS
from .store import Snapshot, Store

__all__ = ["ExecutionCollector", "REJECTION_REASONS", "INGEST_ENDPOINTS"]

OUTCOMES = ("success", "failure")
INGEST_ENDPOINTS = ("heartbeat", "heartbeats", "completion", "container_event")
REJECTION_REASONS = ("invalid_json", "invalid_field", "too_large", "unsupported_media_type",
                     "capacity")
TELEMETRY_STAGES = ("build", "export")
_BUCKET_LABELS = tuple(f"{b:g}" for b in DURATION_BUCKETS) + ("+Inf",)


class ExecutionCollector(Collector):
    """Yields every ``task_*`` and ``bridge_*`` family from one store snapshot."""

    def __init__(self, store: Store, version: str = __version__):
        self.store = store
        self.version = version

    def collect(self) -> Iterator[Metric]:
        """Yield the metric families. Raises :class:`~bridge.store.StoreUnavailable`."""
        snapshot = self.store.snapshot()
        yield from self._per_execution(snapshot)
        yield from self._per_task(snapshot)
        yield from self._bridge(snapshot)

    def _per_execution(self, snapshot: Snapshot) -> Iterable[Metric]:
        info = GaugeMetricFamily(
            "task_execution_info", "Identity of each tracked execution; always 1.",
            labels=["execution_id", "container_id", "task_name", "task_type", "trace_id",
                    "container_name", "image"])
        status = GaugeMetricFamily(
            "task_execution_status",
            "1 for the execution's current status, 0 for the others.",
            labels=["execution_id", "task_name", "status"])
        last = _execution_gauge("task_heartbeat_last_timestamp_seconds",
                                "When the bridge last received a heartbeat (unix seconds).")
        interval = _execution_gauge("task_heartbeat_interval_seconds",
                                    "Heartbeat interval the bridge expects (sent, learned or default).")
        start = _execution_gauge("task_execution_start_timestamp_seconds",
                                 "When the bridge first heard of the execution (unix seconds).")
        end = _execution_gauge("task_execution_end_timestamp_seconds",
                               "When the execution completed or failed (unix seconds).")
        ratio = _execution_gauge("task_progress_ratio",
                                 "Reported progress from 0 to 1 (percentage or current_step/total_steps).")
        max_runtime = _execution_gauge("task_execution_max_runtime_seconds",
                                       "Longest run the task declared for itself (max_runtime_seconds).")
        for e in snapshot.executions:
            key = [e.execution_id, e.metric_task_name]
            info.add_metric([e.execution_id, e.container_id or "", e.metric_task_name,
                             e.task_type or "", e.trace_id, e.container_name or "", e.image or ""], 1)
            for name in STATUSES:
                status.add_metric(key + [name], 1 if e.status == name else 0)
            interval.add_metric(key, e.interval_seconds)
            start.add_metric(key, e.started_at)
            if e.last_heartbeat_at is not None:
                last.add_metric(key, e.last_heartbeat_at)
            if e.ended_at is not None:
                end.add_metric(key, e.ended_at)
            if e.progress_ratio is not None:
                ratio.add_metric(key, e.progress_ratio)
            if e.max_runtime_seconds is not None:
                max_runtime.add_metric(key, e.max_runtime_seconds)
        return info, status, last, interval, start, end, ratio, max_runtime

    def _per_task(self, snapshot: Snapshot) -> Iterable[Metric]:
        counters = snapshot.counters
        # Every known task name gets zeros, so increase() sees the first event.
        tasks = set(snapshot.task_names) | {e.metric_task_name for e in snapshot.executions}
        tasks |= {labels[0] for (name, labels) in counters if name.startswith("task_")}
        now = Counter((e.metric_task_name, e.status) for e in snapshot.executions)
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
                              value=len(snapshot.executions)),
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


def _execution_gauge(name: str, documentation: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=["execution_id", "task_name"])


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
