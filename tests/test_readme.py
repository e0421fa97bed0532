"""The README's examples: every shell block runs, as printed and in order, against a fresh bridge."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from support import ROOT, require_binary

pytestmark = pytest.mark.e2e

#: A block that needs something outside this machine says so on its first line.
ELSEWHERE = "# on a Docker host"


def shell_blocks() -> list[str]:
    """Return the README's ```sh blocks, in order."""
    return re.findall(r"^```sh\n(.*?)^```", (ROOT / "README.md").read_text(), re.MULTILINE | re.DOTALL)


def test_it_has_shell_examples_to_run():
    blocks = shell_blocks()
    assert len(blocks) >= 4 and sum(block.startswith(ELSEWHERE) for block in blocks) == 1


def test_it_runs_every_shell_example_of_the_readme_in_order_on_a_fresh_bridge(live_bridge):
    require_binary("curl")
    bridge = live_bridge(workers=1)
    venv_bin = Path(sys.executable).parent
    for block in shell_blocks():
        if block.startswith(ELSEWHERE):
            continue
        # the address `make run` listens on is this bridge's; `.venv/bin/` is this interpreter's;
        # curl fails on an HTTP error, as a reader would notice one
        script = (
            block.replace("http://127.0.0.1:8000", bridge.url)
            .replace(".venv/bin/", f"{venv_bin}/")
            .replace("curl -X", "curl -fsS -X")
        )
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, (block, result.stdout, result.stderr)
    tasks = {t["task_name"]: t for t in requests.get(bridge.url + "/api/v1/tasks", timeout=10).json()["tasks"]}
    assert tasks["nightly-backup"]["runs"] == 1  # the ping went to the task its uuid names
    assert tasks["nightly-crawl"]["schedule"] == "0 2 * * *" and tasks["nightly-crawl"]["runs"] == 1
    done = requests.get(bridge.url + "/api/v1/executions/550e8400-e29b-41d4-a716-446655440000", timeout=10).json()
    assert done["status"] == "completed"
