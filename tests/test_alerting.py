"""The alerts and dashboards against a live bridge, Prometheus and Alertmanager (Debian's)."""

from __future__ import annotations

import json
import math
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from bridge.server.demo import alertmanager_config, prometheus_config

from support import COMPLETION, HEARTBEAT, ROOT, start_alertmanager, start_prometheus

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PHASE_SECONDS = 90.0
TASK = "alerting"
#: A task whose only run fails: its task is failing, so the failed run pages.
FAILING = "alerting-fails"


class Webhook:
    """Collects Alertmanager's notifications, by receiver path."""

    def __init__(self):
        self.received: list[tuple[str, dict]] = []
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                webhook.received.append((self.path, payload))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self, path: str) -> list[dict]:
        return [a for p, payload in self.received if p == path for a in payload["alerts"]]


class Fleet(threading.Thread):
    """Heartbeats every 0.5 s for the executions in ``beating``, with moving progress."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.beating, self.stop = url, set(), threading.Event()
        self.session = requests.Session()
        self.step = 0

    def beat(self, execution_id: str) -> None:
        self.step += 1
        response = self.session.post(
            self.url + HEARTBEAT,
            timeout=5,
            json={
                "execution_id": execution_id,
                "container_id": f"task-{execution_id}",
                "status": "running",
                "task_name": TASK,
                "interval_seconds": 1,
                "progress": {"stage": "work", "current_step": self.step % 100, "total_steps": 100},
            },
        )
        assert response.status_code == 200, response.text

    def run(self):
        while not self.stop.wait(0.5):
            for execution_id in sorted(self.beating):
                self.beat(execution_id)


def firing(alertmanager: str) -> set[tuple[str, str]]:
    """Return (alertname, execution_id) of the alerts Alertmanager holds as active."""
    alerts = requests.get(alertmanager + "/api/v2/alerts", timeout=5).json()
    return {
        (a["labels"]["alertname"], a["labels"].get("execution_id", ""))
        for a in alerts
        if a["status"]["state"] in ("active", "suppressed")
    }


def query(prometheus: str, expr: str) -> list[dict]:
    """Return the samples of an instant query."""
    return requests.get(prometheus + "/api/v1/query", params={"query": expr}, timeout=5).json()["data"]["result"]


def _unix(stamp: str) -> float:
    """Return the unix time of an RFC 3339 stamp as Prometheus writes them (UTC, nanoseconds)."""
    whole, _, fraction = stamp.removesuffix("Z").partition(".")
    return datetime.fromisoformat(whole).replace(tzinfo=timezone.utc).timestamp() + float(f"0.{fraction or 0}")


def evaluated_since(prometheus: str, moment: float) -> bool:
    """Return True when every rule group has been evaluated since ``moment`` (unix seconds)."""
    groups = requests.get(prometheus + "/api/v1/rules", timeout=5).json()["data"]["groups"]
    return all(_unix(group["lastEvaluation"]) > moment for group in groups)


def settled(prometheus: str, expr: str, what: str) -> None:
    """Wait until Prometheus has scraped what ``expr`` selects, then until every rule group has
    been evaluated on it: whatever alert it makes exists by then."""
    wait_until(lambda: query(prometheus, expr), what)
    seen = time.time()
    wait_until(lambda: evaluated_since(prometheus, seen), f"the rules to be evaluated on {what}")


def wait_until(condition, what: str, timeout: float = PHASE_SECONDS):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def stack(live_bridge, tmp_path):
    """The bridge, Prometheus with the shipped deploy/prometheus.yml and rules, and Alertmanager
    with the shipped alerts/alertmanager.yml: only their addresses are this test's."""
    bridge = live_bridge(
        workers=2,
        env={
            "BRIDGE_LOST_AFTER_INTERVALS": "25",
            "BRIDGE_REAPER_INTERVAL_SECONDS": "0.5",
            "BRIDGE_RETENTION_SECONDS": "60",
            "BRIDGE_METRIC_LABELS": "team",
        },
    )
    webhook = Webhook()
    alertmanager, am_url = start_alertmanager(tmp_path / "am", alertmanager_config(webhook.url))
    prometheus, prom_url = start_prometheus(
        tmp_path / "prom",
        prometheus_config(
            bridge.url.removeprefix("http://"),
            ROOT / "alerts" / "heartbeat-bridge.rules.yml",
            am_url.removeprefix("http://"),
        ),
    )
    fleet = Fleet(bridge.url)
    fleet.start()
    yield bridge, fleet, prom_url, am_url, webhook
    fleet.stop.set()
    fleet.join(5)
    prometheus.stop()
    alertmanager.stop()
    webhook.server.shutdown()


