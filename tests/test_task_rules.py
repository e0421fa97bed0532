"""bridge.core.tasks and bridge.core.declarations on their own: pure rules, the time passed in."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from bridge.core import tasks
from bridge.core.declarations import DeclarationError, TaskDeclaration, next_slot, parse_declaration
from bridge.core.executions import Execution
from bridge.service.tasks_file import parse_tasks
from bridge.store.codec import decode_task, encode_task
from bridge.telemetry import families

T0 = 1_800_000_000.0  # 2027-01-15 08:00 UTC


def at(text: str, zone: str = "UTC") -> float:
    """Return the unix time of local time ``text`` (``2026-03-29 01:30``) in ``zone``."""
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp()


def execution(
    execution_id: str,
    status: str,
    now: float,
    started_at: float | None = None,
    task: str = "etl",
    ended_at: float | None = None,
) -> Execution:
    return Execution(
        execution_id,
        status,
        "0" * 32,
        task,
        started_at if started_at is not None else now,
        now,
        task_name=task,
        ended_at=ended_at,
    )


def declared(now: float, **fields) -> tasks.Task:
    return tasks.apply_declaration(None, "etl", "api", parse_declaration(fields, "etl"), now).record


def start(task: tasks.Task | None, execution_id: str, now: float) -> tasks.Task:
    return tasks.apply_run_change(task, "etl", None, execution(execution_id, "running", now)).record


def end(task: tasks.Task, execution_id: str, now: float, status: str = "completed", was: str = "running") -> tasks.Task:
    before = execution(execution_id, was, now - 1, started_at=task.last_start_at)
    after = execution(
        execution_id, status, now, started_at=task.last_start_at, ended_at=now if status != "lost" else None
    )
    return tasks.apply_run_change(task, "etl", before, after).record


def reap(task: tasks.Task, now: float) -> tuple[tasks.Task, float]:
    """Return the task after its deadline is applied at ``now``, and the missed slots counted."""
    outcome = tasks.apply_task_deadline(task, now)
    if outcome.record is None:
        return task, 0.0
    [increment] = outcome.increments
    assert increment.name == families.TASK_RUNS_MISSED and increment.labels == ("etl",)
    return outcome.record, increment.amount


@pytest.mark.parametrize(
    "zone, before, skipped_to, after",
    [
        # Spring forward: 02:30 does not exist that night, and runs at the change.
        ("Europe/Berlin", "2026-03-28 02:30", "2026-03-29 03:00", "2026-03-30 02:30"),
        ("America/New_York", "2026-03-07 02:30", "2026-03-08 03:00", "2026-03-09 02:30"),
    ],
)
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
    assert tasks.status_at(task, T0 + 10) == "new"
    task = start(task, "a", T0 + 100)
    assert tasks.status_at(task, T0 + 150) == "new"  # a run in progress is activity, not health
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
    assert not task.missed and tasks.status_at(task, T0 + 1300) == "new"


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
    task = start(task, "early", at("2027-01-01 01:59"))  # within early_grace_seconds (60)
    assert task.next_run_at == at("2027-01-02 02:00")
    extra = start(task, "extra", at("2027-01-01 12:00"))  # not near any slot: an extra run
    assert extra.next_run_at == at("2027-01-02 02:00") and extra.runs == 2


def test_it_keeps_a_task_running_while_any_of_its_overlapping_runs_does():
    task = start(None, "a", T0)
    task = start(task, "b", T0 + 10)
    assert (task.running, task.running_ids) == (2, ["a", "b"])
    task = end(task, "a", T0 + 20)
    assert tasks.status_at(task, T0 + 20) == "up" and task.running == 1
    task = end(task, "b", T0 + 30, "failed")
    assert task.running == 0 and task.consecutive_failures == 1
    assert [(run.execution_id, run.status) for run in task.recent] == [("a", "completed"), ("b", "failed")]
    assert decode_task(encode_task(task)).recent == task.recent  # read back as named runs


def test_it_counts_many_overlapping_runs_and_keeps_the_ids_of_the_newest():
    task = None
    for n in range(50):  # a task that fans out to many containers at once
        task = start(task, f"r{n}", T0 + n)
    assert task.running == 50 and task.running_ids == [f"r{n}" for n in range(30, 50)]
    for n in range(50):
        task = end(task, f"r{n}", T0 + 100 + n)
    assert (task.running, task.running_ids, tasks.status_at(task, T0 + 200)) == (0, [], "up")


def test_it_is_failing_after_the_threshold_of_failures_until_a_success():
    task = declared(T0, failure_threshold=2)
    task = end(start(task, "a", T0), "a", T0 + 10, "failed")
    assert tasks.status_at(task, T0 + 11) == "up" and task.consecutive_failures == 1  # below the threshold
    task = end(start(task, "b", T0 + 20), "b", T0 + 30, "failed")
    assert tasks.status_at(task, T0 + 31) == "failing" and task.last_failure_at == T0 + 30
    task = start(task, "c", T0 + 40)
    assert tasks.status_at(task, T0 + 41) == "failing"  # a run in progress hides nothing
    assert task.consecutive_failures == 2  # only a success clears it
    task = end(task, "c", T0 + 50)
    assert task.consecutive_failures == 0 and tasks.status_at(task, T0 + 51) == "up"
    assert task.last_success_at == T0 + 50


def test_it_counts_a_lost_run_as_failed_and_its_later_completion_once():
    task = end(start(None, "a", T0), "a", T0 + 100, "lost")
    assert task.consecutive_failures == 1 and tasks.status_at(task, T0 + 100) == "failing"
    recovered = tasks.apply_run_change(
        task, "etl", execution("a", "lost", T0 + 100, T0), execution("a", "running", T0 + 150, T0)
    ).record
    assert recovered.running_ids == ["a"] and recovered.runs == 1  # a recovery is no new run
    failed = tasks.apply_run_change(
        task, "etl", execution("a", "lost", T0 + 100, T0), execution("a", "failed", T0 + 160, T0, ended_at=T0 + 160)
    ).record
    assert failed.consecutive_failures == 1  # not twice for one run
    succeeded = tasks.apply_run_change(
        task, "etl", execution("a", "lost", T0 + 100, T0), execution("a", "completed", T0 + 160, T0, ended_at=T0 + 160)
    ).record
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


@pytest.mark.parametrize(
    "body, field",
    [
        ({"schedule": "61 * * * *"}, "schedule"),
        ({"schedule": "* * *"}, "schedule"),
        ({"schedule": "0 2 * * *", "timezone": "Mars/Olympus"}, "timezone"),
        ({"schedule": "0 2 * * *", "period_seconds": 60}, "period_seconds"),
        ({"period_seconds": 0}, "period_seconds"),
        ({"failure_threshold": 0}, "failure_threshold"),
        ({"labels": {"team": 7}}, "labels"),
        ({"ping_uuid": "not-a-uuid"}, "ping_uuid"),
        ({"schedulle": "0 2 * * *"}, "schedulle"),
    ],
)
def test_it_refuses_a_declaration_naming_the_task_and_the_field(body, field):
    with pytest.raises(DeclarationError) as refused:
        parse_declaration(body, "nightly-crawl")
    assert (refused.value.task, refused.value.field) == ("nightly-crawl", field)
    assert str(refused.value).startswith(f"task 'nightly-crawl': {field}: ")


@pytest.mark.parametrize(
    "text, task, field",
    [
        (
            "tasks:\n  - name: nightly\n    schedule: '0 2 * * *'\n  - name: hourly\n    period_seconds: -5\n",
            "hourly",
            "period_seconds",
        ),
        ("tasks:\n  - name: nightly\n  - name: nightly\n", "nightly", "name"),
        ("tasks:\n  - schedule: '0 2 * * *'\n", None, "name"),
        ("tasks:\n  - name: nightly\n    labels: [team]\n", "nightly", "labels"),
        ("tasks: {name: nightly}\n", None, "tasks"),
        ("crons: []\n", None, "tasks"),
        ("tasks: [\n", None, "file"),
    ],
)
def test_it_refuses_a_tasks_file_naming_the_task_and_the_field(text, task, field):
    with pytest.raises(DeclarationError) as refused:
        parse_tasks(text)
    assert (refused.value.task, refused.value.field) == (task, field)


def test_it_reads_a_tasks_file_in_its_order():
    declarations = parse_tasks(
        "tasks:\n  - name: b\n    period_seconds: 60\n  - name: a\n"
        "    schedule: '0 2 * * *'\n    timezone: Europe/Berlin\n    labels: {team: data}\n"
    )
    assert list(declarations) == ["b", "a"]
    assert declarations["a"] == TaskDeclaration(schedule="0 2 * * *", timezone="Europe/Berlin", labels={"team": "data"})
    assert parse_tasks("") == {} and parse_tasks("tasks: []\n") == {}


def increments(outcome: tasks.TaskOutcome) -> dict[str, float]:
    return {inc.name: inc.amount for inc in outcome.increments}


def test_it_clears_failing_only_after_the_recovery_threshold_of_successes():
    task = declared(T0, failure_threshold=2, recovery_threshold=2)
    for n, status in enumerate(("failed", "failed", "completed"), 1):
        task = end(start(task, f"r{n}", T0 + 10 * n), f"r{n}", T0 + 10 * n + 5, status)
    assert (tasks.status_at(task, T0 + 40), task.consecutive_failures) == ("failing", 0)  # one success of two
    failed_again = end(start(task, "r4", T0 + 40), "r4", T0 + 45, "failed")
    assert tasks.status_at(failed_again, T0 + 50) == "failing" and failed_again.consecutive_successes == 0
    task = end(start(task, "r4", T0 + 40), "r4", T0 + 45)
    assert tasks.status_at(task, T0 + 50) == "up" and not task.failing


def test_it_counts_a_successful_run_shorter_than_its_min_runtime_as_too_short():
    task = start(declared(T0, min_runtime_seconds=60), "quick", T0)
    before = execution("quick", "running", T0 + 1, started_at=T0)
    quick = tasks.apply_run_change(
        task, "etl", before, execution("quick", "completed", T0 + 2, started_at=T0, ended_at=T0 + 2)
    )
    assert increments(quick) == {families.TASK_RUNS_TOO_SHORT: 1}
    assert tasks.status_at(quick.record, T0 + 3) == "up" and "min_runtime_seconds" in quick.record.last_run_note
    slow = tasks.apply_run_change(
        task, "etl", before, execution("quick", "completed", T0 + 61, started_at=T0, ended_at=T0 + 61)
    )
    failed = tasks.apply_run_change(
        task, "etl", before, execution("quick", "failed", T0 + 2, started_at=T0, ended_at=T0 + 2)
    )
    assert increments(slow) == {} and increments(failed) == {}  # a short failure is a failure, not too short


@pytest.mark.parametrize(
    "fields, first, second, unexpected",
    [
        # cron: more than early_grace_seconds before 02:00 is a double start or a wrong schedule
        ({"schedule": "0 2 * * *"}, "2027-01-01 01:59", None, 0),
        ({"schedule": "0 2 * * *"}, "2027-01-01 01:58:59", None, 1),
        ({"schedule": "0 2 * * *"}, "2027-01-01 02:00", "2027-01-01 12:00", 1),
        ({"schedule": "0 2 * * *", "early_grace_seconds": 3600}, "2027-01-01 01:30", None, 0),
        # period: the first run is never early; a second one long before its time is a double start
        ({"period_seconds": 3600}, "2027-01-01 00:10", "2027-01-01 00:20", 1),
        ({"period_seconds": 3600}, "2027-01-01 00:10", "2027-01-01 01:09:30", 0),
    ],
)
def test_it_counts_a_run_that_starts_too_early_as_unexpected(fields, first, second, unexpected):
    task = declared(at("2027-01-01 00:00"), **fields)
    counted = 0
    for n, when in enumerate(w for w in (first, second) if w is not None):
        outcome = tasks.apply_run_change(task, "etl", None, execution(f"r{n}", "running", at(when)))
        counted += increments(outcome).get(families.TASK_RUNS_UNEXPECTED, 0)
        task = outcome.record
    assert counted == unexpected


def test_it_expects_nothing_of_a_paused_task_and_resumes_at_the_pauses_end():
    task = declared(T0, period_seconds=600, start_grace_seconds=60)
    paused = tasks.apply_pause(task, T0 + 3600, T0 + 10).record
    assert tasks.status_at(paused, T0 + 10) == "paused" and paused.deadline_at == T0 + 3600
    still, missed = reap(paused, T0 + 3599)  # the slots of the pause are not missed
    assert still is paused and missed == 0 and tasks.status_at(paused, T0 + 3599) == "paused"
    resumed = tasks.apply_task_deadline(paused, T0 + 3600)
    assert resumed.increments == () and not resumed.record.paused
    assert (resumed.record.next_run_at, tasks.status_at(resumed.record, T0 + 3600)) == (T0 + 4200, "new")


def test_it_resumes_an_open_ended_pause_on_the_next_run_and_keeps_a_timed_one():
    task = end(start(declared(T0, period_seconds=600), "a", T0), "a", T0 + 5, "failed")
    open_ended = tasks.apply_pause(task, None, T0 + 10).record
    assert (open_ended.deadline_at, tasks.status_at(open_ended, T0 + 10_000)) == (None, "paused")
    assert tasks.apply_task_deadline(open_ended, T0 + 10_000).record is None  # never due
    ran = start(open_ended, "b", T0 + 10_000)
    assert not ran.paused and ran.next_run_at == T0 + 10_600 and tasks.status_at(ran, T0 + 10_000) == "failing"
    timed = start(tasks.apply_pause(task, T0 + 20_000, T0 + 10).record, "b", T0 + 10_000)
    assert timed.paused and timed.runs == 2 and tasks.status_at(timed, T0 + 10_000) == "paused"
    assert tasks.status_at(tasks.apply_resume(timed, T0 + 10_001).record, T0 + 10_001) == "failing"


@pytest.mark.parametrize(
    "body, field",
    [
        ({"depends_on": ["nightly-crawl"]}, "depends_on"),
        ({"depends_on": "upstream"}, "depends_on"),
        ({"depends_on": ["_other"]}, "depends_on"),
        ({"recovery_threshold": 0}, "recovery_threshold"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"min_runtime_seconds": -1}, "min_runtime_seconds"),
        ({"early_grace_seconds": 10**400}, "early_grace_seconds"),
    ],
)
def test_it_refuses_a_bad_health_field_naming_it(body, field):
    with pytest.raises(DeclarationError) as refused:
        parse_declaration(body, "nightly-crawl")
    assert refused.value.field == field


@pytest.mark.parametrize(
    "zone, declared_at, missed_at, expected",
    [
        ("Europe/Berlin", "2026-03-28 12:00", "2026-03-29 03:10", "2026-03-30 02:30"),
        ("America/New_York", "2026-03-07 12:00", "2026-03-08 03:10", "2026-03-09 02:30"),
    ],
)
def test_it_misses_a_run_skipped_by_the_spring_change_once_at_the_change(zone, declared_at, missed_at, expected):
    task = tasks.apply_declaration(
        None,
        "etl",
        "api",
        parse_declaration({"schedule": "30 2 * * *", "timezone": zone, "start_grace_seconds": 300}, "etl"),
        at(declared_at, zone),
    ).record
    assert task.next_run_at == at(missed_at.replace("03:10", "03:00"), zone)  # 02:30 never was: at 03:00
    task, missed = reap(task, at(missed_at, zone))
    assert missed == 1 and task.next_run_at == at(expected, zone)
