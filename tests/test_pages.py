"""The status pages: their content and guard through Flask, then a real chromium on a live bridge."""

from __future__ import annotations

import base64
import re
import time
from pathlib import Path

import pytest
import requests

from support import COMPLETION, HEARTBEAT, require_binary, seed_heartbeat

TOKEN = "metrics-token-0123456789"


def basic(password: str, user: str = "ops") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def text(response) -> str:
    """Return a page's visible text, tags dropped and spaces squeezed."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", response.data.decode()))


@pytest.fixture
def fleet(client, clock):
    """A declared task with a running execution, a failed one with its output, and a lost one."""
    client.put(
        "/api/v1/tasks/nightly-crawl",
        json={
            "schedule": "0 2 * * *",
            "timezone": "Europe/Berlin",
            "failure_threshold": 2,
            "labels": {"team": "data"},
            "description": "Crawls the partner sites",
            "runbook_url": "https://wiki.example/crawl",
        },
    )
    client.post(
        HEARTBEAT,
        json=seed_heartbeat(
            "crawl-1", task_name="nightly-crawl", progress={"stage": "fetch", "current_step": 3, "total_steps": 4}
        ),
    )
    client.post(HEARTBEAT, json=seed_heartbeat("crawl-0", task_name="nightly-crawl"))
    clock.advance(125)
    client.post(
        COMPLETION,
        json={
            "execution_id": "crawl-0",
            "success": False,
            "exit_code": 3,
            "error_message": "Traceback: <ConnectionError> on partner-2",
            "result_data": {"pages": 1200},
        },
    )
    client.post(HEARTBEAT, json=seed_heartbeat("silent-1", task_name="import"))
    client.post(
        HEARTBEAT,
        json=seed_heartbeat(
            "crawl-1", task_name="nightly-crawl", progress={"stage": "parse", "current_step": 3, "total_steps": 4}
        ),
    )
    clock.advance(95)
    client.application.extensions["heartbeat_bridge"].monitor.reap()
    return client


def test_it_shows_tasks_and_executions_live_ones_first(fleet):
    page = fleet.get("/")
    assert page.status_code == 200 and page.content_type.startswith("text/html")
    assert '<meta http-equiv="refresh"' in page.data.decode()
    shown = text(page)
    # health, what the status does not say (a failed run below the threshold), and activity apart
    assert re.search(
        r"nightly-crawl up last run failed \(1 more failure makes it failing\) 0 2 \* \* \* Europe/Berlin "
        r".* 1 of 2 1 ",
        shown,
    ), shown
    rows = re.findall(r'href="/executions/([^"]+)"', page.data.decode())
    assert rows == ["crawl-1", "silent-1", "crawl-0"]  # running, lost (live first), then ended
    assert 'value="75.0"' in page.data.decode()  # crawl-1's progress bar: 3 of 4 steps


def test_it_filters_executions_by_status_and_task(fleet):
    failed = fleet.get("/?status=failed")
    assert re.findall(r'href="/executions/([^"]+)"', failed.data.decode()) == ["crawl-0"]
    imports = fleet.get("/?task_name=import")
    assert re.findall(r'href="/executions/([^"]+)"', imports.data.decode()) == ["silent-1"]
    assert fleet.get("/?status=exploded").status_code == 400


def test_it_shows_a_tasks_schedule_deadline_streak_and_runs(fleet):
    page = text(fleet.get("/tasks/nightly-crawl"))
    for expected in (
        "Crawls the partner sites",
        "0 2 * * * in Europe/Berlin",
        "team=data",
        "1 in a row (failing at 2)",
        "https://wiki.example/crawl",
        "crawl-0",
        "Declared by api",
    ):
        assert expected in page, expected
    assert re.search(r"Next deadline in \d+ h", page), page


def test_it_shows_an_executions_timeline_outcome_and_escapes_what_tasks_send(fleet):
    raw = fleet.get("/executions/crawl-0").data.decode()
    assert "&lt;ConnectionError&gt;" in raw and "<ConnectionError>" not in raw
    page = text(fleet.get("/executions/crawl-0"))
    assert "Exit code 3" in page and '"pages": 1200' in page.replace("&#34;", '"')
    assert re.search(r"running running .* failed running", page), page  # the status timeline
    stages = text(fleet.get("/executions/crawl-1"))
    assert re.search(r"Stages Stage Started Took fetch .* 2 min 5 s parse .* so far", stages), stages


def test_it_answers_unknown_pages_in_html(fleet):
    for url in ("/executions/never-seen", "/tasks/never-declared"):
        missing = fleet.get(url)
        assert missing.status_code == 404 and missing.content_type.startswith("text/html")
        assert "Not found" in text(missing)


class TestGuard:
    @pytest.fixture
    def settings_overrides(self):
        return {"metrics_token": TOKEN}

    @pytest.mark.parametrize("url", ["/", "/tasks/nightly-crawl", "/executions/crawl-1"])
    def test_it_asks_a_browser_for_the_metrics_token(self, client, url):
        for headers in ({}, basic("wrong"), {"Authorization": "Bearer wrong"}):
            refused = client.get(url, headers=headers)
            assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Basic ")
        assert client.get(url, headers=basic(TOKEN)).status_code in (200, 404)
        assert client.get(url, headers={"Authorization": f"Bearer {TOKEN}"}).status_code in (200, 404)

    def test_it_takes_the_token_as_a_basic_password_on_the_query_api_too(self, client):
        assert client.get("/api/v1/tasks", headers=basic(TOKEN)).status_code == 200
        assert client.get("/metrics", headers=basic(TOKEN, user="")).status_code == 200
        assert client.get("/metrics", headers={"Authorization": "Basic !!!"}).status_code == 401


# -- a real browser --------------------------------------------------------------------------

WIDTHS = {"desktop": (1280, 900), "phone": (390, 844)}


@pytest.fixture
def browser(tmp_path):
    """Debian's chromium, headless, driven by selenium through Debian's chromedriver."""
    chromium, driver_path = require_binary("chromium"), require_binary("chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def live_fleet(live_bridge):
    bridge = live_bridge(
        workers=1,
        env={
            "BRIDGE_METRICS_TOKEN": TOKEN,
            "BRIDGE_LOST_AFTER_INTERVALS": "1",
            "BRIDGE_REAPER_INTERVAL_SECONDS": "0.2",
            "BRIDGE_TRACE_URL": "https://tempo.example/trace/{trace_id}",
        },
    )
    post = lambda path, body: requests.post(bridge.url + path, json=body, timeout=10).raise_for_status()
    requests.put(
        bridge.url + "/api/v1/tasks/nightly-crawl",
        timeout=10,
        json={
            "schedule": "0 2 * * *",
            "timezone": "Europe/Berlin",
            "failure_threshold": 2,
            "labels": {"team": "data"},
            "description": "Crawls the partner sites",
        },
    ).raise_for_status()
    post(HEARTBEAT, seed_heartbeat("crawl-0", task_name="nightly-crawl"))
    post(
        COMPLETION,
        {
            "execution_id": "crawl-0",
            "success": False,
            "exit_code": 3,
            "error_message": "ConnectionError: partner-2 refused\n  at fetch()",
            "result_data": {"pages": 1200},
        },
    )
    post(HEARTBEAT, seed_heartbeat("silent-1", task_name="import", interval_seconds=1))
    post(
        HEARTBEAT,
        seed_heartbeat(
            "crawl-1-a-rather-long-execution-id-0123456789",
            task_name="nightly-crawl",
            progress={"stage": "fetch", "percentage": 35},
        ),
    )
    # what a status does not say: a task held back by its failing upstream, a paused one
    requests.put(bridge.url + "/api/v1/tasks/report", json={"depends_on": ["import"]}, timeout=10).raise_for_status()
    requests.put(bridge.url + "/api/v1/tasks/archive", json={"period_seconds": 3600}, timeout=10).raise_for_status()
    requests.post(bridge.url + "/api/v1/tasks/archive/pause", json={"seconds": 3600}, timeout=10).raise_for_status()
    deadline = time.monotonic() + 30
    while (
        requests.get(f"{bridge.url}/api/v1/executions/silent-1", headers=basic(TOKEN), timeout=10).json()["status"]
        != "lost"
    ):
        assert time.monotonic() < deadline, "silent-1 never went lost"
        time.sleep(0.2)
    return bridge


@pytest.mark.e2e
@pytest.mark.slow
def test_it_renders_every_page_in_chromium_at_desktop_and_phone_width(live_fleet, browser, tmp_path):
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": basic(TOKEN)})
    pages = {
        "overview": (
            "/",
            [
                "nightly-crawl",
                "silent-1",
                "lost",
                "35%",
                "paused",
                "upstream import unhealthy",
                "last run failed (1 more failure makes it failing)",
            ],
        ),
        "task": (
            "/tasks/nightly-crawl",
            ["Crawls the partner sites", "0 2 * * * in Europe/Berlin", "1 in a row (failing at 2)", "1 running now"],
        ),
        "held task": ("/tasks/report", ["upstream import unhealthy: its alerts hold back", "Depends on"]),
        "paused task": ("/tasks/archive", ["paused", "Paused", "until"]),
        "execution": (
            "/executions/crawl-0",
            ["ConnectionError: partner-2 refused", "Exit code", "3", "open the trace", '"pages": 1200'],
        ),
    }
    shots: list[Path] = []
    for width_name, (width, height) in WIDTHS.items():
        browser.set_window_size(width, height)
        for page_name, (path, expected) in pages.items():
            browser.get(live_fleet.url + path)
            body = browser.find_element("tag name", "body").text
            for snippet in expected:
                assert snippet in body, (page_name, width_name, snippet, body)
            assert browser.execute_script("return document.scripts.length") == 0  # nothing needs JavaScript
            assert browser.execute_script("return document.documentElement.lang") == "en"
            # every form control is labelled, and nothing but a table's own frame scrolls sideways
            assert browser.execute_script(
                "return [...document.querySelectorAll('select, input')].every(e => e.labels.length > 0)"
            )
            assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1"), (
                page_name,
                width_name,
            )
            if width_name == "phone":  # and at 390 px no table scrolls either: its rows are stacked
                assert browser.execute_script(
                    "return [...document.querySelectorAll('.table-wrap')]"
                    ".every(e => e.scrollWidth <= e.clientWidth + 1)"
                ), page_name
            shot = tmp_path / f"{page_name}-{width_name}.png"
            browser.save_screenshot(str(shot))
            shots.append(shot)
    trace = browser.find_element("link text", "open the trace").get_attribute("href")
    assert re.fullmatch(r"https://tempo\.example/trace/[0-9a-f]{32}", trace)
    browser.get(live_fleet.url + "/")
    browser.find_element("css selector", "select#status option[value='lost']").click()
    before = browser.find_element("tag name", "html")
    browser.find_element("css selector", "form.filters button").click()
    # The filtered page replaces this one: read its rows, not the old page's while it goes.
    from selenium.webdriver.support.expected_conditions import staleness_of
    from selenium.webdriver.support.wait import WebDriverWait

    WebDriverWait(browser, 10).until(staleness_of(before))
    listed = browser.find_elements("css selector", "section[aria-labelledby=executions] tbody th a")
    assert [a.text for a in listed] == ["silent-1"]
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
    assert all(shot.stat().st_size > 10_000 for shot in shots)
    print("screenshots:", *shots, sep="\n  ")


@pytest.mark.e2e
def test_it_asks_the_browser_for_credentials(live_fleet):
    refused = requests.get(live_fleet.url + "/", timeout=10)
    assert refused.status_code == 401 and "Basic" in refused.headers["WWW-Authenticate"]
    assert "Sign in needed" in refused.text
    assert requests.get(live_fleet.url + "/", auth=("anyone", TOKEN), timeout=10).status_code == 200


def test_it_serves_the_runbooks_with_an_anchor_for_every_alert_to_anyone(live_bridge):
    import yaml

    from support import ROOT

    bridge = live_bridge(workers=1, env={"BRIDGE_METRICS_TOKEN": TOKEN})
    page = requests.get(bridge.url + "/runbooks", timeout=10)  # no token: an alert's link opens for anyone
    assert page.status_code == 200 and "default-src 'none'" in page.headers["Content-Security-Policy"]
    rules = yaml.safe_load((ROOT / "alerts" / "heartbeat-bridge.rules.yml").read_text())["groups"]
    for rule in (rule for group in rules for rule in group["rules"] if "alert" in rule):
        link = rule["annotations"]["runbook_url"]
        assert link.startswith("http://") and link.endswith(f"/runbooks#{rule['alert'].lower()}"), link
        assert f'<h2 id="{rule["alert"].lower()}">{rule["alert"]}</h2>' in page.text, rule["alert"]
    assert "<script" not in page.text and "<pre><code" in page.text  # markdown rendered, no markup let through
    assert requests.get(bridge.url + "/", timeout=10).status_code == 401  # the other pages stay guarded


def test_it_pages_through_any_number_of_executions_keeping_the_filters(client, monkeypatch):
    from bridge.web import pages

    monkeypatch.setattr(pages, "PAGE_EXECUTIONS", 10)
    for n in range(25):
        client.post(HEARTBEAT, json=seed_heartbeat(f"run-{n:02d}", task_name="batch" if n % 5 else "other"))
    seen, url = [], "/?task_name=batch"
    while url:
        page = client.get(url).data.decode()
        seen += re.findall(r'<th scope="row" class="id"><a href="/executions/([^"]+)"', page)
        following = re.search(r'<a rel="next" href="([^"]+)"', page)
        url = following.group(1).replace("&amp;", "&").split("#")[0] if following else None
        assert url is None or "task_name=batch" in url  # the filter goes on with the next page
    assert sorted(seen) == [f"run-{n:02d}" for n in range(25) if n % 5] and len(seen) == len(set(seen))
    runs, url = [], "/tasks/batch"
    while url:
        page = client.get(url).data.decode()
        tracked = page[page.index('aria-label="Tracked runs"') :]
        runs += re.findall(r'href="/executions/([^"]+)"', tracked)
        following = re.search(r'<a rel="next" href="([^"]+)"', tracked)
        url = following.group(1).replace("&amp;", "&").split("#")[0] if following else None
    assert sorted(runs) == sorted(seen)
    assert client.get("/?after=nonsense").status_code == 400


def test_it_shows_how_to_report_to_a_task(client):
    check = "5f6a3b2c-1d2e-4f5a-8b9c-0d1e2f3a4b5c"
    client.put("/api/v1/tasks/nightly backup", json={"ping_uuid": check})
    page = client.get("/tasks/nightly backup").data.decode()
    assert "heartbeat-run --task-name &#39;nightly backup&#39; -- your-command" in page
    assert f"curl -fsS -m 10 --retry 5 -o /dev/null http://localhost/ping/{check}/start" in page
    client.get("/api/7/cron/imports/0123456789abcdef/?status=ok")
    sentry = client.get("/tasks/imports").data.decode()
    assert "http://&lt;public key&gt;@localhost/7" in sentry and 'monitor_slug="imports"' in sentry


@pytest.mark.e2e
def test_it_lists_the_alerts_alertmanager_holds_for_a_task_and_an_execution(live_bridge, tmp_path):
    from bridge.server.demo import alertmanager_config

    from support import free_port, start_alertmanager

    alertmanager, am_url = start_alertmanager(tmp_path / "am", alertmanager_config("http://127.0.0.1:9"))
    try:
        bridge = live_bridge(workers=1, env={"BRIDGE_ALERTMANAGER_URL": am_url})
        requests.post(bridge.url + HEARTBEAT, json=seed_heartbeat("e-1", task_name="crawl"), timeout=10)
        alerts = [
            {
                "labels": {"alertname": "TaskExecutionFailed", "task_name": "crawl", "execution_id": "e-1"},
                "annotations": {"summary": "A task execution failed."},
            },
            {
                "labels": {"alertname": "TaskRunMissed", "task_name": "crawl"},
                "annotations": {"summary": "A task's expected run did not start."},
            },
        ]
        assert requests.post(am_url + "/api/v2/alerts", json=alerts, timeout=10).status_code == 200
        silence = {
            "matchers": [{"name": "alertname", "value": "TaskRunMissed", "isRegex": False}],
            "startsAt": "2020-01-01T00:00:00Z",
            "endsAt": "2099-01-01T00:00:00Z",
            "createdBy": "test",
            "comment": "maintenance",
        }
        assert requests.post(am_url + "/api/v2/silences", json=silence, timeout=10).status_code == 200
        time.sleep(6)  # past the page's cache of Alertmanager's answer
        task_page = requests.get(bridge.url + "/tasks/crawl", timeout=10).text
        assert re.search(r"firing</span> <strong>TaskExecutionFailed</strong>: A task execution failed", task_page)
        assert re.search(r"silenced</span> <strong>TaskRunMissed</strong>", task_page)
        execution_page = requests.get(bridge.url + "/executions/e-1", timeout=10).text
        assert "TaskExecutionFailed" in execution_page and "TaskRunMissed" not in execution_page
        assert (
            "1 alert firing</strong> in Alertmanager, 1 silenced or inhibited"
            in requests.get(bridge.url + "/", timeout=10).text
        )
    finally:
        alertmanager.stop()
    (tmp_path / "gone").mkdir()
    gone = live_bridge(
        workers=1, env={"BRIDGE_ALERTMANAGER_URL": f"http://127.0.0.1:{free_port()}"}, data_dir=tmp_path / "gone"
    )
    page = requests.get(gone.url + "/tasks/crawl", timeout=10)
    assert page.status_code in (200, 404)
    overview = requests.get(gone.url + "/", timeout=10)
    assert overview.status_code == 200 and "did not answer" in overview.text  # said on the page, never an error


def test_it_pauses_resumes_and_forgets_from_the_pages_and_refuses_another_sites_form(client):
    client.put("/api/v1/tasks/hourly", json={"period_seconds": 3600})
    client.post(HEARTBEAT, json=seed_heartbeat("done-1", task_name="hourly"))
    client.post(COMPLETION, json={"execution_id": "done-1", "success": True})
    assert 'action="/tasks/hourly/pause"' in client.get("/tasks/hourly").data.decode()
    cross = client.post("/tasks/hourly/pause", data={"seconds": "3600"}, headers={"Sec-Fetch-Site": "cross-site"})
    assert cross.status_code == 403 and client.get("/api/v1/tasks/hourly").json["status"] != "paused"
    other = client.post("/tasks/hourly/pause", data={"seconds": "3600"}, headers={"Origin": "https://evil.example"})
    assert other.status_code == 403
    paused = client.post(
        "/tasks/hourly/pause",
        data={"seconds": "3600"},
        headers={"Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"},
    )
    assert paused.status_code == 303 and client.get("/api/v1/tasks/hourly").json["status"] == "paused"
    assert 'action="/tasks/hourly/resume"' in client.get("/tasks/hourly").data.decode()
    assert client.post("/tasks/hourly/resume").status_code == 303
    assert client.get("/api/v1/tasks/hourly").json["status"] == "up"
    assert 'action="/executions/done-1/forget"' in client.get("/executions/done-1").data.decode()
    assert client.post("/executions/done-1/forget").status_code == 303
    assert client.get("/api/v1/executions/done-1").status_code == 404
    assert client.post("/tasks/hourly/pause", data={"seconds": "soon"}).status_code == 400


class TestActingWithTokens:
    @pytest.fixture
    def settings_overrides(self):
        return {"metrics_token": TOKEN, "auth_tokens": ("fleet-token-0123456789",)}

    def test_it_asks_a_browser_for_a_fleet_token_to_act(self, client):
        client.put("/api/v1/tasks/hourly", json={}, headers={"Authorization": "Bearer fleet-token-0123456789"})
        refused = client.post("/tasks/hourly/pause", headers=basic(TOKEN))  # the pages' token reads, not acts
        assert refused.status_code == 401 and "acting on tasks" in refused.headers["WWW-Authenticate"]
        assert client.post("/tasks/hourly/pause", headers=basic("fleet-token-0123456789")).status_code == 303
