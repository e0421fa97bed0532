"""BRIDGE_* parsing: strict, naming the variable, and documented in the README."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from bridge.service import config
from bridge.service.config import VARIABLES, ConfigError, Settings, check_tasks_file, describe, load_settings

from support import ROOT

BAD_VALUES = {
    "BRIDGE_STORE_URL": "postgres://db",
    "BRIDGE_BIND": "8000",
    "BRIDGE_WORKERS": "two",
    "BRIDGE_THREADS": "0",
    "BRIDGE_DEFAULT_INTERVAL_SECONDS": "nan",
    "BRIDGE_LOST_AFTER_INTERVALS": "0.5",
    "BRIDGE_REAPER_INTERVAL_SECONDS": "-1",
    "BRIDGE_RETENTION_SECONDS": "1e12",
    "BRIDGE_STARTUP_GRACE_SECONDS": "soon",
    "BRIDGE_MAX_EXECUTIONS": "1.5",
    "BRIDGE_MAX_TASK_NAMES": "0",
    "BRIDGE_MAX_BODY_BYTES": "10",
    "BRIDGE_MAX_FIELD_BYTES": "big",
    "BRIDGE_MAX_BATCH_ITEMS": "0",
    "BRIDGE_MAX_BATCH_BODY_BYTES": "1",
    "BRIDGE_SQLITE_SYNCHRONOUS": "OFF",
    "BRIDGE_SQLITE_BUSY_TIMEOUT_SECONDS": "0",
    "BRIDGE_LOG_LEVEL": "LOUD",
    "BRIDGE_REQUEST_READ_TIMEOUT_SECONDS": "0",
    "BRIDGE_DEDUP_SECONDS": "-1",
    "BRIDGE_TASK_RETENTION_SECONDS": "forever",
    "BRIDGE_AUTH_TOKENS": "short",
    "BRIDGE_AUTH_TOKENS_FILE": "/nonexistent/tokens",
    "BRIDGE_METRICS_TOKEN": "has spaces in it ok?",
    "BRIDGE_EXECUTION_TOKEN_SECRET": "tiny",
    "BRIDGE_TASKS_FILE": "/nonexistent/tasks.yml",
    "BRIDGE_METRIC_LABELS": "team,not-a-label",
    "BRIDGE_PING_KEYS": "a key with spaces",
    "BRIDGE_PING_BODY_BYTES": "lots",
    "BRIDGE_SENTRY_KEYS": "short",
    "BRIDGE_TRACE_URL": "https://tempo.example/trace/",
    "BRIDGE_EXTERNAL_URL": "bridge.example:8000",
    "BRIDGE_ALERTMANAGER_URL": "alertmanager:9093",
}


def test_it_uses_the_documented_defaults():
    settings = load_settings({})
    assert settings == Settings()
    assert (settings.store_url, settings.workers, settings.default_interval_seconds, settings.lost_after_intervals) == (
        "sqlite:///data/bridge.db",
        2,
        30,
        3,
    )


def test_it_has_a_bad_value_case_for_every_variable():
    assert set(BAD_VALUES) == set(VARIABLES)


def start_checks(environ: dict[str, str]) -> Settings:
    """Return the settings after every check ``heartbeat-bridge serve`` makes before it starts."""
    settings = load_settings(environ)
    check_tasks_file(settings)
    return settings


@pytest.mark.parametrize("name", sorted(BAD_VALUES))
def test_it_refuses_a_bad_value_naming_the_variable(name):
    with pytest.raises(ConfigError, match=name):
        start_checks({name: BAD_VALUES[name]})


def test_it_parses_a_tasks_file_name_without_reading_it_so_a_worker_boots_after_a_bad_rewrite(tmp_path):
    path = tmp_path / "tasks.yml"
    path.write_bytes("tasks:\n  - name: caf\xe9\n".encode("latin-1"))
    assert load_settings({"BRIDGE_TASKS_FILE": str(path)}).tasks_file == str(path)
    with pytest.raises(ConfigError, match="is not UTF-8"):
        start_checks({"BRIDGE_TASKS_FILE": str(path)})


def test_it_parses_good_values():
    settings = load_settings(
        {
            "BRIDGE_WORKERS": " 4 ",
            "BRIDGE_RETENTION_SECONDS": "60",
            "BRIDGE_STORE_URL": "sqlite:////var/lib/bridge/b.db",
            "BRIDGE_SQLITE_SYNCHRONOUS": "full",
        }
    )
    assert (settings.workers, settings.retention_seconds) == (4, 60)
    assert settings.sqlite_synchronous == "FULL"


def test_it_warns_about_an_unknown_variable_with_a_hint(caplog, monkeypatch):
    monkeypatch.setattr(config, "_unknown_reported", False)  # as in a process that has not said it yet
    with caplog.at_level(logging.WARNING, logger="bridge.service.config"):
        load_settings({"BRIDGE_WORKER": "4", "BRIDGE_PORT": "tcp://10.0.0.1:80"})
    assert "BRIDGE_WORKER (did you mean BRIDGE_WORKERS?)" in caplog.text
    assert "BRIDGE_PORT" in caplog.text


def test_it_documents_every_variable_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    for name in VARIABLES:
        assert f"`{name}`" in readme, name


def test_it_stops_serve_with_a_message_naming_the_variable(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bridge.server.cli", "serve"],
        cwd=tmp_path,
        env={"BRIDGE_LOST_AFTER_INTERVALS": "zero", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "BRIDGE_LOST_AFTER_INTERVALS" in result.stderr


def test_it_stops_serve_with_a_message_when_the_store_cannot_be_created(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the data folder should be")
    result = subprocess.run(
        [sys.executable, "-m", "bridge.server.cli", "serve"],
        cwd=tmp_path,
        env={"BRIDGE_STORE_URL": f"sqlite:///{blocker}/bridge.db", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "heartbeat-bridge: cannot open the store at" in result.stderr
    assert "Traceback" not in result.stderr


def test_it_stops_on_a_tasks_file_naming_the_task_and_the_field(tmp_path):
    path = tmp_path / "tasks.yml"
    path.write_text(
        "tasks:\n  - name: nightly-crawl\n    schedule: '0 2 * * *'\n"
        "  - name: hourly-etl\n    schedule: '0 * * * *'\n    timezone: Mars/Olympus\n"
    )
    with pytest.raises(ConfigError, match=r"^BRIDGE_TASKS_FILE: .*: task 'hourly-etl': timezone: "):
        start_checks({"BRIDGE_TASKS_FILE": str(path)})


def test_it_stops_on_a_tasks_file_declaring_more_tasks_than_names_allowed(tmp_path):
    path = tmp_path / "tasks.yml"
    path.write_text("tasks:\n" + "".join(f"  - name: t{n}\n" for n in range(3)))
    assert start_checks({"BRIDGE_TASKS_FILE": str(path), "BRIDGE_MAX_TASK_NAMES": "3"}).tasks_file == str(path)
    with pytest.raises(ConfigError, match="BRIDGE_MAX_TASK_NAMES"):
        start_checks({"BRIDGE_TASKS_FILE": str(path), "BRIDGE_MAX_TASK_NAMES": "2"})


def test_it_describes_its_settings_without_their_secrets():
    settings = load_settings(
        {
            "BRIDGE_STORE_URL": "redis://:s3cret-pass@redis.internal:6379/0",
            "BRIDGE_AUTH_TOKENS": "fleet-token-0123456789",
        }
    )
    line = describe(settings)
    assert "s3cret-pass" not in line and "fleet-token" not in line
    assert line == "store redis://***@redis.internal:6379/0, 2 workers x 8 threads, auth on (ingest tokens)"


def test_it_warns_of_an_unknown_variable_once_per_process(caplog, monkeypatch):
    monkeypatch.setattr(config, "_unknown_reported", False)
    with caplog.at_level(logging.WARNING, logger="bridge.service.config"):
        for _ in range(3):
            load_settings({"BRIDGE_WORKRES": "4"})
    assert [r.getMessage() for r in caplog.records] == [
        "ignoring unknown variable BRIDGE_WORKRES (did you mean BRIDGE_WORKERS?)"
    ]
