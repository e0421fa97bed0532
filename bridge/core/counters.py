"""The names of the counters the rules move, as the store keeps them.

The rules of :mod:`bridge.core.executions` and :mod:`bridge.core.tasks` return increments of
these; :mod:`bridge.telemetry.families` exposes them. They live here, in the core, so that the
rules need nothing above them.
"""

from __future__ import annotations

__all__ = [
    "COMPLETIONS",
    "DURATION",
    "DURATION_BUCKETS",
    "HEARTBEATS",
    "LOST",
    "RECOVERIES",
    "TASK_RUNS_MISSED",
    "TASK_RUNS_TOO_SHORT",
    "TASK_RUNS_UNEXPECTED",
]

HEARTBEATS = "task_heartbeats_received_total"
COMPLETIONS = "task_completions_total"
LOST = "task_executions_lost_total"
RECOVERIES = "task_execution_recoveries_total"
#: The histogram's series are kept as ``<DURATION>_bucket``, ``_sum`` and ``_count`` counters.
DURATION = "task_execution_duration_seconds"
#: Upper bounds of ``task_execution_duration_seconds``: one second to two days.
DURATION_BUCKETS = (
    1.0,
    5.0,
    15.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
    7200.0,
    14400.0,
    28800.0,
    86400.0,
    172800.0,
)
TASK_RUNS_MISSED = "task_runs_missed_total"
TASK_RUNS_TOO_SHORT = "task_runs_too_short_total"
TASK_RUNS_UNEXPECTED = "task_runs_unexpected_total"
