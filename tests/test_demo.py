"""heartbeat-bridge demo: a simulated fleet in which tasks finish, fail and go silent."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import requests

from support import ROOT, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DEMO_SECONDS = 60


def test_it_shows_executions_in_every_state_and_stops_on_ctrl_c():
    port = free_port()
    demo = subprocess.Popen(
        [sys.executable, "-m", "bridge.server.cli", "demo", "--port", str(port), "--interval", "1",
         "--spawn-every", "0.3", "--duration", str(DEMO_SECONDS)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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
        statuses = lambda: {t["task_name"]: t["status"] for t in requests.get(
            f"http://127.0.0.1:{port}/api/v1/tasks", timeout=5).json()["tasks"]}
        while time.monotonic() < deadline and statuses().get("nightly-report") != "missed":
            time.sleep(0.5)
        assert statuses()["nightly-report"] == "missed"  # declared to run every 6 s, it never does
        failures = lambda: requests.get(f"http://127.0.0.1:{port}/api/v1/tasks/flaky-import",
                                        timeout=5).json()["consecutive_failures"]
        while time.monotonic() < deadline and failures() < 2:
            time.sleep(0.5)
        assert failures() >= 2  # every run of it fails: its streak only grows
    finally:
        demo.send_signal(signal.SIGINT)
        output, _ = demo.communicate(timeout=60)
    assert demo.returncode == 0, output
    assert f"http://127.0.0.1:{port}/metrics" in output
