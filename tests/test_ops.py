"""/healthz, /readyz and JSON answers for routes that do not exist."""

from __future__ import annotations


def test_it_answers_healthz(client):
    assert client.get("/healthz").json == {"status": "ok"}


def test_it_answers_readyz_when_the_store_takes_writes(client):
    assert client.get("/readyz").json == {"status": "ready"}


def test_it_answers_unknown_routes_and_methods_with_json(client):
    missing = client.get("/api/v1/nothing")
    assert missing.status_code == 404 and "error" in missing.json
    wrong_method = client.get("/api/v1/monitoring/heartbeat")
    assert wrong_method.status_code == 405 and "error" in wrong_method.json
    assert "POST" in wrong_method.headers["Allow"]
