"""``make bench``: it runs to the end and prints every row of its table.

Only the table's shape and that each figure was measured are checked here; how fast is
the benchmark's own business (docs/performance.md), never a test's.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from support import ROOT, require_binary

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROWS = [
    "1. heartbeat ingest, SQLite store, 2 workers",
    "1. heartbeat ingest, SQLite store, 2 workers, 200 declared tasks",
    "2. heartbeat ingest, Redis store, 2 workers",
    "3. Pushgateway push, default settings",
    "3. Pushgateway push, no consistency check, 1,000 executions",
    "3. Pushgateway push, no consistency check, 10,000 executions",
    "4. batch ingest, SQLite store",
    "5. /metrics at 1,000 live executions",
    "5. /metrics at 10,000 live executions",
    "5. /metrics at 10,000 live executions, 200 declared tasks",
    "5. /metrics at 50,000 live executions",
    "5. /metrics at 100,000 live executions",
    "6. resident memory at 1,000 executions",
    "6. resident memory at 10,000 executions",
    "6. resident memory at 50,000 executions",
    "6. resident memory at 100,000 executions",
    "7. heartbeat ingest at 1,000 live executions",
    "7. heartbeat ingest at 10,000 live executions",
    "7. heartbeat ingest at 50,000 live executions",
    "7. heartbeat ingest at 100,000 live executions",
    "8. growth from 1,000 to 10,000 executions",
    "8. growth from 10,000 to 100,000 executions",
]


def test_it_runs_to_the_end_and_prints_every_row():
    for tool in ("wrk", "redis-server", "prometheus-pushgateway"):
        require_binary(tool)
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--seconds", "1"], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = [
        [cell.strip() for cell in line.split("|")[1:-1]] for line in result.stdout.splitlines() if line.startswith("| ")
    ]
    assert table[0] == ["measure", "bridge", "baseline", "ratio"]
    rows = {cells[0]: cells[1:] for cells in table[2:]}
    assert list(rows) == ROWS
    for label, (measured, _baseline, _ratio) in rows.items():
        if label.startswith("8."):  # the growth per tenfold: factors
            assert re.fullmatch(r"scrape x[\d.]+, size x[\d.]+", measured), (label, measured)
            continue
        number = re.match(r"[\d,.]+", measured)
        assert number and float(number.group().replace(",", "")) > 0, (label, measured)
    assert rows["5. /metrics at 50,000 live executions"][0].endswith("MB")


def test_it_measures_the_time_to_a_human_and_says_where_it_went():
    for tool in ("prometheus", "prometheus-alertmanager"):
        require_binary(tool)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.alert_latency",
            "--runs",
            "1",
            "--events",
            "failed",
            "--no-scrape-cost",
            "--settle",
            "60",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [
        [cell.strip() for cell in line.split("|")[1:-1]]
        for line in result.stdout.splitlines()
        if line.startswith("| ") and "|" in line[2:]
    ]
    header = rows[0]
    assert header[:4] == ["event", "run", "first notification (s)", "notifications"]
    measured = {cells[0]: dict(zip(header, cells)) for cells in rows[2:] if cells[1] == "1"}
    assert set(measured) == {"failed completion", "second failure of a task"}
    for event, cells in measured.items():
        assert float(cells["first notification (s)"]) > 0 and cells["notifications"] == "1", (event, cells)
        assert all(
            re.fullmatch(r"-?\d+\.\d", cells[part]) for part in ("detection", "scrape", "evaluation", "for", "grouping")
        ), cells
