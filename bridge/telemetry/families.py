"""Every metric family the bridge exposes, defined once: name, type, help text, labels.

Pure data. The rules name the counters they move from here, the stores keep those
counters under these names, and the collector (:mod:`bridge.telemetry.metrics`) builds
its families from here; no other module spells a metric name.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.counters import (
    COMPLETIONS,
    DURATION,
    DURATION_BUCKETS,
    HEARTBEATS,
    LOST,
    RECOVERIES,
    TASK_RUNS_MISSED,
    TASK_RUNS_TOO_SHORT,
    TASK_RUNS_UNEXPECTED,
)

__all__ = [
    "COMPLETIONS",
    "DURATION",
    "DURATION_BUCKETS",
    "EXECUTION_FAMILIES",
    "HEARTBEATS",
    "LOST",
    "RECOVERIES",
    "REJECTED",
    "TELEMETRY_ERRORS",
    "Family",
]


@dataclass(frozen=True)
class Family:
    """One metric family as exposed; ``name`` is the sample name (a counter's ends in ``_total``)."""

    name: str
    type: str
    documentation: str
    labels: tuple[str, ...] = ()


# The counters the bridge keeps in its store, by the name of their samples: those the rules
# move are named in the core (bridge.core.counters); the service's own here.
REJECTED = "bridge_requests_rejected_total"
TELEMETRY_ERRORS = "bridge_telemetry_errors_total"

_EXECUTION = ("execution_id", "task_name")

#: The per-execution gauges, in exposition order.
EXECUTION_FAMILIES = (
    Family(
        "task_execution_info",
        "gauge",
        "Identity of each tracked execution; always 1.",
        (*_EXECUTION, "container_id", "task_type", "trace_id", "container_name", "image"),
    ),
    Family(
        "task_execution_status",
        "gauge",
        "1 for the execution's current status, 0 for the others.",
        (*_EXECUTION, "status"),
    ),
    Family(
        "task_heartbeat_last_timestamp_seconds",
        "gauge",
        "When the bridge last received a heartbeat (unix seconds).",
        _EXECUTION,
    ),
    Family(
        "task_heartbeat_interval_seconds",
        "gauge",
        "Heartbeat interval the bridge expects (sent, learned or default).",
        _EXECUTION,
    ),
    Family(
        "task_execution_start_timestamp_seconds",
        "gauge",
        "When the bridge first heard of the execution (unix seconds).",
        _EXECUTION,
    ),
    Family(
        "task_execution_end_timestamp_seconds",
        "gauge",
        "When the execution completed or failed (unix seconds).",
        _EXECUTION,
    ),
    Family(
        "task_progress_ratio",
        "gauge",
        "Reported progress from 0 to 1 (percentage or current_step/total_steps).",
        _EXECUTION,
    ),
    Family(
        "task_execution_max_runtime_seconds",
        "gauge",
        "Longest run the task declared for itself (max_runtime_seconds).",
        _EXECUTION,
    ),
)

# Per task, bounded: labels never carry an execution id.
TASK_EXECUTIONS = Family(
    "task_executions", "gauge", "Tracked executions by task name and current status.", ("task_name", "status")
)
TASK_HEARTBEATS = Family(HEARTBEATS, "counter", "Heartbeats applied to executions.", ("task_name",))
TASK_COMPLETIONS = Family(
    COMPLETIONS,
    "counter",
    "Executions that ended, by outcome (completion, reported final status at its deadline, or container death).",
    ("task_name", "outcome"),
)
TASK_LOST = Family(LOST, "counter", "Times an execution became lost (no heartbeat in time).", ("task_name",))
TASK_RECOVERIES = Family(RECOVERIES, "counter", "Times a lost execution sent a heartbeat again.", ("task_name",))
TASK_DURATION = Family(
    DURATION, "histogram", "Run time of executions that ended, from first sight to end.", ("task_name", "outcome")
)

# The bridge itself.
BRIDGE_REJECTED = Family(
    REJECTED, "counter", "Ingest requests refused, by endpoint and reason.", ("endpoint", "reason")
)
BRIDGE_TELEMETRY_ERRORS = Family(
    TELEMETRY_ERRORS, "counter", "Execution spans that could not be built or exported.", ("stage",)
)
BRIDGE_TRACKED = Family("bridge_tracked_executions", "gauge", "Executions the bridge tracks now.")
BRIDGE_TRACKED_LIMIT = Family(
    "bridge_tracked_executions_limit", "gauge", "Most executions the bridge will track (BRIDGE_MAX_EXECUTIONS)."
)
BRIDGE_TASK_NAMES = Family("bridge_task_names", "gauge", "Distinct task names in metric labels.")
BRIDGE_TASK_NAMES_LIMIT = Family(
    "bridge_task_names_limit", "gauge", "Most distinct task names before _other (BRIDGE_MAX_TASK_NAMES)."
)
BRIDGE_TASKS_FILE_OK = Family(
    "bridge_tasks_file_reload_success",
    "gauge",
    "1 when BRIDGE_TASKS_FILE last read and checked well; 0 while a bad rewrite "
    "keeps the declarations read before in force.",
)
BRIDGE_TASKS_FILE_RELOADED = Family(
    "bridge_tasks_file_last_reload_timestamp_seconds",
    "gauge",
    "When BRIDGE_TASKS_FILE was last read and applied well (unix seconds).",
)
#: The store notes (``Store.note``) the tasks file's state is kept under, shared by every worker.
TASKS_FILE_OK = "tasks_file.ok"
TASKS_FILE_RELOADED_AT = "tasks_file.reloaded_at"
TASKS_FILE_ERROR = "tasks_file.error"
BRIDGE_BUILD_INFO = Family("bridge_build_info", "gauge", "Version of the running bridge; always 1.", ("version",))

# Per task, kept while it is declared or ran within BRIDGE_TASK_RETENTION_SECONDS.
TASK_INFO = Family(
    "task_info",
    "gauge",
    "Each known task, its type, schedule and allowlisted labels; always 1.",
    ("task_name", "task_type", "schedule"),
)
TASK_STATUS = Family(
    "task_status", "gauge", "1 for the task's current status, 0 for the others.", ("task_name", "status")
)
TASK_LAST_START = Family(
    "task_last_start_timestamp_seconds", "gauge", "When the task's latest run started (unix seconds).", ("task_name",)
)
TASK_LAST_SUCCESS = Family(
    "task_last_success_timestamp_seconds",
    "gauge",
    "When a run of the task last succeeded (unix seconds).",
    ("task_name",),
)
TASK_LAST_FAILURE = Family(
    "task_last_failure_timestamp_seconds",
    "gauge",
    "When a run of the task last failed or was lost (unix seconds).",
    ("task_name",),
)
TASK_NEXT_DEADLINE = Family(
    "task_next_run_deadline_timestamp_seconds",
    "gauge",
    "When the next expected run must have started: its time plus the grace.",
    ("task_name",),
)
TASK_CONSECUTIVE_FAILURES = Family(
    "task_consecutive_failures",
    "gauge",
    "Runs of the task that failed in a row since its last success.",
    ("task_name",),
)
TASK_FAILURE_THRESHOLD = Family(
    "task_failure_threshold",
    "gauge",
    "Failed runs in a row after which the task is failing (declared, default 1).",
    ("task_name",),
)
TASK_EXPECTED_MAX_RUNTIME = Family(
    "task_expected_max_runtime_seconds",
    "gauge",
    "The run budget the task's declaration gives each execution.",
    ("task_name",),
)
TASK_MISSED = Family(
    TASK_RUNS_MISSED, "counter", "Expected runs that did not start within their grace.", ("task_name",)
)
TASK_TOO_SHORT = Family(
    TASK_RUNS_TOO_SHORT, "counter", "Successful runs shorter than the task's min_runtime_seconds.", ("task_name",)
)
TASK_UNEXPECTED = Family(
    TASK_RUNS_UNEXPECTED,
    "counter",
    "Runs of a scheduled task that started more than early_grace_seconds before their expected start.",
    ("task_name",),
)
TASK_MAX_CONCURRENCY = Family(
    "task_max_concurrency",
    "gauge",
    "Runs of the task that may be in progress at once (declared max_concurrency).",
    ("task_name",),
)
TASK_UPSTREAM_UNHEALTHY = Family(
    "task_upstream_unhealthy",
    "gauge",
    "1 while a task this one depends on (depends_on) is failing or missed.",
    ("task_name",),
)
TASK_UPSTREAM_BLOCKING = Family(
    "task_upstream_blocking",
    "gauge",
    "1 for each upstream (depends_on) that is failing or missed now: the one that holds the task back.",
    ("task_name", "upstream"),
)
TASK_PAUSED_UNTIL = Family(
    "task_paused_until_timestamp_seconds",
    "gauge",
    "When the task's pause ends by itself (unix seconds); absent while not paused and for "
    "a pause that lasts until resumed.",
    ("task_name",),
)
