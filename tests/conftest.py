"""Fixtures: an app on a temporary SQLite store with a fake clock, and live servers."""

from __future__ import annotations

import pytest

from bridge.service.config import load_settings
from bridge.web import create_app
from bridge.web.extension import EXTENSION_KEY

from support import FakeClock, LiveBridge, RedisCluster, start_redis

#: A test that asks for one of these starts a real server.
_SERVER_FIXTURES = frozenset({"live_bridge", "redis_url", "redis_cluster"})


def pytest_collection_modifyitems(items):
    """Mark ``e2e`` every test that starts a server, so that ``-m "not e2e"`` runs in seconds."""
    for item in items:
        params = getattr(item, "callspec", None)
        store = str(params.params.get("store_url", "")) if params is not None else ""
        if _SERVER_FIXTURES & set(item.fixturenames) or store.startswith("redis"):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    """One Redis server for the module's tests."""
    server, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    server.stop()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory):
    """A 3-master Redis Cluster for the module's tests."""
    cluster = RedisCluster(tmp_path_factory.mktemp("cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def settings_overrides() -> dict:
    """Override in a test module to change settings of the ``app`` fixture."""
    return {}


@pytest.fixture
def tracer_provider():
    """Override with a provider from bridge.telemetry.tracing.new_provider() to record spans."""
    return None


@pytest.fixture
def monotonic():
    """Override with a FakeClock to move the monotonic clock apart from ``clock`` (a step)."""
    return None


@pytest.fixture
def app(tmp_path, clock, monotonic, settings_overrides, tracer_provider):
    # Reaper rounds here happen only when a test calls monitor.reap(): say so, or the
    # fake clock's jumps between them would read as the bridge's own outages.
    overrides = {
        "reaper_interval_seconds": 3600,
        "store_url": f"sqlite:///{tmp_path / 'bridge.db'}",
        **settings_overrides,
    }
    settings = load_settings({}, sqlite_busy_timeout_seconds=0.2, **overrides)
    app = create_app(
        {
            "SETTINGS": settings,
            "CLOCK": clock,
            "TESTING": True,
            "TRACER_PROVIDER": tracer_provider,
            **({"MONOTONIC": monotonic} if monotonic else {}),
        }
    )
    yield app
    app.extensions[EXTENSION_KEY].monitor.store.close()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def monitor(app):
    return app.extensions[EXTENSION_KEY].monitor


@pytest.fixture
def live_bridge(tmp_path):
    """Start bridges with ``live_bridge(workers=N, env={...})``; all are stopped afterwards."""
    started: list[LiveBridge] = []

    def start(
        workers: int = 2, env: dict[str, str] | None = None, data_dir=None, port: int | None = None
    ) -> LiveBridge:
        bridge = LiveBridge(data_dir or tmp_path, workers, env, port)
        started.append(bridge)
        return bridge.start()

    yield start
    for bridge in started:
        bridge.stop()
