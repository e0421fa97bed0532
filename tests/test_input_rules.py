"""One table of bad values, sent through every door that takes the field: each refuses it
with a 4xx naming the field, and nothing is recorded."""

from __future__ import annotations

import json

import pytest

from bridge.core.declarations import DeclarationError
from bridge.service.tasks_file import parse_tasks

from support import seed_completion, seed_heartbeat

CHECK = "5f6a3b2c-1d2e-4f5a-8b9c-0d1e2f3a4b5c"
KEY = "0123456789abcdef0123456789abcdef"

#: kind -> bad values; every door taking a field of that kind must refuse each.
BAD = {
    "task_name": ["_other", "a" * 129, "\ud800", "", "   ", "tab\tname", 5, ["a"]],
    "labels": [
        {"bad-key": "v"},
        {"k": "\ud800"},
        {"k": "x" * 257},
        {"k": 5},
        {f"k{n}": "v" for n in range(17)},
        "team=a",
    ],
    "number": [10**400, -(10**400), -1, "5", True, [1]],
    "text": ["\ud800", "", "line\nbreak", 7, "x" * 5000],
    "url": [
        "javascript:fetch('/metrics')",
        "data:text/html,<script>",
        "ftp://files.example/x",
        "//evil.example",
        "\ud800",
    ],
    "uuid": ["not-a-uuid", 5, "5f6a3b2c-1d2e-4f5a-8b9c-0d1e2f3a4b5"],
}


def _json(client, method: str, path: str, body) -> tuple[int, str | None]:
    # ensure_ascii: a lone surrogate travels as the \ud800 escape, as a hostile client sends it
    response = client.open(
        path,
        method=method,
        data=json.dumps(body),
        content_type="application/json",
        headers={"X-Sentry-Auth": f"Sentry sentry_key={KEY}"},
    )
    return response.status_code, (response.json or {}).get("field")


def _file(declaration: dict) -> tuple[int, str | None]:
    """The tasks file's door: refusing is raising, naming the field (the start stops, a rewrite is kept out)."""
    try:
        parse_tasks(json.dumps({"tasks": [declaration]}))  # JSON is YAML
    except DeclarationError as exc:
        return 400, exc.field
    return 200, None


def _envelope(client, payload: dict) -> tuple[int, str | None]:
    body = b'{}\n{"type":"check_in"}\n' + json.dumps(payload).encode() + b"\n"
    response = client.post("/api/9/envelope/", data=body, headers={"X-Sentry-Auth": f"Sentry sentry_key={KEY}"})
    return response.status_code, response.json.get("field")


def _ping(client, path: str) -> tuple[int, str | None]:
    response = client.get(path)
    field = next((name for name in ("slug", "rid") if name in response.data.decode()), None)
    return response.status_code, field


