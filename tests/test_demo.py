"""heartbeat-bridge demo: a simulated fleet in which tasks finish, fail and go silent."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from support import ROOT, free_port, require_binary

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DEMO_SECONDS = 60


def test_it_shows_executions_in_every_state_and_stops_on_ctrl_c():
    require_binary("prometheus-alertmanager")  # the demo prints where its alerts are listed
    port = free_port()
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bridge.server.cli",
            "demo",
            "--port",
            str(port),
            "--interval",
            "1",
            "--spawn-every",
            "0.3",
            "--duration",
            str(DEMO_SECONDS),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen: set[str] = set()
    try:
        deadline = time.monotonic() + DEMO_SECONDS
        while time.monotonic() < deadline and not {"completed", "failed", "lost", "running"} <= seen:
            try:
                body = requests.get(f"http://127.0.0.1:{port}/api/v1/executions?limit=1000", timeout=5).json()
                seen = {e["status"] for e in body["executions"]}
            except requests.RequestException:
                pass
            time.sleep(0.5)
        assert {"completed", "failed", "lost", "running"} <= seen
        statuses = lambda: {
            t["task_name"]: t["status"]
            for t in requests.get(f"http://127.0.0.1:{port}/api/v1/tasks", timeout=5).json()["tasks"]
        }
        while time.monotonic() < deadline and statuses().get("nightly-report") != "missed":
            time.sleep(0.5)
        assert statuses()["nightly-report"] == "missed"  # declared to run every 6 s, it never does
        tasks = {
            t["task_name"]: t for t in requests.get(f"http://127.0.0.1:{port}/api/v1/tasks", timeout=5).json()["tasks"]
        }
        assert tasks["publish-report"]["depends_on"] == ["nightly-report"]
        assert tasks["archive-backups"]["status"] == "paused"
        failures = lambda: requests.get(f"http://127.0.0.1:{port}/api/v1/tasks/flaky-import", timeout=5).json()[
            "consecutive_failures"
        ]
        while time.monotonic() < deadline and failures() < 2:
            time.sleep(0.5)
        assert failures() >= 2  # every run of it fails: its streak only grows
    finally:
        demo.send_signal(signal.SIGINT)
        output, _ = demo.communicate(timeout=60)
    assert demo.returncode == 0, output
    assert f"http://127.0.0.1:{port}/metrics" in output
    # Debian's Alertmanager has no web UI: its API's list is what the demo points at.
    assert re.search(r"alertmanager http://127\.0\.0\.1:\d+/api/v2/alerts", output), output


def processes_mentioning(text: str) -> list[str]:
    """Return the command lines of the running processes that mention ``text``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            line = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # it ended meanwhile
            continue
        if text in line:
            found.append(line)
    return found


def test_it_refuses_a_port_in_use_and_writes_nothing_there():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "bridge.server.cli", "demo", "--port", str(port)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1 and f"127.0.0.1:{port} is in use" in result.stderr
    assert "--port" in result.stderr


def test_it_stops_every_process_and_removes_its_folder_on_sigterm():
    for binary in ("prometheus", "prometheus-alertmanager"):  # the demo starts both beside the bridge
        require_binary(binary)
    port = free_port()
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bridge.server.cli",
            "demo",
            "--port",
            str(port),
            "--interval",
            "1",
            "--spawn-every",
            "0.5",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    for line in demo.stdout:
        lines.append(line)
        if line.startswith("simulating"):
            break
    else:
        pytest.fail("".join(lines))
    work = re.search(r"\(logs in (\S+)\)", "".join(lines)).group(1)
    children = processes_mentioning(work)
    assert any("prometheus" in c for c in children), children
    assert any("alertmanager" in c for c in children), children
    for name in ("prometheus", "alertmanager"):  # the printed pages open with Debian's packages
        printed = re.search(rf"^{name} +(http://\S+)", "".join(lines), re.M)
        assert printed, (name, lines)
        assert requests.get(printed.group(1), timeout=5).status_code == 200, printed.group(1)
    demo.send_signal(signal.SIGTERM)
    rest, _ = demo.communicate(timeout=60)
    assert demo.returncode == 0, rest
    assert processes_mentioning(work) == [] and not Path(work).exists()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
