"""bridge.core.executions on its own: the rules, with no Flask, no store and no clock."""

from __future__ import annotations

import copy

import pytest

from bridge.core import executions
from bridge.core.events import Completion, Heartbeat
from bridge.core.executions import Execution, Rules
from bridge.telemetry import families

RULES = Rules(default_interval=30, lost_after_intervals=3, retention=3600)
T0 = 1_000_000.0


def label(name):
    return name or executions.UNKNOWN_TASK


def beat(current, now, **fields):
    outcome = executions.apply_heartbeat(current, Heartbeat("e1", **fields), now, RULES, label)
    return outcome.record or current, outcome


def test_it_starts_a_new_execution_running_with_the_default_deadline():
    record, outcome = beat(None, T0)
    assert outcome.transition == (None, "running")
    assert record.deadline_at == T0 + 90
    assert [i.name for i in outcome.increments] == [families.HEARTBEATS]


def test_it_becomes_lost_exactly_at_the_deadline_not_before():
    record, _ = beat(None, T0)
    assert executions.apply_deadline(record, T0 + 89.999, RULES).record is None
    outcome = executions.apply_deadline(record, T0 + 90, RULES)
    assert outcome.transition == ("running", "lost")
    assert outcome.record.deadline_at is None
    assert outcome.record.expires_at == T0 + 90 + 3600


def cadence(*steps):
    """Return heartbeat times: ``(count, gap)`` pairs, one after the other, from T0."""
    times, now = [T0], T0
    for count, gap in steps:
        for _ in range(count):
            now += gap
            times.append(now)
    return times


def losses(times, **fields):
    """Beat at each time, the reaper applying a passed deadline first; return the record and the losses."""
    record, lost = None, 0
    for now in times:
        if record is not None and record.deadline_at is not None and record.deadline_at <= now:
            outcome = executions.apply_deadline(record, now, RULES)
            lost += outcome.transition == ("running", "lost")
            record = outcome.record or record
        record, _ = beat(record, now, **fields)
    return record, lost


@pytest.mark.parametrize(
    "steps",
    [
        ((4, 2), (60, 10)),  # five heartbeats 2 s apart, then one every 10 s
        ((6, 0.1), (60, 30)),  # a start-up burst, then the seed's 30 s
        ((10, 30), (30, 80)),  # slower, still inside the lost-window
    ],
)
def test_it_is_never_lost_by_a_cadence_that_fits_the_default_window(steps):
    record, lost = losses(cadence(*steps))
    assert lost == 0
    assert record.interval_seconds >= RULES.default_interval


@pytest.mark.parametrize(
    "steps, expected",
    [
        (((10, 30), (20, 120)), 1),  # slows down past three default intervals
        (((5, 2), (20, 200)), 1),  # a burst, then a slow cadence
        (((10, 120), (20, 500)), 2),  # slow from the start, then slower again past that window
    ],
)
def test_it_is_lost_at_most_once_for_each_slower_cadence_it_settles_on(steps, expected):
    record, lost = losses(cadence(*steps))
    assert lost == expected
    assert record.interval_seconds == steps[-1][1]
    assert record.status == "running"


def test_it_learns_from_the_gap_that_made_it_lost():
    record, _ = losses(cadence((4, 30)))
    record = executions.apply_deadline(record, T0 + 120 + 400, RULES).record
    record, outcome = beat(record, T0 + 120 + 400)
    assert outcome.transition == ("lost", "running")
    assert record.gaps == [400]
    assert record.interval_seconds == 400 and record.interval_source == "learned"


def test_it_takes_the_median_gap_so_one_extra_heartbeat_does_not_shrink_the_interval():
    record = None
    for now in (0, 60, 120, 121, 180, 240):
        record, _ = beat(record, T0 + now)
    assert record.interval_seconds == 60


def test_it_ignores_negative_and_absurd_gaps():
    record, _ = beat(None, T0)
    record, _ = beat(record, T0 + 50)
    record, _ = beat(record, T0 - 3600)  # the clock went back an hour
    record, _ = beat(record, T0 - 3600 + 2 * 86_400)  # then forward two days
    assert record.gaps == [50]
    assert record.interval_seconds == 50
    assert record.deadline_at == T0 - 3600 + 2 * 86_400 + 150


def test_it_rebases_a_deadline_set_on_another_time_line_to_one_window_from_now():
    record, _ = beat(None, T0, interval_seconds=2)
    assert record.deadline_at == T0 + 6
    back = executions.apply_rebase(record, T0 - 3600, RULES)  # the clock went back an hour
    assert back.record.deadline_at == T0 - 3600 + 6
    assert back.transition is None and back.increments == ()
    forward = executions.apply_rebase(record, T0 + 12, RULES)  # or forward past the deadline
    assert forward.record.deadline_at == T0 + 18
    assert executions.apply_rebase(forward.record, T0 + 12, RULES).record is None


def test_it_rebases_a_starting_execution_by_the_startup_grace_and_leaves_ended_ones():
    starting = Execution("e1", "starting", "0" * 32, "etl", T0, T0, deadline_at=T0 + 120)
    assert executions.apply_rebase(starting, T0 + 500, RULES).record.deadline_at == T0 + 500 + RULES.startup_grace
    record, _ = beat(None, T0)
    lost = executions.apply_deadline(record, T0 + 90, RULES).record
    assert executions.apply_rebase(lost, T0 + 100, RULES).record is None


