"""The reaper after the bridge's own outage: silence it caused makes nobody lost."""

from __future__ import annotations

import pytest

from support import HEARTBEAT, seed_heartbeat

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
