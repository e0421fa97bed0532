"""alerts/: the rules, their promtool tests, the Alertmanager example and the runbooks."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from support import ROOT, require_binary

pytestmark = pytest.mark.e2e

ALERTS = ROOT / "alerts"
RULES = ALERTS / "heartbeat-bridge.rules.yml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_it_passes_promtool_check_rules():
    promtool = require_binary("promtool")
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_it_passes_the_promtool_rule_unit_tests():
    promtool = require_binary("promtool")
    result = subprocess.run(
        [promtool, "test", "rules", str(ALERTS / "tests" / "heartbeat-bridge.test.yml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_it_unit_tests_every_alert_before_and_after_its_for():
    tests = yaml.safe_load((ALERTS / "tests" / "heartbeat-bridge.test.yml").read_text())["tests"]
    checks: dict[str, list[bool]] = {}
    for group in tests:
        for case in group.get("alert_rule_test", []):
            checks.setdefault(case["alertname"], []).append(bool(case["exp_alerts"]))
    for rule in alert_rules():
        assert {False, True} <= set(checks.get(rule["alert"], [])), rule["alert"]


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_it_gives_every_alert_the_mixin_fields(rule):
    assert re.fullmatch(r"(Task|Bridge)[A-Z][A-Za-z]+", rule["alert"])
    assert rule["for"]
    assert rule["labels"]["severity"] in ("warning", "critical")
    annotations = rule["annotations"]
    assert "{{" not in annotations["summary"], "the summary is fixed text"
    assert "{{" in annotations["description"], "the description is templated"
    anchor = rule["alert"].lower()
    assert annotations["runbook_url"] == f"http://127.0.0.1:8000/runbooks#{anchor}"  # absolute: any receiver opens it
    assert f"\n## {rule['alert']}\n" in RUNBOOKS.read_text()


def test_it_ships_an_alertmanager_config_that_amtool_accepts():
    amtool = require_binary("amtool")
    result = subprocess.run(
        [amtool, "check-config", str(ALERTS / "alertmanager.yml")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "labels, receiver",
    [
        (["severity=critical", "alertname=TaskExecutionLost"], "critical"),
        (["severity=warning", "alertname=TaskExecutionFailed"], "warning"),
        (["alertname=Watchdog"], "default"),
        (["severity=warning", "alertname=TaskFailing", "label_team=data"], "team-data"),
        (["severity=critical", "alertname=TaskExecutionLost", "label_team=web"], "team-web"),
    ],
)
def test_it_routes_alerts_by_severity(labels, receiver):
    amtool = require_binary("amtool")
    result = subprocess.run(
        [amtool, "config", "routes", "test", f"--config.file={ALERTS / 'alertmanager.yml'}", *labels],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip() == receiver


def test_it_inhibits_task_alerts_while_the_bridge_is_down():
    config = yaml.safe_load((ALERTS / "alertmanager.yml").read_text())
    inhibit = config["inhibit_rules"][0]
    assert inhibit["source_matchers"] == ['alertname=~"BridgeDown|BridgeAbsent"']
    target = re.compile(inhibit["target_matchers"][0].split("=~")[1].strip('"'))
    for rule in alert_rules():
        assert bool(target.fullmatch(rule["alert"])) is rule["alert"].startswith("Task"), rule["alert"]


def test_it_links_execution_alerts_to_their_status_pages_given_the_external_url(tmp_path):
    from bridge.server.alert_rules import render

    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(render(external_url="https://bridge.example/"))
    rules = [
        rule for group in yaml.safe_load(rules_file.read_text())["groups"] for rule in group["rules"] if "alert" in rule
    ]
    linked = {rule["alert"] for rule in rules if "status_page" in rule["annotations"]}
    assert linked == {rule["alert"] for rule in rules if "execution_id" in rule["annotations"]["description"]}
    assert {rule["annotations"]["status_page"] for rule in rules if rule["alert"] in linked} == {
        "https://bridge.example/executions/{{ $labels.execution_id }}"
    }
    assert not any("status_page" in rule["annotations"] for rule in alert_rules())  # none without the URL
    promtool = require_binary("promtool")
    result = subprocess.run([promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_it_runs_the_shipped_prometheus_config_with_only_its_addresses_rewritten(tmp_path):
    from bridge.server.demo import prometheus_config

    shipped = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    local = yaml.safe_load(prometheus_config("127.0.0.1:8001", tmp_path / "rules.yml", "127.0.0.1:9094"))
    assert local["rule_files"] == [str(tmp_path / "rules.yml")]
    assert local["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:9094"]
    [job] = local["scrape_configs"]
    assert job["static_configs"] == [{"targets": ["127.0.0.1:8001"]}]
    for config in (shipped, local):
        del config["rule_files"], config["alerting"]["alertmanagers"], config["scrape_configs"][0]["static_configs"]
    assert local == shipped  # every interval and timeout as shipped
    assert shipped["scrape_configs"][0]["scrape_interval"] == "5s" and shipped["global"]["scrape_interval"] == "15s"


def test_it_evaluates_the_event_alerts_as_often_as_the_bridge_is_scraped():
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())["scrape_configs"][0]["scrape_interval"]
    groups = {group["name"]: group for group in yaml.safe_load(RULES.read_text())["groups"]}
    fast = {
        rule["alert"]: group.get("interval")
        for group in groups.values()
        for rule in group["rules"]
        if rule.get("alert") in ("TaskExecutionFailed", "TaskExecutionLost", "TaskRunMissed")
    }
    assert fast == dict.fromkeys(("TaskExecutionFailed", "TaskExecutionLost", "TaskRunMissed"), scrape)
    assert {
        rule["alert"]: rule["for"] for group in groups.values() for rule in group["rules"] if rule.get("alert") in fast
    } == dict.fromkeys(fast, "0s")


def test_it_takes_slower_timings_for_calm(tmp_path):
    from bridge.server.alert_rules import RulesError, Timing, render

    rules = yaml.safe_load(render(timing=Timing(event_interval="15s", failed_for="1m")))
    [executions] = [group for group in rules["groups"] if group["name"] == "heartbeat-bridge.executions"]
    assert executions["interval"] == "15s"
    assert {rule["alert"]: rule["for"] for rule in executions["rules"] if "alert" in rule} == {
        "TaskExecutionLost": "0s",
        "TaskExecutionFailed": "1m",
    }
    with pytest.raises(RulesError, match="--failed-for"):
        render(timing=Timing(failed_for="soon"))