def test_it_flags_a_started_container_that_never_reported_as_lost():
    starting = Execution("e1", "starting", "0" * 32, "etl", T0, T0, deadline_at=T0 + 120)
    outcome = executions.apply_deadline(starting, T0 + 120, RULES)
    assert outcome.transition == ("starting", "lost")
    assert "startup grace" in outcome.record.status_reason


def test_it_ends_a_reported_failure_at_its_last_heartbeat_with_its_duration():
    record, _ = beat(None, T0)
    record, _ = beat(record, T0 + 40, status="failed")
    outcome = executions.apply_deadline(record, T0 + 200, RULES)
    assert outcome.transition == ("running", "failed")
    assert outcome.record.ended_at == T0 + 40
    names = {(i.name, i.labels): i.amount for i in outcome.increments}
    assert names[(families.COMPLETIONS, ("unknown", "failure"))] == 1
    assert names[(families.DURATION + "_bucket", ("unknown", "failure", "60"))] == 1
    assert names[(families.DURATION + "_sum", ("unknown", "failure"))] == 40


def test_it_treats_every_completion_after_the_first_as_a_duplicate():
    record, _ = beat(None, T0)
    first = executions.apply_completion(record, Completion("e1", success=True), T0 + 1, RULES, label)
    again = executions.apply_completion(first.record, Completion("e1", success=False), T0 + 2, RULES, label)
    assert first.transition == ("running", "completed") and first.closes_span
    assert (again.record, again.result, again.increments) == (None, "duplicate", ())


def test_it_ignores_a_heartbeat_for_a_finished_execution():
    record, _ = beat(None, T0)
    done = executions.apply_completion(record, Completion("e1", success=True), T0, RULES, label).record
    assert executions.apply_heartbeat(done, Heartbeat("e1"), T0 + 1, RULES, label).result == "ignored"


@pytest.mark.parametrize(
    "progress, ratio",
    [
        ({"percentage": 55.5}, 0.555),
        ({"current_step": 3, "total_steps": 4}, 0.75),
        ({"percentage": 250}, 1.0),
        ({"percentage": "50%"}, None),
        ({"percentage": True}, None),
        ({"current_step": 1, "total_steps": 0}, None),
        ({"current_step": 10**400, "total_steps": 1}, None),
        ({"stage": "x"}, None),
        ({}, None),
    ],
)
def test_it_reads_progress_ratio_from_percentage_or_steps(progress, ratio):
    assert executions.progress_ratio(progress) == (pytest.approx(ratio) if ratio is not None else None)


def test_it_resolves_a_task_name_first_sent_later():
    record, _ = beat(None, T0)
    assert record.metric_task_name == "unknown"
    record, outcome = beat(record, T0 + 1, task_name="etl")
    assert (record.task_name, record.metric_task_name) == ("etl", "etl")
    assert outcome.increments[0].labels == ("etl",)


# Stored records are arrays in this order; a field may only ever be appended.
STORED_ORDER = (
    "execution_id",
    "status",
    "trace_id",
    "metric_task_name",
    "started_at",
    "updated_at",
    "container_id",
    "container_name",
    "image",
    "oom_killed",
    "task_name",
    "task_type",
    "reported_status",
    "status_reason",
    "progress",
    "progress_ratio",
    "labels",
    "last_heartbeat_at",
    "client_timestamp",
    "ended_at",
    "deadline_at",
    "expires_at",
    "heartbeat_count",
    "interval_seconds",
    "interval_source",
    "gaps",
    "max_runtime_seconds",
    "success",
    "error_message",
    "exit_code",
    "result_data",
    "completion_received",
    "end_cause",
    "lost_count",
    "recoveries",
    "traceparent",
    "segment",
    "segment_started_at",
    "stages",
    "events",
    "version",
)


def test_it_only_appends_to_the_stored_field_order():
    assert executions.RECORD_FIELDS[: len(STORED_ORDER)] == STORED_ORDER


def test_it_reads_values_written_by_older_and_newer_versions():
    record, _ = beat(None, T0, task_name="etl", progress={"percentage": 10})
    values = list(record.to_values())
    assert Execution.from_values(values + ["a later field"]) == record
    older = Execution.from_values(values[:-1])
    assert older.version == 0 and older.events == record.events


def test_it_reads_stages_and_status_changes_back_by_name():
    from bridge.store.codec import decode_record, encode_record

    record, _ = beat(None, T0, task_name="etl", progress={"stage": "download"})
    record, _ = beat(record, T0 + 30, progress={"stage": "load"})
    again = decode_record(encode_record(record))
    assert again == record
    assert [(stage.name, stage.started_at, stage.ended_at) for stage in again.stages] == [
        ("download", T0, T0 + 30),
        ("load", T0 + 30, None),
    ]
    assert [(change.at, change.status) for change in again.events] == [(T0, "running")]


def test_it_leaves_the_current_record_untouched_by_the_next_decision():
    record, _ = beat(None, T0, progress={"stage": "load"})
    before = copy.deepcopy(record.to_dict())
    beat(record, T0 + 30, progress={"stage": "train"}, status="failed")
    assert record.to_dict() == before
