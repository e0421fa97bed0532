"""Prometheus metrics collected from the shared store at scrape time.

The families are defined in :mod:`bridge.telemetry.families`; rendering and collection (a
store snapshot into families) live here; exposition is the ``/metrics`` view. Each
execution's samples are rendered when the store writes it (:class:`ExecutionRenderer`), so
a scrape copies the texts the store keeps. Nothing is kept in a worker's memory, so every
worker and replica answers the same, and prometheus-client's multiprocess mode is not needed.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from operator import itemgetter
from typing import Any

from prometheus_client.core import CounterMetricFamily, Exemplar, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from .. import __version__
from ..core.declarations import DEFAULT_FAILURE_THRESHOLD
from ..core.executions import STATUSES, Execution
from ..core.tasks import TASK_STATUSES, UNHEALTHY_STATUSES, effective_declaration, is_paused, status_at
from ..store import Snapshot, Store
from . import families as f

__all__ = ["INGEST_ENDPOINTS", "REJECTION_REASONS", "ExecutionRenderer", "Exposition"]

OUTCOMES = ("success", "failure")
INGEST_ENDPOINTS = (
    "heartbeat",
    "heartbeats",
    "completion",
    "container_event",
    "announcement",
    "tasks",
    "ping",
    "sentry",
)
REJECTION_REASONS = (
    "invalid_json",
    "invalid_field",
    "too_large",
    "unsupported_media_type",
    "capacity",
    "unauthorized",
    "forbidden",
)
TELEMETRY_STAGES = ("build", "export")
_BUCKET_LABELS = tuple(f"{b:g}" for b in f.DURATION_BUCKETS) + ("+Inf",)


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


# The per-execution families' names, in the order of EXECUTION_FAMILIES, for the renderer.
_INFO, _STATUS, _LAST, _INTERVAL, _START, _END, _RATIO, _MAX_RUNTIME = (family.name for family in f.EXECUTION_FAMILIES)


#: The tasks' gauge families, in exposition order.
_TASK_GAUGES = (
    f.TASK_INFO,
    f.TASK_STATUS,
    f.TASK_LAST_START,
    f.TASK_LAST_SUCCESS,
    f.TASK_LAST_FAILURE,
    f.TASK_NEXT_DEADLINE,
    f.TASK_CONSECUTIVE_FAILURES,
    f.TASK_FAILURE_THRESHOLD,
    f.TASK_EXPECTED_MAX_RUNTIME,
    f.TASK_MAX_CONCURRENCY,
    f.TASK_UPSTREAM_UNHEALTHY,
    f.TASK_UPSTREAM_BLOCKING,
    f.TASK_PAUSED_UNTIL,
)


_TASK_COUNTERS = (f.TASK_MISSED, f.TASK_TOO_SHORT, f.TASK_UNEXPECTED)


#: Bumped when the per-execution text changes shape: a store rendered under another signature
#: renders its executions again when it opens.
_RENDERING_VERSION = 1


#: What the info family's samples read of a record besides the execution id and task name.
_INFO_READS = ("container_id", "task_type", "trace_id", "container_name", "image", "labels")
#: The families after info and status, in exposition order: each a sample of one record field,
#: none while the field is None. (sample name, field)
_VALUE_FAMILIES = (
    (_LAST, "last_heartbeat_at"),
    (_INTERVAL, "interval_seconds"),
    (_START, "started_at"),
    (_END, "ended_at"),
    (_RATIO, "progress_ratio"),
    (_MAX_RUNTIME, "max_runtime_seconds"),
)


#: (record field, the family whose samples read it), for every field a sample reads besides
#: the execution id and task name, which every sample carries.
_READS = (
    *((field, 0) for field in _INFO_READS),
    ("status", 1),
    *((field, family) for family, (_, field) in enumerate(_VALUE_FAMILIES, start=2)),
)


# A heartbeat on a running execution moves its last heartbeat, interval and progress, and
# seldom anything else: the fields every other family reads are compared at once.
_MOVED_BY_HEARTBEATS = tuple(
    (family, name, field)
    for family, (name, field) in enumerate(_VALUE_FAMILIES, start=2)
    if name in (_LAST, _INTERVAL, _RATIO)
)
_SELDOM_READ = itemgetter(
    *(field for field, family in _READS if family not in {family for family, _, _ in _MOVED_BY_HEARTBEATS})
)


def _key(record: Execution) -> str:
    """Return the labels every sample of ``record`` carries."""
    return f'execution_id="{_escape(record.execution_id)}",task_name="{_escape(record.metric_task_name)}"'


def _status(record: Execution, key: str) -> str:
    # The status lines come from a prefix and ready-made endings.
    status = f'{_STATUS}{{{key},status="'
    return status + status.join(_STATUS_ENDINGS[record.status])


def _sample(name: str, braced: str, value: float | None) -> str:
    """Return the sample of a family of one value (none for None), ``braced`` its labels."""
    return "" if value is None else f"{name}{braced}{_number(value)}\n"


def _value(name: str, field: str) -> Callable[[Execution, str], str]:
    def render(record: Execution, key: str) -> str:
        return _sample(name, f"{{{key}}} ", getattr(record, field))

    return render


class ExecutionRenderer:
    """Renders an execution's samples of the per-execution families when it is written.

    The store keeps the text beside the record, so that a scrape concatenates bytes it
    already holds (kube-state-metrics renders at write time the same way). Prometheus text
    and OpenMetrics agree on gauges, so one rendering serves both.
    """

    def __init__(self, metric_labels: tuple[str, ...] = ()) -> None:
        #: the execution ``labels`` keys exported as ``label_<key>`` on task_execution_info
        self.metric_labels = metric_labels
        #: how many texts :meth:`__call__` returns: one per family, in exposition order
        self.families = len(f.EXECUTION_FAMILIES)
        #: what the text depends on beyond the record: the format and the exported label keys
        self.signature = f"{_RENDERING_VERSION}:{','.join(metric_labels)}"
        # Per family, in exposition order: how its samples are rendered. _READS says what each
        # reads, so that a family is rendered again exactly when what it reads changed.
        self._renders: tuple[Callable[[Execution, str], str], ...] = (
            self._info,
            _status,
            *(_value(name, field) for name, field in _VALUE_FAMILIES),
        )

    def __call__(self, record: Execution) -> tuple[str, ...]:
        """Return the text of ``record``'s samples, one string per family of
        :data:`~bridge.telemetry.families.EXECUTION_FAMILIES` (empty where it has none)."""
        key = _key(record)
        return tuple([render(record, key) for render in self._renders])

    def changes(self, before: Execution | None, after: Execution) -> dict[int, str]:
        """Return the texts of ``after`` that may differ from those of ``before``, by family
        index: the families whose samples read a field that changed. Every family is
        rendered when ``before`` is another execution or had another task name; with
        ``before`` None, every family that has samples. A family left out has the same text
        for both records."""
        if before is None:
            return {family: text for family, text in enumerate(self(after)) if text}
        if before.execution_id != after.execution_id or before.metric_task_name != after.metric_task_name:
            return dict(enumerate(self(after)))
        key = _key(after)
        was, now = vars(before), vars(after)
        if _SELDOM_READ(was) == _SELDOM_READ(now):
            braced = f"{{{key}}} "
            return {
                family: _sample(name, braced, now[field])
                for family, name, field in _MOVED_BY_HEARTBEATS
                if was[field] != now[field]
            }
        changed = dict.fromkeys(family for field, family in _READS if was[field] != now[field])  # in family order
        return {family: self._renders[family](after, key) for family in changed}

    def _info(self, record: Execution, key: str) -> str:
        labels = record.labels or {}
        extra = "".join(f',label_{name}="{_escape(labels.get(name, ""))}"' for name in self.metric_labels)
        return (
            f'{_INFO}{{{key},container_id="{_escape(record.container_id or "")}",'
            f'task_type="{_escape(record.task_type or "")}",trace_id="{record.trace_id}",'
            f'container_name="{_escape(record.container_name or "")}",'
            f'image="{_escape(record.image or "")}"{extra}}} 1.0\n'
        )


#: For each current status, the end of every status line after ``status="``, in order.
_STATUS_ENDINGS = {
    current: [f'{name}"}} {"1.0" if name == current else "0.0"}\n' for name in STATUSES] for current in STATUSES
}


class Exposition:
    """One scrape: a store snapshot, rendered as Prometheus text or OpenMetrics."""

    def __init__(
        self,
        store: Store,
        clock: Callable[[], float] = time.time,
        metric_labels: tuple[str, ...] = (),
        version: str = __version__,
    ):
        self.store = store
        self.clock = clock
        self.metric_labels = metric_labels
        self.version = version

    def render(self, accept: str) -> tuple[list[bytes], str]:
        """Return (body, content type) for a scraper sending the ``Accept`` header ``accept``;
        the body is a list of byte strings to send one after the other, never joined, since
        the executions' part of it can be a hundred megabytes.

        Raises :class:`~bridge.store.StoreUnavailable`.
        """
        encoder, content_type = choose_encoder(accept)
        snapshot = self.store.snapshot()
        bounded = encoder(
            _Families([*self._per_task(snapshot), *self._task_counters(snapshot), *self._bridge(snapshot)])
        )
        # The gauges first: OpenMetrics's "# EOF" closes the part prometheus-client encodes.
        # Each execution's samples were rendered when it was written: here they are only copied.
        parts = []
        for family, samples in zip(f.EXECUTION_FAMILIES, snapshot.exposition):
            parts.append(f"# HELP {family.name} {family.documentation}\n# TYPE {family.name} {family.type}\n".encode())
            parts.extend(samples)
        parts.append(self._task_gauges(snapshot).encode())
        parts.append(bounded)
        return parts, content_type

    def _per_task(self, snapshot: Snapshot) -> Iterable[Metric]:
        counters = snapshot.counters
        # Every known task name gets zeros, so increase() sees the first event.
        now = snapshot.executions
        tasks = set(snapshot.task_names) | {task for task, _ in now}
        tasks |= {labels[0] for (name, labels) in counters if name.startswith("task_")}
        executions = _family(f.TASK_EXECUTIONS)
        per_task = [_family(family) for family in (f.TASK_HEARTBEATS, f.TASK_LOST, f.TASK_RECOVERIES)]
        completions = _family(f.TASK_COMPLETIONS)
        for task in sorted(tasks):
            for name in STATUSES:
                executions.add_metric([task, name], now.get((task, name), 0))
            for family, definition in zip(per_task, (f.TASK_HEARTBEATS, f.TASK_LOST, f.TASK_RECOVERIES)):
                family.add_metric([task], counters.get((definition.name, (task,)), 0.0))
            for outcome in OUTCOMES:
                completions.add_metric([task, outcome], counters.get((f.COMPLETIONS, (task, outcome)), 0.0))
        heartbeats, lost, recoveries = per_task
        return (executions, heartbeats, completions, lost, recoveries, _durations(counters, snapshot.exemplars))

    def _task_gauges(self, snapshot: Snapshot) -> str:
        """Return the text of the tasks' gauges: what each is, its status now, its last runs,
        its next deadline. Rendered here like the executions' (the same in both formats), for
        prometheus-client's encoders take several times as long per sample."""
        now = self.clock()
        lines: list[list[str]] = [[] for _ in _TASK_GAUGES]
        (
            info,
            status,
            last_start,
            last_success,
            last_failure,
            deadline,
            failures,
            threshold,
            budget,
            concurrency,
            upstream,
            blocking,
            paused_until,
        ) = lines
        statuses = {task.task_name: status_at(task, now) for task in snapshot.tasks}
        for task in snapshot.tasks:
            key = f'task_name="{_escape(task.task_name)}"'
            declared, _ = effective_declaration(task)
            labels = declared.labels if declared is not None else {}
            extra = "".join(f',label_{name}="{_escape(labels.get(name, ""))}"' for name in self.metric_labels)
            info.append(
                f'{f.TASK_INFO.name}{{{key},task_type="{_escape(task.task_type or "")}",'
                f'schedule="{_escape(declared.schedule_text if declared is not None else "")}"{extra}}} 1.0\n'
            )
            current = statuses[task.task_name]
            for each in TASK_STATUSES:
                status.append(f'{f.TASK_STATUS.name}{{{key},status="{each}"}} {"1.0" if each == current else "0.0"}\n')
            for family, found, value in (
                (f.TASK_LAST_START, last_start, task.last_start_at),
                (f.TASK_LAST_SUCCESS, last_success, task.last_success_at),
                (f.TASK_LAST_FAILURE, last_failure, task.last_failure_at),
                (f.TASK_NEXT_DEADLINE, deadline, None if task.paused else task.deadline_at),
                (f.TASK_CONSECUTIVE_FAILURES, failures, task.consecutive_failures),
                (
                    f.TASK_FAILURE_THRESHOLD,
                    threshold,
                    declared.failure_threshold if declared is not None else DEFAULT_FAILURE_THRESHOLD,
                ),
                (f.TASK_EXPECTED_MAX_RUNTIME, budget, declared.max_runtime_seconds if declared else None),
                (f.TASK_MAX_CONCURRENCY, concurrency, declared.max_concurrency if declared else None),
                (
                    f.TASK_UPSTREAM_UNHEALTHY,
                    upstream,
                    (
                        float(any(statuses.get(name) in UNHEALTHY_STATUSES for name in declared.depends_on))
                        if declared is not None and declared.depends_on
                        else None
                    ),
                ),
            ):
                if value is not None:
                    found.append(f"{family.name}{{{key}}} {_number(value)}\n")
            if task.paused_until is not None and is_paused(task, now):
                paused_until.append(f"{f.TASK_PAUSED_UNTIL.name}{{{key}}} {_number(task.paused_until)}\n")
            for name in declared.depends_on if declared is not None else ():
                if statuses.get(name) in UNHEALTHY_STATUSES:
                    blocking.append(f'{f.TASK_UPSTREAM_BLOCKING.name}{{{key},upstream="{_escape(name)}"}} 1.0\n')
        return "".join(
            f"# HELP {family.name} {family.documentation}\n# TYPE {family.name} {family.type}\n" + "".join(family_lines)
            for family, family_lines in zip(_TASK_GAUGES, lines)
        )

    def _task_counters(self, snapshot: Snapshot) -> Iterable[Metric]:
        # Every task gets its zeros, so that increase() sees the first event.
        families = [_family(definition) for definition in _TASK_COUNTERS]
        for task in snapshot.tasks:
            for family, definition in zip(families, _TASK_COUNTERS):
                family.add_metric([task.task_name], snapshot.counters.get((definition.name, (task.task_name,)), 0.0))
        return families

    def _bridge(self, snapshot: Snapshot) -> Iterable[Metric]:
        rejected = _family(f.BRIDGE_REJECTED)
        seen = {labels for (name, labels) in snapshot.counters if name == f.REJECTED}
        for endpoint, reason in sorted(seen | {(e, r) for e in INGEST_ENDPOINTS for r in REJECTION_REASONS}):
            rejected.add_metric([endpoint, reason], snapshot.counters.get((f.REJECTED, (endpoint, reason)), 0.0))
        telemetry = _family(f.BRIDGE_TELEMETRY_ERRORS)
        for stage in TELEMETRY_STAGES:
            telemetry.add_metric([stage], snapshot.counters.get((f.TELEMETRY_ERRORS, (stage,)), 0.0))
        build = _family(f.BRIDGE_BUILD_INFO)
        build.add_metric([self.version], 1)
        tasks_file = [
            _family(definition, float(snapshot.notes[note]))
            for definition, note in (
                (f.BRIDGE_TASKS_FILE_OK, f.TASKS_FILE_OK),
                (f.BRIDGE_TASKS_FILE_RELOADED, f.TASKS_FILE_RELOADED_AT),
            )
            if isinstance(snapshot.notes.get(note), (int, float))
        ]
        return (
            rejected,
            telemetry,
            *tasks_file,
            _family(f.BRIDGE_TRACKED, sum(snapshot.executions.values())),
            _family(f.BRIDGE_TRACKED_LIMIT, self.store.max_executions),
            _family(f.BRIDGE_TASK_NAMES, len(snapshot.task_names)),
            _family(f.BRIDGE_TASK_NAMES_LIMIT, self.store.max_task_names),
            build,
        )


