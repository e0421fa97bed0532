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
        cells = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & occupied, f"panel {panel['title']!r} overlaps another"
        occupied |= cells
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs))
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"] and target["expr"].strip()
            for name in re.findall(r"\$([A-Za-z_]\w*)", target["expr"]):  # $1: label_replace's group
                assert name == "__rate_interval" or name in variables, f"unknown variable ${name}"


def test_it_links_execution_rows_to_their_traces_through_a_datasource_variable():
    board = load(ROOT / "dashboards" / "heartbeat-bridge-fleet.json")
    table = next(p for p in board["panels"] if p["title"] == "Executions")
    links = {
        o["matcher"]["options"]: o["properties"][0]["value"][0]
        for o in table["fieldConfig"]["overrides"]
        if o["properties"][0]["id"] == "links"
    }
    assert '"datasource":"${tracing}"' in links["trace_id"]["url"] and "${__value.raw}" in links["trace_id"]["url"]
    assert "/d/hb-execution/" in links["execution_id"]["url"]
    for path in DASHBOARDS:  # no trace backend is named by a fixed uid
        assert '"datasourceUid"' not in path.read_text(), path.name
        tracing = [v for v in load(path)["templating"]["list"] if v["name"] == "tracing"]
        assert "${tracing}" not in path.read_text() or tracing[0]["type"] == "datasource"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_it_imports_through_the_ui_and_selects_the_bridge_by_a_job_variable(path):
    board = load(path)
    inputs = {i["name"]: i for i in board["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["current"]["value"] == "${DS_PROMETHEUS}"
    if "tracing" in variables:
        assert inputs["DS_TEMPO"]["pluginId"] == variables["tracing"]["query"] == "tempo"
    assert variables["job"]["query"]["query"] == "label_values(bridge_build_info, job)"
    metric = re.compile(
        r"(?<![\w:])((?:task_(?!name\b)[a-z_]+|bridge_[a-z_]+|up|scrape_[a-z_]+|ALERTS|"
        r"task:heartbeat_age_seconds))(?![\w:(])(\{[^}]*\})?"
    )
    queries = [t["expr"] for p in board["panels"] for t in p["targets"]] + [
        v["query"]["query"] for v in variables.values() if isinstance(v.get("query"), dict) and v["name"] != "job"
    ]
    for expr in queries:
        for name, selector in metric.findall(expr):
            if name not in ("task_type",):  # a label in a by () list
                assert 'job=~"$job"' in selector, (path.name, expr)


def panel(board, title):
    return next(p for p in board["panels"] if p["title"] == title)


def test_it_colours_statuses_by_what_they_mean():
    bad = {"failed", "lost", "missed", "failing"}
    checked = 0
    for path in DASHBOARDS:
        for p in load(path)["panels"]:
            for override in p.get("fieldConfig", {}).get("overrides", []):
                for prop in override["properties"]:
                    if override["matcher"]["options"] == "status" and prop["id"] == "mappings":
                        colours = {name: o["color"] for name, o in prop["value"][0]["options"].items()}
                        assert {n for n, c in colours.items() if "red" in c} == bad & set(colours), colours
                        checked += 1
    assert checked == 3  # the executions tables of Fleet and Tasks, and the Tasks table
    status = panel(load(ROOT / "dashboards" / "heartbeat-bridge-execution.json"), "Status")
    colours = {
        o["matcher"]["options"]: o["properties"][0]["value"]["fixedColor"] for o in status["fieldConfig"]["overrides"]
    }
    assert "red" in colours["lost"] and "red" in colours["failed"] and colours["completed"] == "green"


def test_it_warns_of_old_heartbeats_and_shows_exemplars_of_run_times():
    fleet = load(ROOT / "dashboards" / "heartbeat-bridge-fleet.json")
    table = panel(fleet, "Executions")
    age = next(o for o in table["fieldConfig"]["overrides"] if o["matcher"]["options"] == "heartbeat age")
    thresholds = next(p["value"] for p in age["properties"] if p["id"] == "thresholds")
    assert [step["color"] for step in thresholds["steps"]] == ["green", "yellow", "red"]
    execution = load(ROOT / "dashboards" / "heartbeat-bridge-execution.json")
    assert panel(execution, "Since last heartbeat")["fieldConfig"]["defaults"]["thresholds"] == thresholds
    tasks = load(ROOT / "dashboards" / "heartbeat-bridge-tasks.json")
    assert all(t["exemplar"] for t in panel(tasks, "Run time, 95th percentile")["targets"])
    assert all(t["exemplar"] for t in panel(fleet, "Run time p95 (1h), by task")["targets"])


def test_it_lists_live_executions_first_and_shows_the_firing_alerts():
    fleet = load(ROOT / "dashboards" / "heartbeat-bridge-fleet.json")
    table = panel(fleet, "Executions")
    assert table["options"]["sortBy"] == [{"displayName": "live", "desc": True}]
    live = next(t for t in table["targets"] if 'status=~"running|starting|lost"' in t["expr"])
    renamed = next(t for t in table["transformations"] if t["id"] == "organize")["options"]["renameByName"]
    assert renamed[f"Value #{live['refId']}"] == "live"
    alerts = panel(fleet, "Firing alerts")
    assert "ALERTS{" in alerts["targets"][0]["expr"] and 'alertstate="firing"' in alerts["targets"][0]["expr"]


def test_it_offers_the_executions_of_the_chosen_task():
    variables = {
        v["name"]: v for v in load(ROOT / "dashboards" / "heartbeat-bridge-execution.json")["templating"]["list"]
    }
    names = list(variables)
    assert names.index("task_name") < names.index("execution_id")
    assert 'task_name=~"$task_name"' in variables["execution_id"]["query"]["query"]


def test_it_provisions_the_dashboards_and_both_datasources():
    provisioning = ROOT / "dashboards" / "provisioning"
    providers = yaml.safe_load((provisioning / "dashboards" / "heartbeat-bridge.yml").read_text())["providers"]
    assert providers[0]["type"] == "file" and providers[0]["options"]["path"]
    sources = {
        d["uid"]: d
        for d in yaml.safe_load((provisioning / "datasources" / "heartbeat-bridge.yml").read_text())["datasources"]
    }
    assert sources["prometheus"]["type"] == "prometheus"
    assert sources["prometheus"]["jsonData"]["exemplarTraceIdDestinations"] == [
        {"name": "trace_id", "datasourceUid": "tempo"}
    ]
    assert sources["tempo"]["type"] == "tempo"


def test_it_lists_every_task_from_task_info_with_its_status_last_success_deadline_streak_and_p95():
    board = load(ROOT / "dashboards" / "heartbeat-bridge-tasks.json")
    variable = next(v for v in board["templating"]["list"] if v["name"] == "task_name")
    assert variable["query"]["query"] == 'label_values(task_info{job=~"$job"}, task_name)'  # not from executions
    table = next(p for p in board["panels"] if p["title"] == "Tasks: one row each")
    queried = " ".join(t["expr"] for t in table["targets"])
    for metric in (
        "task_status",
        "task_last_success_timestamp_seconds",
        "task_next_run_deadline_timestamp_seconds",
        "task_consecutive_failures",
        "task_execution_duration_seconds_bucket",
        # a failed run below the threshold, and the pause's end: what the status does not say
        "task_last_failure_timestamp_seconds",
        "task_failure_threshold",
        "task_paused_until_timestamp_seconds",
    ):
        assert metric in queried, metric
    held = next(p for p in board["panels"] if p["title"] == "Held back by upstream")
    assert any(t["expr"].startswith("max by (task_name, upstream) (task_upstream_blocking{") for t in held["targets"])
    over_time = " ".join(t["expr"] for p in board["panels"] if p["type"] == "timeseries" for t in p["targets"])
    assert "task_completions_total" in over_time and "task_runs_missed_total" in over_time
    executions = next(p for p in board["panels"] if p["title"] == "Executions of the selected tasks")
    assert all('task_name=~"$task_name"' in t["expr"] for t in executions["targets"])
