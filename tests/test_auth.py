"""Bearer tokens: fleet tokens, per-execution tokens, the metrics token, and the token command."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bridge.web.auth import execution_token

from support import COMPLETION, HEARTBEAT, ROOT, samples, seed_completion, seed_heartbeat, total

FLEET = "fleet-token-0123456789"
SECRET = "execution-secret-0123456789"
METRICS = "metrics-token-0123456789"
EID = "550e8400-e29b-41d4-a716-446655440000"
OTHER = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"


@pytest.fixture
def settings_overrides():
    return {"auth_tokens": (FLEET,), "execution_token_secret": SECRET, "metrics_token": METRICS}


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def rejected(client, reason):
    parsed = samples(client.get("/metrics", headers=bearer(METRICS)).data.decode())
    return total(parsed, "bridge_requests_rejected_total", reason=reason)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Basic dXNlcjpwYXNz"}, bearer("")])
def test_it_refuses_ingest_without_a_bearer_token_with_401(client, headers):
    response = client.post(HEARTBEAT, json=seed_heartbeat(), headers=headers)
    assert response.status_code == 401 and response.json["field"] == "Authorization"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get(f"/api/v1/executions/{EID}", headers=bearer(METRICS)).status_code == 404


def test_it_takes_a_fleet_token_for_any_execution(client):
    for execution_id in (EID, OTHER):
        assert client.post(HEARTBEAT, json=seed_heartbeat(execution_id), headers=bearer(FLEET)).status_code == 200


def test_it_takes_an_execution_token_for_its_own_execution_in_either_case(client):
    token = execution_token(SECRET, EID)
    assert client.post(HEARTBEAT, json=seed_heartbeat(EID.upper()), headers=bearer(token)).status_code == 200
    assert client.post(COMPLETION, json=seed_completion(EID), headers=bearer(token)).status_code == 200


def test_it_refuses_another_executions_token_with_403_and_changes_nothing(client):
    client.post(HEARTBEAT, json=seed_heartbeat(OTHER), headers=bearer(FLEET))
    stolen = execution_token(SECRET, EID)
    response = client.post(COMPLETION, json=seed_completion(OTHER), headers=bearer(stolen))
    assert response.status_code == 403 and response.json["field"] == "Authorization"
    assert client.get(f"/api/v1/executions/{OTHER}", headers=bearer(METRICS)).json["status"] == "running"
    assert rejected(client, "forbidden") == 1


def test_it_refuses_a_wrong_token_with_403_when_execution_tokens_are_on(client):
    response = client.post(HEARTBEAT, json=seed_heartbeat(), headers=bearer("not-a-real-token-at-all"))
    assert response.status_code == 403


def test_it_checks_every_item_of_a_batch_against_the_token(client):
    token = execution_token(SECRET, EID)
    body = client.post(
        "/api/v1/monitoring/heartbeats", json=[seed_heartbeat(EID), seed_heartbeat(OTHER)], headers=bearer(token)
    ).json
    assert [r.get("code", 200) for r in body["results"]] == [200, 403]


def test_it_guards_metrics_and_the_query_api_with_the_metrics_token(client):
    for path in ("/metrics", "/api/v1/executions", f"/api/v1/executions/{EID}"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers=bearer(FLEET)).status_code == 401
    assert client.get("/metrics", headers=bearer(METRICS)).status_code == 200
    assert client.get("/api/v1/executions", headers=bearer(METRICS)).status_code == 200
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200


def test_it_counts_refused_tokens(client):
    client.post(HEARTBEAT, json=seed_heartbeat())
    assert rejected(client, "unauthorized") == 1


def test_it_prints_an_execution_token_that_the_bridge_accepts(client):
    result = subprocess.run(
        [sys.executable, "-m", "bridge.server.cli", "token", EID.upper()],
        cwd=ROOT,
        env={"BRIDGE_EXECUTION_TOKEN_SECRET": SECRET, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert token == execution_token(SECRET, EID)
    assert client.post(HEARTBEAT, json=seed_heartbeat(EID), headers=bearer(token)).status_code == 200


def test_it_needs_the_secret_to_print_a_token():
    result = subprocess.run(
        [sys.executable, "-m", "bridge.server.cli", "token", EID],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "BRIDGE_EXECUTION_TOKEN_SECRET" in result.stderr
