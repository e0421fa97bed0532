"""dashboards/: the structure Grafana needs to import each file unchanged, and provisioning."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from support import ROOT

DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))
PANEL_TYPES = {"stat", "gauge", "timeseries", "table", "bargauge", "text"}
GRID_WIDTH = 24


def load(path):
    return json.loads(path.read_text())


def panel_queries():
    """Yield (dashboard file, panel title, expr) for every query of every panel."""
    for path in DASHBOARDS:
        for panel in load(path)["panels"]:
            for target in panel["targets"]:
                yield path.name, panel["title"], target["expr"]


def test_it_ships_the_four_dashboards():
    assert {load(p)["uid"] for p in DASHBOARDS} == {"hb-fleet", "hb-execution", "hb-bridge", "hb-tasks"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_it_gives_grafana_what_a_dashboard_needs(path):
    board = load(path)
    assert board["uid"] and len(board["uid"]) <= 40 and board["title"]
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert "id" not in board or board["id"] is None, "an id would clash on import"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    occupied = set()
    for panel in board["panels"]:
        assert panel["type"] in PANEL_TYPES and panel["title"]
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in "xywh")
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= GRID_WIDTH
        cells = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                 for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not cells & occupied, f"panel {panel['title']!r} overlaps another"
        occupied |= cells
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs))
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"] and target["expr"].strip()
            for name in re.findall(r"\$(\w+)", target["expr"]):
                assert name == "__rate_interval" or name in variables, f"unknown variable ${name}"


def test_it_links_execution_rows_to_their_traces():
    board = load(ROOT / "dashboards" / "heartbeat-bridge-fleet.json")
    table = next(p for p in board["panels"] if p["type"] == "table")
    links = {o["matcher"]["options"]: o["properties"][0]["value"][0] for o in table["fieldConfig"]["overrides"]
             if o["properties"][0]["id"] == "links"}
    assert links["trace_id"]["internal"]["datasourceUid"] == "tempo"
    assert links["trace_id"]["internal"]["query"]["query"] == "${__value.raw}"
    assert "/d/hb-execution/" in links["execution_id"]["url"]
    assert any("trace_id" in t["expr"] or "task_execution_info" in t["expr"] for t in table["targets"])


def test_it_provisions_the_dashboards_and_both_datasources():
    provisioning = ROOT / "dashboards" / "provisioning"
    providers = yaml.safe_load((provisioning / "dashboards" / "heartbeat-bridge.yml").read_text())["providers"]
    assert providers[0]["type"] == "file" and providers[0]["options"]["path"]
    sources = {d["uid"]: d for d in yaml.safe_load(
        (provisioning / "datasources" / "heartbeat-bridge.yml").read_text())["datasources"]}
    assert sources["prometheus"]["type"] == "prometheus"
    assert sources["prometheus"]["jsonData"]["exemplarTraceIdDestinations"] == [
        {"name": "trace_id", "datasourceUid": "tempo"}]
    assert sources["tempo"]["type"] == "tempo"


def test_it_lists_every_task_from_task_info_with_its_status_last_success_deadline_streak_and_p95():
    board = load(ROOT / "dashboards" / "heartbeat-bridge-tasks.json")
    variable = next(v for v in board["templating"]["list"] if v["name"] == "task_name")
    assert variable["query"]["query"] == "label_values(task_info, task_name)"  # not from executions that expire
    table = next(p for p in board["panels"] if p["title"] == "Tasks: one row each")
    queried = " ".join(t["expr"] for t in table["targets"])
    for metric in ("task_status", "task_last_success_timestamp_seconds", "task_next_run_deadline_timestamp_seconds",
                   "task_consecutive_failures", "task_execution_duration_seconds_bucket"):
        assert metric in queried, metric
    over_time = " ".join(t["expr"] for p in board["panels"] if p["type"] == "timeseries" for t in p["targets"])
    assert "task_completions_total" in over_time and "task_runs_missed_total" in over_time
    executions = next(p for p in board["panels"] if p["title"] == "Executions of the selected tasks")
    assert all('task_name=~"$task_name"' in t["expr"] for t in executions["targets"])