def test_it_raises_and_resolves_alerts_and_feeds_every_dashboard_panel(stack):
    bridge, fleet, prometheus, alertmanager, webhook = stack
    session = requests.Session()
    # The fleet's task is declared, so that its schedule's panels have data too.
    assert session.put(f"{bridge.url}/api/v1/tasks/{TASK}", json={"period_seconds": 3600}, timeout=5).ok
    # A task held back by the failing one, and a paused one with an end: the Tasks board names both.
    assert session.put(f"{bridge.url}/api/v1/tasks/held", json={"depends_on": [FAILING]}, timeout=5).ok
    assert session.put(f"{bridge.url}/api/v1/tasks/resting", json={"period_seconds": 3600}, timeout=5).ok
    assert session.post(f"{bridge.url}/api/v1/tasks/resting/pause", json={"seconds": 3600}, timeout=5).ok
    for execution_id in ("missed-1", "ok-1"):
        fleet.beat(execution_id)
    fleet.beating |= {"steady-1", "late-ok"}
    session.post(bridge.url + HEARTBEAT, timeout=5, json={"execution_id": "fail-1", "task_name": FAILING})
    for execution_id, success in (("fail-1", False), ("ok-1", True)):
        session.post(
            bridge.url + COMPLETION,
            timeout=5,
            json={"execution_id": execution_id, "success": success, "error_message": None if success else "boom"},
        )

    # fail-1 failed: paged at once. missed-1 went silent after one heartbeat.
    wait_until(lambda: ("TaskExecutionFailed", "fail-1") in firing(alertmanager), "the failed alert")
    healthy = {"steady-1", "ok-1", "late-ok"}
    assert not {eid for _, eid in firing(alertmanager)} & healthy

    # 25 silent intervals later the bridge declares it lost: one page, no warning before it.
    wait_until(lambda: ("TaskExecutionLost", "missed-1") in firing(alertmanager), "the lost alert")
    wait_until(
        lambda: any(
            a["labels"]["alertname"] == "TaskExecutionLost" and a["labels"]["execution_id"] == "missed-1"
            for a in webhook.alerts("/critical")
        ),
        "a critical notification for the lost execution",
        timeout=30,
    )
    assert not {eid for _, eid in firing(alertmanager)} & healthy

    # Every panel query of every dashboard returns data from this Prometheus.
    session.post(bridge.url + COMPLETION, timeout=5, json={"execution_id": "late-ok", "success": True})
    fleet.beating.discard("late-ok")
    settled(prometheus, 'task_execution_end_timestamp_seconds{execution_id="late-ok"}', "the late completion")
    substitutions = {
        "$task_name": ".*",
        "$execution_id": "steady-1",
        "$__rate_interval": "15s",
        "$job": "heartbeat-bridge",
    }
    empty = []
    for board in sorted((ROOT / "dashboards").glob("*.json")):
        dashboard = json.loads(board.read_text())
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                expr = target["expr"]
                for name, value in substitutions.items():
                    expr = expr.replace(name, value)
                answer = requests.get(prometheus + "/api/v1/query", params={"query": expr}, timeout=10).json()
                assert answer["status"] == "success", (board.name, panel["title"], answer)
                values = [float(r["value"][1]) for r in answer["data"]["result"]]
                if not any(math.isfinite(v) for v in values):
                    empty.append(f"{board.name}: {panel['title']}: {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)
    for label, matcher in (
        ("task_name", "task_executions"),
        ("execution_id", "task_execution_info"),
        ("task_name", "task_info"),
    ):
        values = requests.get(
            f"{prometheus}/api/v1/label/{label}/values", params={"match[]": matcher}, timeout=10
        ).json()["data"]
        assert values, f"the {label} variable would be empty"

    # It comes back: the lost alert resolves.
    fleet.beating.add("missed-1")
    wait_until(
        lambda: ("TaskExecutionLost", "missed-1") not in firing(alertmanager),
        "the lost alert to resolve after the recovery",
    )
    # fail-1 leaves the bridge after its retention: the failed alert resolves.
    wait_until(
        lambda: ("TaskExecutionFailed", "fail-1") not in firing(alertmanager),
        "the failed alert to resolve when the execution's retention ends",
    )
    assert not {eid for _, eid in firing(alertmanager)} & healthy


def suppressed(alertmanager: str, alertname: str, task_name: str) -> bool:
    """Return True when Alertmanager holds ``alertname`` of ``task_name`` inhibited."""
    alerts = requests.get(alertmanager + "/api/v2/alerts", timeout=5).json()
    return any(
        a["labels"]["alertname"] == alertname
        and a["labels"].get("task_name") == task_name
        and a["status"]["state"] == "suppressed"
        and a["status"]["inhibitedBy"]
        for a in alerts
    )


def task_alerts(alertmanager: str) -> dict[tuple[str, str], dict]:
    """Return the active task alerts by (alertname, task_name), with their labels."""
    alerts = requests.get(alertmanager + "/api/v2/alerts", timeout=5).json()
    return {
        (a["labels"]["alertname"], a["labels"].get("task_name", "")): a["labels"]
        for a in alerts
        if a["status"]["state"] in ("active", "suppressed") and "execution_id" not in a["labels"]
    }


def test_it_pages_a_team_for_its_missed_and_failing_tasks_and_resolves_on_a_success(stack):
    bridge, _, prometheus, alertmanager, webhook = stack
    session = requests.Session()
    declare = lambda name, **fields: session.put(f"{bridge.url}/api/v1/tasks/{name}", json=fields, timeout=5)
    assert declare("never-runs", period_seconds=2, start_grace_seconds=1, labels={"team": "data"}).ok
    assert declare("flaky", failure_threshold=2, labels={"team": "web"}).ok
    assert declare("healthy", period_seconds=3600, labels={"team": "web"}).ok

    def run(execution_id, name, success):
        session.post(bridge.url + HEARTBEAT, timeout=5, json={"execution_id": execution_id, "task_name": name})
        session.post(bridge.url + COMPLETION, timeout=5, json={"execution_id": execution_id, "success": success})

    run("flaky-1", "flaky", False)
    run("healthy-1", "healthy", True)
    # One failure, below the threshold: scraped and evaluated, it makes no alert, not even pending.
    settled(prometheus, 'task_consecutive_failures{task_name="flaky"} == 1', "flaky's first failure")
    assert not query(prometheus, 'ALERTS{alertname="TaskFailing", task_name="flaky"}')
    assert ("TaskFailing", "flaky") not in task_alerts(alertmanager)
    run("flaky-2", "flaky", False)

    wait_until(
        lambda: {("TaskRunMissed", "never-runs"), ("TaskFailing", "flaky")} <= set(task_alerts(alertmanager)),
        "the missed-run and failing alerts",
    )
    labels = task_alerts(alertmanager)
    assert labels[("TaskRunMissed", "never-runs")]["label_team"] == "data"
    assert labels[("TaskFailing", "flaky")]["label_team"] == "web"
    assert not {name for _, name in labels} & {"healthy"}
    # The second failure made the task failing: its two failed runs page the web team, once;
    # TaskFailing, about the same runs, is held back.
    wait_until(
        lambda: (
            any(a["labels"]["alertname"] == "TaskRunMissed" for a in webhook.alerts("/team-data"))
            and any(a["labels"]["alertname"] == "TaskExecutionFailed" for a in webhook.alerts("/team-web"))
        ),
        "each team's receiver to be notified",
        timeout=60,
    )
    flaky = [
        payload
        for path, payload in webhook.received
        if path == "/team-web"
        and any(a["labels"].get("task_name") == "flaky" and a["status"] == "firing" for a in payload["alerts"])
    ]
    assert len(flaky) == 1 and {a["labels"]["execution_id"] for a in flaky[0]["alerts"]} == {"flaky-1", "flaky-2"}
    assert suppressed(alertmanager, "TaskFailing", "flaky")
    assert not any(
        a["labels"]["alertname"] == "TaskFailing" for _, payload in webhook.received for a in payload["alerts"]
    )
    missed = requests.get(
        prometheus + "/api/v1/query", timeout=5, params={"query": 'task_runs_missed_total{task_name="never-runs"}'}
    ).json()
    assert float(missed["data"]["result"][0]["value"][1]) >= 1

    # A success ends the streak: the failing alert resolves.
    run("flaky-3", "flaky", True)
    wait_until(lambda: ("TaskFailing", "flaky") not in task_alerts(alertmanager), "the failing alert to resolve")
    assert ("TaskRunMissed", "never-runs") in task_alerts(alertmanager)


def test_it_alerts_on_tasks_that_only_ping_or_check_in(stack):
    bridge, _, prometheus, alertmanager, webhook = stack
    session = requests.Session()
    check = "0d6c0b4e-5a1f-4c39-9b7e-6f2d7c1a8e90"
    # A Healthchecks check: declared once with its uuid and a period, then pinged once and never again.
    assert session.put(
        f"{bridge.url}/api/v1/tasks/backup",
        timeout=5,
        json={"ping_uuid": check, "period_seconds": 2, "start_grace_seconds": 1, "labels": {"team": "data"}},
    ).ok
    assert session.get(f"{bridge.url}/ping/{check}", timeout=5).text == "OK"
    # A Sentry monitor, declared by its check-ins' monitor_config alone, failing twice in a row.
    config = {"schedule": {"type": "crontab", "value": "0 3 * * *"}, "failure_issue_threshold": 2, "owner": "team:web"}
    for run in ("import-1", "import-2"):
        for status in ("in_progress", "error"):
            answer = session.post(
                f"{bridge.url}/api/1/cron/import-job/any-key/?status={status}&check_in_id={run}",
                json={"monitor_config": config},
                timeout=5,
            )
            assert answer.status_code == 202, answer.text
    wait_until(
        lambda: {("TaskRunMissed", "backup"), ("TaskFailing", "import-job")} <= set(task_alerts(alertmanager)),
        "the missed-run alert of a pinged check and the failing alert of a Sentry monitor",
    )
    labels = task_alerts(alertmanager)
    assert (labels[("TaskRunMissed", "backup")]["label_team"], labels[("TaskFailing", "import-job")]["label_team"]) == (
        "data",
        "web",
    )
    wait_until(
        lambda: any(a["labels"].get("task_name") == "import-job" for a in webhook.alerts("/team-web")),
        "the web team's receiver to be notified of the Sentry monitor",
        timeout=60,
    )
    assert {a["labels"]["alertname"] for a in webhook.alerts("/team-web")} == {"TaskExecutionFailed"}
    missed = requests.get(
        prometheus + "/api/v1/query", timeout=5, params={"query": 'task_runs_missed_total{task_name="backup"}'}
    ).json()
    assert float(missed["data"]["result"][0]["value"][1]) >= 1
    # An ok check-in with no id ends the streak (a run of its own): the failing alert resolves.
    assert session.get(f"{bridge.url}/api/1/cron/import-job/any-key/?status=ok", timeout=5).status_code == 202
    wait_until(
        lambda: ("TaskFailing", "import-job") not in task_alerts(alertmanager),
        "the failing alert to resolve on the monitor's next ok check-in",
    )


def test_it_notifies_once_per_failed_run_and_hears_the_next_failure_within_a_minute(stack):
    bridge, _, prometheus, alertmanager, webhook = stack
    session = requests.Session()
    assert session.put(f"{bridge.url}/api/v1/tasks/once", json={"labels": {"team": "data"}}, timeout=5).ok

    def fail(execution_id: str) -> None:
        session.post(bridge.url + HEARTBEAT, timeout=5, json={"execution_id": execution_id, "task_name": "once"})
        session.post(bridge.url + COMPLETION, timeout=5, json={"execution_id": execution_id, "success": False})

    def pages(execution_id: str) -> list[dict]:
        return [
            payload
            for _, payload in webhook.received
            if any(
                a["labels"].get("execution_id") == execution_id and a["status"] == "firing" for a in payload["alerts"]
            )
        ]

    fail("once-1")
    wait_until(lambda: pages("once-1"), "the first failure's notification", timeout=60)
    wait_until(lambda: suppressed(alertmanager, "TaskFailing", "once"), "TaskFailing, held back", timeout=60)
    fail("once-2")
    wait_until(lambda: pages("once-2"), "the second failure's own notification", timeout=60)
    # Whatever else the second failure makes is an alert by now, and Alertmanager holds all of
    # the task's alerts: the two failed runs, each notified, and the failing task, held back.
    settled(prometheus, 'task_consecutive_failures{task_name="once"} == 2', "the second failure")
    held = {
        (a["labels"]["alertname"], a["labels"].get("execution_id", ""), a["status"]["state"])
        for a in requests.get(alertmanager + "/api/v2/alerts", timeout=5).json()
        if a["labels"].get("task_name") == "once"
    }
    assert held == {
        ("TaskExecutionFailed", "once-1", "active"),
        ("TaskExecutionFailed", "once-2", "active"),
        ("TaskFailing", "", "suppressed"),
    }, held
    about_once = [
        payload
        for _, payload in webhook.received
        if any(a["labels"].get("task_name") == "once" and a["status"] == "firing" for a in payload["alerts"])
    ]
    assert len(about_once) == 2, about_once  # one notification per failed run, nothing else
    assert {a["labels"]["alertname"] for payload in about_once for a in payload["alerts"]} == {"TaskExecutionFailed"}


def test_it_pages_a_broken_upstream_once_and_holds_its_dependents_back(stack):
    bridge, _, prometheus, _, webhook = stack
    session = requests.Session()
    schedule = {"period_seconds": 2, "start_grace_seconds": 1}
    assert session.put(f"{bridge.url}/api/v1/tasks/extract", json=schedule, timeout=5).ok
    for name in ("transform", "load"):
        assert session.put(
            f"{bridge.url}/api/v1/tasks/{name}", json={**schedule, "depends_on": ["extract"]}, timeout=5
        ).ok
    wait_until(
        lambda: any(
            a["labels"].get("task_name") == "extract" for _, payload in webhook.received for a in payload["alerts"]
        ),
        "the upstream's missed run to page",
        timeout=60,
    )
    held = requests.get(
        prometheus + "/api/v1/query",
        timeout=5,
        params={"query": 'task_upstream_unhealthy{task_name=~"transform|load"}'},
    ).json()
    assert sorted(float(r["value"][1]) for r in held["data"]["result"]) == [1.0, 1.0]
    # Scraped held back and evaluated so: the dependents, missed as well, make no alert.
    settled(prometheus, 'task_upstream_unhealthy{task_name=~"transform|load"} == 1', "the hold-back")
    assert not query(prometheus, 'ALERTS{task_name=~"transform|load"}')
    paged = {a["labels"].get("task_name") for _, payload in webhook.received for a in payload["alerts"]}
    assert "extract" in paged and not paged & {"transform", "load"}
    missed = requests.get(
        prometheus + "/api/v1/query", timeout=5, params={"query": 'task_status{task_name="load", status="missed"}'}
    ).json()
    assert float(missed["data"]["result"][0]["value"][1]) == 1  # missed indeed: only its page is held back