_KINDS = {"gauge": GaugeMetricFamily, "counter": CounterMetricFamily, "histogram": HistogramMetricFamily}


def _family(definition: f.Family, value: float | None = None) -> Any:
    """Return an empty prometheus-client family for ``definition`` (with ``value``: its one sample):
    a gauge, counter or histogram family, whose ``add_metric`` differ (hence ``Any``)."""
    kind = _KINDS[definition.type]
    if value is not None:
        return kind(definition.name, definition.documentation, value=value)
    return kind(definition.name, definition.documentation, labels=list(definition.labels))


def _durations(
    counters: dict[tuple[str, tuple[str, ...]], float], exemplars: dict[tuple[str, tuple[str, ...]], tuple[str, float]]
) -> HistogramMetricFamily:
    """Return the duration histogram; each bucket's exemplar is its latest execution's trace."""
    family = _family(f.TASK_DURATION)
    buckets: dict[tuple[str, ...], dict[str, float]] = defaultdict(dict)
    for (name, labels), value in counters.items():
        if name == f.DURATION + "_bucket":
            buckets[labels[:2]][labels[2]] = value
    for key in sorted(buckets):
        cumulative, rows = 0.0, []
        for le in _BUCKET_LABELS:
            cumulative += buckets[key].get(le, 0.0)
            exemplar = exemplars.get((f.DURATION + "_bucket", key + (le,)))
            rows.append(
                (le, cumulative, Exemplar({"trace_id": exemplar[0]}, exemplar[1])) if exemplar else (le, cumulative)
            )
        family.add_metric(list(key), rows, counters.get((f.DURATION + "_sum", key), 0.0))
    return family
