"""bridge.core.tasks and bridge.core.declarations on their own: pure rules, the time passed in."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from bridge.core import tasks
from bridge.core.declarations import DeclarationError, TaskDeclaration, next_slot, parse_declaration
from bridge.core.executions import Execution
from bridge.service.tasks_file import parse_tasks
from bridge.telemetry import families

T0 = 1_800_000_000.0  # 2027-01-15 08:00 UTC


def at(text: str, zone: str = "UTC") -> float:
    """Return the unix time of local time ``text`` (``2026-03-29 01:30``) in ``zone``."""
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp()


def execution(execution_id: str, status: str, now: float, started_at: float | None = None, task: str = "etl",
              ended_at: float | None = None) -> Execution:
    return Execution(execution_id, status, "0" * 32, task, started_at if started_at is not None else now, now,
                     task_name=task, ended_at=ended_at)


def declared(now: float, **fields) -> tasks.Task:
    return tasks.apply_declaration(None, "etl", "api", parse_declaration(fields, "etl"), now).record


def start(task: tasks.Task | None, execution_id: str, now: float) -> tasks.Task:
    return tasks.apply_run_change(task, "etl", None, execution(execution_id, "running", now)).record


def end(task: tasks.Task, execution_id: str, now: float, status: str = "completed", was: str = "running") -> tasks.Task:
    before = execution(execution_id, was, now - 1, started_at=task.last_start_at)
    after = execution(execution_id, status, now, started_at=task.last_start_at,
                      ended_at=now if status != "lost" else None)
    return tasks.apply_run_change(task, "etl", before, after).record


def reap(task: tasks.Task, now: float) -> tuple[tasks.Task, float]:
    """Return the task after its deadline is applied at ``now``, and the missed slots counted."""
    outcome = tasks.apply_task_deadline(task, now)
    if outcome.record is None:
        return task, 0.0
    [increment] = outcome.increments
    assert increment.name == families.TASK_RUNS_MISSED and increment.labels == ("etl",)
    return outcome.record, increment.amount


@pytest.mark.parametrize("zone, before, skipped_to, after", [
    # Spring forward: 02:30 does not exist that night, and runs at the change.
    ("Europe/Berlin", "2026-03-28 02:30", "2026-03-29 03:00", "2026-03-30 02:30"),
    ("America/New_York", "2026-03-07 02:30", "2026-03-08 03:00", "2026-03-09 02:30"),
])
def test_it_schedules_cron_in_its_time_zone_across_a_spring_change(zone, before, skipped_to, after):
    declaration = parse_declaration({"schedule": "30 2 * * *", "timezone": zone})
    first = next_slot(declaration, at(before, zone))
    assert first == at(skipped_to, zone)
    assert next_slot(declaration, first) == at(after, zone)
    assert next_slot(declaration, first) - first == 23.5 * 3600  # one hour of that day never was


@pytest.mark.parametrize("zone, day", [("Europe/Berlin", "2026-10-25"), ("America/New_York", "2026-11-01")])
def test_it_runs_a_daily_job_once_and_an_hourly_job_twice_in_the_repeated_hour(zone, day):
    daily = parse_declaration({"schedule": "30 1 * * *", "timezone": zone})
    hourly = parse_declaration({"schedule": "0 * * * *", "timezone": zone})
    start_of_day = at(f"{day} 00:00", zone)
    runs = [next_slot(daily, start_of_day)]
    runs.append(next_slot(daily, runs[0]))
    assert runs[1] - runs[0] == 25 * 3600  # that day has 25 hours, and 01:30 runs once in it
    hours, now = [], start_of_day
    while now < start_of_day + 25 * 3600:
        now = next_slot(hourly, now)
        hours.append(now)
    assert len(hours) == 25  # 24 on the clock, and the repeated one


def test_it_expects_a_period_after_the_last_start_or_the_declaration():
    task = declared(T0, period_seconds=600, start_grace_seconds=60)
    assert (task.next_run_at, task.deadline_at) == (T0 + 600, T0 + 660)
    assert tasks.status_at(task, T0 + 10) == "idle"
    task = start(task, "a", T0 + 100)
    assert task.next_run_at == T0 + 700
    task = end(task, "a", T0 + 200)
    assert tasks.status_at(task, T0 + 699) == "up"
    assert tasks.status_at(task, T0 + 700) == "late"  # expected, and within the grace


def test_it_counts_a_missed_slot_once_and_stays_missed_until_a_run_starts():
    task = declared(T0, period_seconds=600, start_grace_seconds=60)
    unchanged, missed = reap(task, T0 + 659)
    assert unchanged is task and missed == 0
    task, missed = reap(task, T0 + 660)
    assert missed == 1 and task.missed and task.missed_runs == 1
    assert tasks.status_at(task, T0 + 661) == "missed"
    again, missed = reap(task, T0 + 661)  # another worker's round at the same moment
    assert missed == 0 and again is task
    task, missed = reap(task, T0 + 1260)  # the next slot passes too
    assert missed == 1 and task.missed_runs == 2
    task = start(task, "late", T0 + 1300)
    assert not task.missed and tasks.status_at(task, T0 + 1300) == "running"


def test_it_counts_each_slot_missed_while_nobody_looked_once():
    task = declared(at("2027-01-01 00:00"), schedule="0 * * * *", start_grace_seconds=300)
    task, missed = reap(task, at("2027-01-01 05:10"))
    assert missed == 5  # 01:00 to 05:00; the 06:00 deadline is not due
    assert task.next_run_at == at("2027-01-01 06:00")


def test_it_skips_the_slots_of_an_outage_without_counting_them():
    task = declared(at("2027-01-01 00:00"), schedule="0 * * * *", start_grace_seconds=300)
    skipped = tasks.apply_task_rebase(task, at("2027-01-01 05:10")).record
    assert (skipped.next_run_at, skipped.missed_runs) == (at("2027-01-01 06:00"), 0)
    assert tasks.apply_task_rebase(skipped, at("2027-01-01 05:20")).record is None  # not due: unchanged


def test_it_takes_a_run_within_the_grace_as_the_expected_one():
    task = declared(at("2027-01-01 00:00"), schedule="0 2 * * *", start_grace_seconds=600)
    assert tasks.status_at(task, at("2027-01-01 02:05")) == "late"
    task = start(task, "a", at("2027-01-01 02:05"))
    assert task.next_run_at == at("2027-01-02 02:00")
    task = end(task, "a", at("2027-01-01 02:30"))
    assert tasks.status_at(task, at("2027-01-01 12:00")) == "up"
    task, missed = reap(task, at("2027-01-01 12:00"))
    assert missed == 0


def test_it_counts_a_run_that_starts_after_the_grace_as_a_missed_slot_then_a_run():
    task = declared(at("2027-01-01 00:00"), schedule="0 2 * * *", start_grace_seconds=600)
    task, missed = reap(task, at("2027-01-01 02:10"))
    assert missed == 1
    task = start(task, "late", at("2027-01-01 03:00"))
    assert task.next_run_at == at("2027-01-02 02:00")  # the late run is not tomorrow's
    task = end(task, "late", at("2027-01-01 03:30"))
    assert tasks.status_at(task, at("2027-01-01 04:00")) == "up"


def test_it_takes_a_run_a_little_early_as_the_coming_one():
    task = declared(at("2027-01-01 00:00"), schedule="0 2 * * *", start_grace_seconds=300)
    task = start(task, "early", at("2027-01-01 01:58"))
    assert task.next_run_at == at("2027-01-02 02:00")
    extra = start(task, "extra", at("2027-01-01 12:00"))  # not near any slot: an extra run
    assert extra.next_run_at == at("2027-01-02 02:00") and extra.runs == 2


def test_it_keeps_a_task_running_while_any_of_its_overlapping_runs_does():
    task = start(None, "a", T0)
    task = start(task, "b", T0 + 10)
    assert (task.running, task.running_ids) == (2, ["a", "b"])
    task = end(task, "a", T0 + 20)
    assert tasks.status_at(task, T0 + 20) == "running"
    task = end(task, "b", T0 + 30, "failed")
    assert task.running == 0 and task.consecutive_failures == 1
    assert [run[:2] for run in task.recent] == [["a", "completed"], ["b", "failed"]]


def test_it_counts_many_overlapping_runs_and_keeps_the_ids_of_the_newest():
    task = None
    for n in range(50):  # a task that fans out to many containers at once
        task = start(task, f"r{n}", T0 + n)
    assert task.running == 50 and task.running_ids == [f"r{n}" for n in range(30, 50)]
    for n in range(50):
        task = end(task, f"r{n}", T0 + 100 + n)
    assert (task.running, task.running_ids, tasks.status_at(task, T0 + 200)) == (0, [], "idle")


def test_it_is_failing_after_the_threshold_of_failures_until_a_success():
    task = declared(T0, failure_threshold=2)
    task = end(start(task, "a", T0), "a", T0 + 10, "failed")
    assert tasks.status_at(task, T0 + 11) == "idle" and task.consecutive_failures == 1
    task = end(start(task, "b", T0 + 20), "b", T0 + 30, "failed")
    assert tasks.status_at(task, T0 + 31) == "failing" and task.last_failure_at == T0 + 30
    task = start(task, "c", T0 + 40)
    assert tasks.status_at(task, T0 + 41) == "running"
    assert task.consecutive_failures == 2  # still failing underneath: only a success clears it
    task = end(task, "c", T0 + 50)
    assert task.consecutive_failures == 0 and tasks.status_at(task, T0 + 51) == "idle"
    assert task.last_success_at == T0 + 50


def test_it_counts_a_lost_run_as_failed_and_its_later_completion_once():
    task = end(start(None, "a", T0), "a", T0 + 100, "lost")
    assert task.consecutive_failures == 1 and tasks.status_at(task, T0 + 100) == "failing"
    recovered = tasks.apply_run_change(task, "etl", execution("a", "lost", T0 + 100, T0),
                                       execution("a", "running", T0 + 150, T0)).record
    assert recovered.running_ids == ["a"] and recovered.runs == 1  # a recovery is no new run
    failed = tasks.apply_run_change(task, "etl", execution("a", "lost", T0 + 100, T0),
                                    execution("a", "failed", T0 + 160, T0, ended_at=T0 + 160)).record
    assert failed.consecutive_failures == 1  # not twice for one run
    succeeded = tasks.apply_run_change(task, "etl", execution("a", "lost", T0 + 100, T0),
                                       execution("a", "completed", T0 + 160, T0, ended_at=T0 + 160)).record
    assert succeeded.consecutive_failures == 0


def test_it_counts_nothing_for_a_heartbeat_on_a_running_run():
    task = start(None, "a", T0)
    same = tasks.apply_run_change(task, "etl", execution("a", "running", T0), execution("a", "running", T0 + 30))
    assert same.record is None


def test_it_merges_declarations_the_file_over_the_api_over_a_heartbeat():
    task = tasks.apply_declaration(None, "etl", "inband", parse_declaration({"period_seconds": 60}), T0).record
    task = tasks.apply_declaration(task, "etl", "api", parse_declaration({"schedule": "0 * * * *"}), T0).record
    task = tasks.apply_declaration(task, "etl", "file", parse_declaration({"schedule": "0 2 * * *"}), T0).record
    assert tasks.effective_declaration(task)[0].schedule == "0 2 * * *"
    task = tasks.apply_declaration(task, "etl", "file", None, T0).record
    assert tasks.effective_declaration(task) == (TaskDeclaration(schedule="0 * * * *"), "api")
    assert tasks.apply_declaration(task, "etl", "api", TaskDeclaration(schedule="0 * * * *"), T0).record is None


@pytest.mark.parametrize("body, field", [
    ({"schedule": "61 * * * *"}, "schedule"),
    ({"schedule": "* * *"}, "schedule"),
    ({"schedule": "0 2 * * *", "timezone": "Mars/Olympus"}, "timezone"),
    ({"schedule": "0 2 * * *", "period_seconds": 60}, "period_seconds"),
    ({"period_seconds": 0}, "period_seconds"),
    ({"failure_threshold": 0}, "failure_threshold"),
    ({"labels": {"team": 7}}, "labels"),
    ({"ping_uuid": "not-a-uuid"}, "ping_uuid"),
    ({"schedulle": "0 2 * * *"}, "schedulle"),
])
def test_it_refuses_a_declaration_naming_the_task_and_the_field(body, field):
    with pytest.raises(DeclarationError) as refused:
        parse_declaration(body, "nightly-crawl")
    assert (refused.value.task, refused.value.field) == ("nightly-crawl", field)
    assert str(refused.value).startswith(f"task 'nightly-crawl': {field}: ")


@pytest.mark.parametrize("text, task, field", [
    ("tasks:\n  - name: nightly\n    schedule: '0 2 * * *'\n  - name: hourly\n    period_seconds: -5\n",
     "hourly", "period_seconds"),
    ("tasks:\n  - name: nightly\n  - name: nightly\n", "nightly", "name"),
    ("tasks:\n  - schedule: '0 2 * * *'\n", None, "name"),
    ("tasks:\n  - name: nightly\n    labels: [team]\n", "nightly", "labels"),
    ("tasks: {name: nightly}\n", None, "tasks"),
    ("crons: []\n", None, "tasks"),
    ("tasks: [\n", None, "file"),
])
def test_it_refuses_a_tasks_file_naming_the_task_and_the_field(text, task, field):
    with pytest.raises(DeclarationError) as refused:
        parse_tasks(text)
    assert (refused.value.task, refused.value.field) == (task, field)


def test_it_reads_a_tasks_file_in_its_order():
    declarations = parse_tasks("tasks:\n  - name: b\n    period_seconds: 60\n  - name: a\n"
                               "    schedule: '0 2 * * *'\n    timezone: Europe/Berlin\n    labels: {team: data}\n")
    assert list(declarations) == ["b", "a"]
    assert declarations["a"] == TaskDeclaration(schedule="0 2 * * *", timezone="Europe/Berlin", labels={"team": "data"})
    assert parse_tasks("") == {} and parse_tasks("tasks: []\n") == {}