CHECK_IN = {"check_in_id": "a" * 32, "status": "ok"}
#: kind -> door -> (send the value, the field the refusal must name)
DOORS = {
    "task_name": {
        "heartbeat": (
            lambda c, v: _json(c, "POST", "/api/v1/monitoring/heartbeat", seed_heartbeat("e", task_name=v)),
            "task_name",
        ),
        "batch": (lambda c, v: _batch(c, seed_heartbeat("e", task_name=v)), "task_name"),
        "completion": (
            lambda c, v: _json(c, "POST", "/api/v1/monitoring/completion", seed_completion("e", task_name=v)),
            "task_name",
        ),
        "container event": (
            lambda c, v: _json(
                c,
                "POST",
                "/api/v1/monitoring/container-events",
                {"execution_id": "e", "event": "start", "task_name": v},
            ),
            "task_name",
        ),
        "announcement": (lambda c, v: _json(c, "PUT", "/api/v1/executions/e", {"task_name": v}), "task_name"),
        "tasks file": (lambda c, v: _file({"name": v}), "name"),
        "sentry": (lambda c, v: _envelope(c, {**CHECK_IN, "monitor_slug": v}), "monitor_slug"),
    },
    "labels": {
        "heartbeat": (
            lambda c, v: _json(c, "POST", "/api/v1/monitoring/heartbeat", seed_heartbeat("e", labels=v)),
            "labels",
        ),
        "batch": (lambda c, v: _batch(c, seed_heartbeat("e", labels=v)), "labels"),
        "announcement": (lambda c, v: _json(c, "PUT", "/api/v1/executions/e", {"labels": v}), "labels"),
        "tasks API": (lambda c, v: _json(c, "PUT", "/api/v1/tasks/t", {"labels": v}), "labels"),
        "tasks file": (lambda c, v: _file({"name": "t", "labels": v}), "labels"),
        "in band": (
            lambda c, v: _json(
                c,
                "POST",
                "/api/v1/monitoring/heartbeat",
                seed_heartbeat("e", task_name="t", task_schedule={"labels": v}),
            ),
            "task_schedule.labels",
        ),
    },
    "number": {
        "heartbeat": (
            lambda c, v: _json(c, "POST", "/api/v1/monitoring/heartbeat", seed_heartbeat("e", interval_seconds=v)),
            "interval_seconds",
        ),
        "announcement": (
            lambda c, v: _json(c, "PUT", "/api/v1/executions/e", {"max_runtime_seconds": v}),
            "max_runtime_seconds",
        ),
        "tasks API": (lambda c, v: _json(c, "PUT", "/api/v1/tasks/t", {"period_seconds": v}), "period_seconds"),
        "tasks file": (lambda c, v: _file({"name": "t", "start_grace_seconds": v}), "start_grace_seconds"),
        "in band": (
            lambda c, v: _json(
                c,
                "POST",
                "/api/v1/monitoring/heartbeat",
                seed_heartbeat("e", task_name="t", task_schedule={"max_runtime_seconds": v}),
            ),
            "task_schedule.max_runtime_seconds",
        ),
        "sentry": (
            lambda c, v: _envelope(c, {**CHECK_IN, "monitor_slug": "t", "monitor_config": {"checkin_margin": v}}),
            "monitor_config.checkin_margin",
        ),
        "sentry interval": (
            lambda c, v: _envelope(
                c,
                {
                    **CHECK_IN,
                    "monitor_slug": "t",
                    "monitor_config": {"schedule": {"type": "interval", "value": v, "unit": "hour"}},
                },
            ),
            "monitor_config.schedule.value",
        ),
    },
    "text": {
        "heartbeat": (
            lambda c, v: _json(c, "POST", "/api/v1/monitoring/heartbeat", seed_heartbeat("e", task_type=v)),
            "task_type",
        ),
        "announcement": (lambda c, v: _json(c, "PUT", "/api/v1/executions/e", {"task_type": v}), "task_type"),
        "tasks API": (lambda c, v: _json(c, "PUT", "/api/v1/tasks/t", {"description": v}), "description"),
        "tasks file": (lambda c, v: _file({"name": "t", "description": v}), "description"),
        "in band": (
            lambda c, v: _json(
                c,
                "POST",
                "/api/v1/monitoring/heartbeat",
                seed_heartbeat("e", task_name="t", task_schedule={"description": v}),
            ),
            "task_schedule.description",
        ),
        "sentry": (
            lambda c, v: _envelope(c, {**CHECK_IN, "monitor_slug": "t", "monitor_config": {"owner": v}}),
            "monitor_config.owner",
        ),
    },
    "url": {
        "tasks API": (lambda c, v: _json(c, "PUT", "/api/v1/tasks/t", {"runbook_url": v}), "runbook_url"),
        "tasks file": (lambda c, v: _file({"name": "t", "runbook_url": v}), "runbook_url"),
        "in band": (
            lambda c, v: _json(
                c,
                "POST",
                "/api/v1/monitoring/heartbeat",
                seed_heartbeat("e", task_name="t", task_schedule={"runbook_url": v}),
            ),
            "task_schedule.runbook_url",
        ),
    },
    "uuid": {
        "tasks API": (lambda c, v: _json(c, "PUT", "/api/v1/tasks/t", {"ping_uuid": v}), "ping_uuid"),
        "tasks file": (lambda c, v: _file({"name": "t", "ping_uuid": v}), "ping_uuid"),
        "in band": (
            lambda c, v: _json(
                c,
                "POST",
                "/api/v1/monitoring/heartbeat",
                seed_heartbeat("e", task_name="t", task_schedule={"ping_uuid": v}),
            ),
            "task_schedule.ping_uuid",
        ),
    },
}
#: The ping URL's doors: only values a URL segment can carry.
PING_DOORS = [
    ("/ping/key-1/_other?create=1", "slug"),
    (f"/ping/key-1/{'a' * 129}?create=1", "slug"),
    (f"/ping/{CHECK}?rid=not-a-uuid", "rid"),
    (f"/ping/{CHECK}?rid={CHECK[:-1]}", "rid"),
]


def _batch(client, item: dict) -> tuple[int, str | None]:
    response = client.post("/api/v1/monitoring/heartbeats", data=json.dumps([item]), content_type="application/json")
    [result] = response.json["results"]
    return result.get("code", response.status_code), result.get("field")


@pytest.fixture
def settings_overrides():
    return {"ping_keys": ("key-1",)}


CASES = [(kind, door, value) for kind, doors in DOORS.items() for door in doors for value in BAD[kind]]


@pytest.mark.parametrize(
    "kind, door, value", CASES, ids=[f"{kind}-{door}-{index}" for index, (kind, door, _) in enumerate(CASES)]
)
def test_it_refuses_a_bad_value_at_every_door_naming_the_field(client, kind, door, value):
    send, field = DOORS[kind][door]
    status, named = send(client, value)
    assert 400 <= status < 500 and named == field, (status, named)
    assert client.get("/api/v1/executions").json["executions"] == []
    assert client.get("/api/v1/tasks").json["tasks"] == []


@pytest.mark.parametrize("path, field", PING_DOORS)
def test_it_refuses_a_bad_value_in_a_ping_url_naming_the_field(client, path, field):
    client.put("/api/v1/tasks/backup", json={"ping_uuid": CHECK})
    status, named = _ping(client, path)
    assert 400 <= status < 500 and named == field
    assert client.get("/api/v1/tasks/backup").json["runs"] == 0


def test_it_has_a_door_for_every_kind_of_value():
    assert set(DOORS) == set(BAD)
