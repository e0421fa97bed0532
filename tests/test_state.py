"""bridge.state on its own: the rules, with no Flask, no store and no clock."""

from __future__ import annotations

import copy

import pytest

from bridge import state
from bridge.state import Completion, Execution, Heartbeat, Rules

RULES = Rules(default_interval=30, lost_after_intervals=3, retention=3600)
T0 = 1_000_000.0


def label(name):
    return name or state.UNKNOWN_TASK


def beat(current, now, **fields):
    outcome = state.apply_heartbeat(current, Heartbeat("e1", **fields), now, RULES, label)
    return outcome.record or current, outcome


def test_it_starts_a_new_execution_running_with_the_default_deadline():
    record, outcome = beat(None, T0)
    assert outcome.transition == (None, "running")
    assert record.deadline_at == T0 + 90
    assert [i.name for i in outcome.increments] == [state.HEARTBEATS]


def test_it_becomes_lost_exactly_at_the_deadline_not_before():
    record, _ = beat(None, T0)
    assert state.apply_deadline(record, T0 + 89.999, RULES).record is None
    outcome = state.apply_deadline(record, T0 + 90, RULES)
    assert outcome.transition == ("running", "lost")
    assert outcome.record.deadline_at is None
    assert outcome.record.expires_at == T0 + 90 + 3600


def test_it_does_not_learn_from_a_gap_that_spanned_a_lost_period():
    record = None
    for n in range(4):
        record, _ = beat(record, T0 + 10 * n)
    assert record.interval_seconds == 10
    record = state.apply_deadline(record, T0 + 1000, RULES).record
    record, outcome = beat(record, T0 + 1000)
    assert outcome.transition == ("lost", "running")
    assert record.interval_seconds == 10
    assert record.gaps == [10, 10, 10]


def test_it_takes_the_median_gap_so_one_extra_heartbeat_does_not_shrink_the_interval():
    record = None
    for now in (0, 20, 40, 41, 60, 80):
        record, _ = beat(record, T0 + now)
    assert record.interval_seconds == 20


def test_it_flags_a_started_container_that_never_reported_as_lost():
    starting = Execution("e1", "starting", "0" * 32, "etl", T0, T0, deadline_at=T0 + 120)
    outcome = state.apply_deadline(starting, T0 + 120, RULES)
    assert outcome.transition == ("starting", "lost")
    assert "startup grace" in outcome.record.status_reason


def test_it_ends_a_reported_failure_at_its_last_heartbeat_with_its_duration():
    record, _ = beat(None, T0)
    record, _ = beat(record, T0 + 40, status="failed")
    outcome = state.apply_deadline(record, T0 + 200, RULES)
    assert outcome.transition == ("running", "failed")
    assert outcome.record.ended_at == T0 + 40
    names = {(i.name, i.labels): i.amount for i in outcome.increments}
    assert names[(state.COMPLETIONS, ("unknown", "failure"))] == 1
    assert names[(state.DURATION + "_bucket", ("unknown", "failure", "60"))] == 1
    assert names[(state.DURATION + "_sum", ("unknown", "failure"))] == 40


def test_it_treats_every_completion_after_the_first_as_a_duplicate():
    record, _ = beat(None, T0)
    first = state.apply_completion(record, Completion("e1", success=True), T0 + 1, RULES, label)
    again = state.apply_completion(first.record, Completion("e1", success=False), T0 + 2, RULES, label)
    assert first.transition == ("running", "completed") and first.closes_span
    assert (again.record, again.result, again.increments) == (None, "duplicate", ())


def test_it_ignores_a_heartbeat_for_a_finished_execution():
    record, _ = beat(None, T0)
    done = state.apply_completion(record, Completion("e1", success=True), T0, RULES, label).record
    assert state.apply_heartbeat(done, Heartbeat("e1"), T0 + 1, RULES, label).result == "ignored"


@pytest.mark.parametrize("progress, ratio", [
    ({"percentage": 55.5}, 0.555),
    ({"current_step": 3, "total_steps": 4}, 0.75),
    ({"percentage": 250}, 1.0),
    ({"percentage": "50%"}, None),
    ({"percentage": True}, None),
    ({"current_step": 1, "total_steps": 0}, None),
    ({"current_step": 10 ** 400, "total_steps": 1}, None),
    ({"stage": "x"}, None),
    ({}, None),
])
def test_it_reads_progress_ratio_from_percentage_or_steps(progress, ratio):
    assert state.progress_ratio(progress) == (pytest.approx(ratio) if ratio is not None else None)


def test_it_resolves_a_task_name_first_sent_later():
    record, _ = beat(None, T0)
    assert record.metric_task_name == "unknown"
    record, outcome = beat(record, T0 + 1, task_name="etl")
    assert (record.task_name, record.metric_task_name) == ("etl", "etl")
    assert outcome.increments[0].labels == ("etl",)


# Stored records are arrays in this order; a field may only ever be appended.
STORED_ORDER = (
    "execution_id", "status", "trace_id", "metric_task_name", "started_at", "updated_at", "container_id",
    "container_name", "image", "oom_killed", "task_name", "task_type", "reported_status", "status_reason",
    "progress", "progress_ratio", "labels", "last_heartbeat_at", "client_timestamp", "ended_at", "deadline_at",
    "expires_at", "heartbeat_count", "interval_seconds", "interval_source", "gaps", "max_runtime_seconds",
    "success", "error_message", "exit_code", "result_data", "completion_received", "end_cause", "lost_count",
    "recoveries", "traceparent", "segment", "segment_started_at", "stages", "events", "version")


def test_it_only_appends_to_the_stored_field_order():
    assert state.RECORD_FIELDS[:len(STORED_ORDER)] == STORED_ORDER


def test_it_reads_values_written_by_older_and_newer_versions():
    record, _ = beat(None, T0, task_name="etl", progress={"percentage": 10})
    values = list(record.to_values())
    assert Execution.from_values(values + ["a later field"]) == record
    older = Execution.from_values(values[:-1])
    assert older.version == 0 and older.events == record.events


def test_it_leaves_the_current_record_untouched_by_the_next_decision():
    record, _ = beat(None, T0, progress={"stage": "load"})
    before = copy.deepcopy(record.to_dict())
    beat(record, T0 + 30, progress={"stage": "train"}, status="failed")
    assert record.to_dict() == before
