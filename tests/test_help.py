"""Every command's --help: what it does, what each option is, its default; messages with units."""

from __future__ import annotations

import subprocess
import sys

import pytest

from support import ROOT, seed_heartbeat


def help_text(*argv: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", *argv, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ("bridge.server.cli", "demo"),
        ("bridge.server.cli", "alert-log"),
        ("bridge.server.cli", "serve"),
        ("bridge.server.cli", "token"),
        ("bridge.server.cli", "rules"),
        ("bridge.container.run",),
        ("bridge.agent",),
    ],
)
def test_it_describes_each_command_without_markup(argv):
    text = help_text(*argv)
    assert "``" not in text and ":class:" not in text
    description = text.split("\n\n")[1]
    assert len(description.split()) >= 5, text  # a sentence, not a bare usage line


def test_it_points_serve_at_the_configuration_and_token_at_its_secret():
    assert "BRIDGE_" in help_text("bridge.server.cli", "serve")
    token = help_text("bridge.server.cli", "token")
    assert "BRIDGE_EXECUTION_TOKEN_SECRET" in token and "execution_id" in token


def test_it_explains_every_option_of_heartbeat_run_with_its_default():
    text = help_text("bridge.container.run")
    for option in ("--task-name", "--task-type", "--max-runtime", "--interval", "--completion-timeout"):
        line = text[text.index(option) :].split("\n  -")[0]
        assert "default" in line, line


def test_it_says_the_unit_of_a_timestamp_refused(client):
    response = client.post("/api/v1/monitoring/heartbeat", json=seed_heartbeat(timestamp=1_700_000_000_000))
    assert response.status_code == 400 and "unix seconds (not milliseconds)" in response.json["error"]


@pytest.mark.parametrize(
    "argv",
    [
        ("bridge.server.cli", "demo"),
        ("bridge.server.cli", "alert-log"),
        ("bridge.server.cli", "serve"),
        ("bridge.server.cli", "rules"),
        ("bridge.container.run",),
        ("bridge.agent",),
    ],
)
def test_it_says_each_options_default(argv):
    text = help_text(*argv)
    options = [block for block in text.split("\n  -")[1:] if not block.startswith(("h, --help", "-help", "-version"))]
    for block in options:
        assert "default" in block, block


def test_it_refuses_a_busy_address_in_one_line(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "bridge.server.cli", "serve", "--bind", f"127.0.0.1:{port}"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": "/usr/bin:/bin", "BRIDGE_STORE_URL": f"sqlite:///{tmp_path / 'b.db'}"},
        )
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "--bind" in result.stderr
