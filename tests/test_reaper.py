"""The reaper after the bridge's own outage: silence it caused makes nobody lost."""

from __future__ import annotations

import pytest

from support import HEARTBEAT, FakeClock, seed_heartbeat

EID = "550e8400-e29b-41d4-a716-446655440000"


@pytest.fixture
def settings_overrides():
    return {"reaper_interval_seconds": 5}  # an outage: more than 16 s without a round


def status(client):
    return client.get(f"/api/v1/executions/{EID}").json["status"]


def test_it_holds_deadlines_for_a_lost_window_after_an_outage(client, clock, monitor):
    client.post(HEARTBEAT, json=seed_heartbeat())
    monitor.reap()
    clock.advance(200)  # the bridge was down: no round, no heartbeat could arrive
    monitor.reap()
    assert status(client) == "running"
    for _ in range(17):  # rounds resume every 5 s; the container is still silent
        clock.advance(5)
        monitor.reap()
    assert status(client) == "running"  # 85 s after the outage: still within the window
    clock.advance(6)  # a full window after the outage, silence is the container's own
    monitor.reap()
    assert status(client) == "lost"


def test_it_lets_a_container_that_comes_back_after_the_outage_stay_running(client, clock, monitor):
    client.post(HEARTBEAT, json=seed_heartbeat())
    monitor.reap()
    clock.advance(300)
    monitor.reap()
    for second in range(5, 101, 5):
        clock.advance(5)
        if second == 20:
            client.post(HEARTBEAT, json=seed_heartbeat())  # back as soon as the bridge is
        monitor.reap()
    assert status(client) == "running"
    assert client.get(f"/api/v1/executions/{EID}").json["lost_count"] == 0


def test_it_still_marks_lost_on_time_when_rounds_are_regular(client, clock, monitor):
    client.post(HEARTBEAT, json=seed_heartbeat())
    for _ in range(19):
        clock.advance(5)
        monitor.reap()
    assert status(client) == "lost"  # 95 s of silence, rounds every 5 s: no hold


class TestClockSteps:
    """The wall clock steps while the monotonic one runs on: deadlines are re-based, once."""

    @pytest.fixture
    def monotonic(self):
        return FakeClock(0.0)

    @staticmethod
    def tick(clock, monotonic, monitor, seconds=5):
        clock.advance(seconds)
        monotonic.advance(seconds)
        monitor.reap()

    def test_it_finds_a_loss_one_window_after_the_clock_went_back_an_hour(
        self, client, clock, monotonic, monitor, caplog
    ):
        client.post(HEARTBEAT, json=seed_heartbeat())
        self.tick(clock, monotonic, monitor)
        clock.advance(-3600)
        with caplog.at_level("WARNING", logger="bridge"):
            self.tick(clock, monotonic, monitor)
        assert "stepped by -3600" in caplog.text and "re-based 1 deadlines" in caplog.text
        record = client.get(f"/api/v1/executions/{EID}").json
        assert record["deadline_at"] == clock.now + 90
        for _ in range(17):
            self.tick(clock, monotonic, monitor)
        assert status(client) == "running"
        self.tick(clock, monotonic, monitor, 6)  # one window after the step, not an hour
        assert status(client) == "lost"

    def test_it_does_not_lose_a_fast_execution_over_a_forward_step(self, client, clock, monotonic, monitor):
        client.post(HEARTBEAT, json=seed_heartbeat(interval_seconds=2))
        for _ in range(4):
            clock.advance(1)
            monotonic.advance(1)
            client.post(HEARTBEAT, json=seed_heartbeat(interval_seconds=2))
        self.tick(clock, monotonic, monitor, 1)
        clock.advance(12)  # NTP steps the clock forward, past the 6 s deadline
        self.tick(clock, monotonic, monitor, 1)
        assert status(client) == "running"
        for _ in range(10):  # the task keeps reporting; it is never lost
            clock.advance(1)
            monotonic.advance(1)
            client.post(HEARTBEAT, json=seed_heartbeat(interval_seconds=2))
            monitor.reap()
        record = client.get(f"/api/v1/executions/{EID}").json
        assert (record["status"], record["lost_count"]) == ("running", 0)

    def test_it_stores_no_negative_gap_after_a_step_back(self, client, clock, monotonic, monitor):
        client.post(HEARTBEAT, json=seed_heartbeat())
        clock.advance(-600)
        client.post(HEARTBEAT, json=seed_heartbeat())
        assert monitor.store.get(EID).gaps == []

    def test_it_rebases_once_when_two_workers_see_the_same_step(self, app, client, clock, monotonic, monitor):
        from bridge.service.monitor import Monitor

        other = Monitor(monitor.store, monitor.rules, clock, monotonic=monotonic)
        client.post(HEARTBEAT, json=seed_heartbeat())
        monitor.reap()
        other.reap()
        clock.advance(-3600)
        first = monitor.store.mark_reaped(clock.now, monitor.rules.outage_after, monitor.rules.outage_hold, True)
        second = other.store.mark_reaped(clock.now + 3, monitor.rules.outage_after, monitor.rules.outage_hold, True)
        assert (first.anomaly, first.rebase) == (True, True)
        assert (second.anomaly, second.rebase) == (True, False)
        assert second.hold_until == clock.now + 3 + monitor.rules.outage_hold


def test_it_counts_no_missed_run_for_the_slots_of_its_own_outage(client, clock, monitor):
    client.put("/api/v1/tasks/minutely", json={"period_seconds": 60, "start_grace_seconds": 10})
    monitor.reap()
    clock.advance(600)  # the bridge was down: runs may have started that nobody could hear
    monitor.reap()
    for _ in range(12):  # rounds resume; the deadlines wait a lost-window (90 s)
        clock.advance(5)
        monitor.reap()
    task = client.get("/api/v1/tasks/minutely").json
    assert (task["missed_runs"], task["status"]) == (0, "late")  # its slot after the outage is due
    for _ in range(6):
        clock.advance(5)
        monitor.reap()
    # The first slot after the outage is missed, once; the nine of the outage are not counted.
    task = client.get("/api/v1/tasks/minutely").json
    assert (task["missed_runs"], task["status"]) == (1, "missed")


def test_it_goes_on_past_a_task_whose_stored_declaration_no_rule_can_read(client, clock, monitor, caplog):
    from bridge.core.tasks import Task, TaskOutcome

    # A record written before the input rules (a period of 401 digits): its rules raise.
    broken = Task(
        "broken", declarations={"api": {"period_seconds": 10**400}}, next_run_at=clock() - 10, deadline_at=clock() - 5
    )
    monitor.store.apply_tasks([("broken", lambda cur: TaskOutcome(broken))])
    client.put("/api/v1/tasks/minutely", json={"period_seconds": 60, "start_grace_seconds": 0})
    client.post(HEARTBEAT, json=seed_heartbeat())
    for _ in range(20):  # rounds every 5 s: each raises nothing, the broken task logged and left as it is
        monitor.reap()
        clock.advance(5)
    assert status(client) == "lost"
    assert client.get("/api/v1/tasks/minutely").json["missed_runs"] == 1
    assert any("task 'broken'" in record.getMessage() for record in caplog.records)
