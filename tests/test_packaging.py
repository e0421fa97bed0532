"""Packaging: the two distributions, the package data, the Dockerfile and docker-compose.yml."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml

from bridge.server.alert_rules import render as render_rules
from bridge.service.config import VARIABLES, load_settings

from support import ROOT, free_port, require_binary

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_it_builds_a_non_root_image_with_a_healthcheck_and_a_data_volume():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.\d+-slim", dockerfile, re.M)
    assert "FROM ${PYTHON_IMAGE}" in dockerfile
    assert re.search(r"^USER bridge$", dockerfile, re.M)
    assert re.search(r"^HEALTHCHECK .*\n.*/healthz", dockerfile, re.M)
    assert 'VOLUME ["/data"]' in dockerfile
    assert 'ENTRYPOINT ["heartbeat-bridge"]' in dockerfile and 'CMD ["serve"]' in dockerfile
    for source in re.findall(r"^COPY (.+) \S+$", dockerfile, re.M):
        for path in source.split():
            assert (ROOT / path).exists(), path


def test_it_composes_the_whole_stack_from_files_in_the_repository():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"bridge", "agent", "prometheus", "alertmanager", "grafana", "tempo", "alert-log"}
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source
    assert services["agent"]["entrypoint"] == ["heartbeat-docker-agent"]
    assert "/var/run/docker.sock:/var/run/docker.sock:ro" in services["agent"]["volumes"]


def test_it_publishes_nothing_beyond_loopback_and_gives_task_containers_a_fixed_network():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    published = [port for service in services.values() for port in service.get("ports", [])]
    assert published and all(port.startswith("127.0.0.1:") for port in published), published
    assert compose["networks"]["heartbeat"]["name"] == "heartbeat"
    # the image's HEALTHCHECK probes the bridge's port: not for the agent nor the alert log
    assert services["agent"]["healthcheck"] == {"disable": True}
    assert services["alert-log"]["healthcheck"] == {"disable": True}
    # the bridge's settings in the stack are settings the bridge takes
    environment = {
        name: re.sub(r"\$\{[^}]*\}", "", str(value))
        for name, value in services["bridge"]["environment"].items()
        if name.startswith("BRIDGE_")
    }
    assert set(environment) <= set(VARIABLES)
    load_settings(environment)


def test_it_gives_the_example_alertmanager_receivers_a_listener_in_the_stack():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    receivers = yaml.safe_load((ROOT / "alerts" / "alertmanager.yml").read_text())["receivers"]
    urls = {config["url"] for receiver in receivers for config in receiver.get("webhook_configs", [])}
    assert urls and {url.split("/")[2] for url in urls} == {"127.0.0.1:5001"}
    alert_log = services["alert-log"]
    # Alertmanager's loopback is the alert log's: they share one network namespace
    assert alert_log["network_mode"] == "service:alertmanager"
    assert alert_log["command"] == ["alert-log", "--bind", "127.0.0.1:5001"]


def test_it_prints_each_notification_naming_its_task():
    port = free_port()
    log = subprocess.Popen(
        [sys.executable, "-m", "bridge.server.cli", "alert-log", "--bind", f"127.0.0.1:{port}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert log.stdout.readline().startswith("alert-log listening")
        notification = {
            "alerts": [
                {
                    "status": "firing",
                    "labels": {
                        "alertname": "TaskExecutionLost",
                        "task_name": "nightly-crawl",
                        "execution_id": "e-1",
                        "container_name": "task-e-1",
                    },
                }
            ]
        }
        answer = requests.post(f"http://127.0.0.1:{port}/team-data", json=notification, timeout=10)
        assert answer.status_code == 200
        assert log.stdout.readline().strip() == (
            "ALERT firing   TaskExecutionLost task_name=nightly-crawl "
            "execution_id=e-1 container_name=task-e-1 -> team-data"
        )
        assert requests.post(f"http://127.0.0.1:{port}/x", data="not json", timeout=10).status_code == 400
    finally:
        log.terminate()
        log.wait(10)


def test_it_ships_a_prometheus_config_that_promtool_accepts(tmp_path):
    promtool = require_binary("promtool")
    config = (
        (ROOT / "deploy" / "prometheus.yml")
        .read_text()
        .replace("/etc/prometheus/heartbeat-bridge.rules.yml", str(ROOT / "alerts" / "heartbeat-bridge.rules.yml"))
    )
    (tmp_path / "prometheus.yml").write_text(config)
    result = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert yaml.safe_load(config)["scrape_configs"][0]["job_name"] == "heartbeat-bridge"


def _copy_sources(destination: Path, *parts: str) -> Path:
    """Copy the named parts of the repository to ``destination``: building in the checkout
    would leave build/ and egg-info folders in it."""
    destination.mkdir(parents=True, exist_ok=True)
    for part in parts:
        source = ROOT / part
        if source.is_dir():
            shutil.copytree(
                source, destination / part, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info")
            )
        else:
            shutil.copy2(source, destination / part)
    return destination


def _run(argv: list, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_it_installs_the_container_side_with_no_third_party_package(tmp_path):
    sources = _copy_sources(tmp_path / "src", "bridge", "client")
    _run([sys.executable, "-m", "venv", str(tmp_path / "venv")])
    bin_dir = tmp_path / "venv" / "bin"
    before = {p["name"].lower() for p in json.loads(_run([bin_dir / "pip", "list", "--format=json"]).stdout)}
    _run([bin_dir / "pip", "install", "--quiet", str(sources / "client")])
    after = {p["name"].lower() for p in json.loads(_run([bin_dir / "pip", "list", "--format=json"]).stdout)}
    assert after - before == {"heartbeat-bridge-client"}
    assert "usage: heartbeat-run" in _run([bin_dir / "heartbeat-run", "--help"], cwd=tmp_path).stdout
    assert _run([bin_dir / "heartbeat-run", "--version"], cwd=tmp_path).stdout.startswith("heartbeat-run ")
    _run([bin_dir / "python", "-c", "from bridge.client import HeartbeatClient, execution_traceparent"], cwd=tmp_path)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The service's wheel, built and installed (not editable) into a folder of its own."""
    work = tmp_path_factory.mktemp("wheel")
    sources = _copy_sources(
        work / "src", "pyproject.toml", "README.md", "bridge", "alerts", "dashboards", "deploy", "docs"
    )
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--wheel-dir",
            str(work / "wheels"),
            str(sources),
        ]
    )
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(work / "site"),
            *map(str, (work / "wheels").glob("*.whl")),
        ]
    )
    # The installed copy comes first on the path; the working folder holds no checkout.
    env = {**os.environ, "PYTHONPATH": str(work / "site")}
    return work, env


def test_it_installs_rules_that_take_the_runbook_url_and_job_selector(installed):
    work, env = installed
    rules = _run(
        [
            sys.executable,
            "-m",
            "bridge.server.cli",
            "rules",
            "--runbook-url",
            "https://wiki.example/rb",
            "--job-selector",
            'job="hb-prod"',
        ],
        cwd=work,
        env=env,
    ).stdout
    assert "runbook_url: https://wiki.example/rb#taskexecutionlost" in rules
    assert 'up{job="hb-prod"} == 0' in rules and 'heartbeat-bridge"' not in rules.split("groups:")[1]
    for shipped in (("alerts", "alertmanager.yml"), ("deploy", "prometheus.yml"), ("docs", "runbooks.md")):
        where = _run(
            [sys.executable, "-c", f"from bridge.assets import asset; print(asset{shipped!r})"], cwd=work, env=env
        ).stdout.strip()
        assert where.startswith(str(work / "site")), where


def test_it_serves_the_status_pages_from_an_installed_package(installed, tmp_path):
    work, env = installed
    page = _run(
        [
            sys.executable,
            "-c",
            (
                "from bridge.web import create_app; from bridge.service.config import load_settings; "
                f"app = create_app({{'SETTINGS': load_settings({{}}, store_url='sqlite:///{tmp_path}/b.db')}}); "
                "response = app.test_client().get('/'); print(response.status_code, response.data.decode()[:200])"
            ),
        ],
        cwd=work,
        env=env,
    ).stdout
    assert page.startswith("200 <!doctype html>"), page
    package = _run(
        [sys.executable, "-c", "import bridge.web; print(bridge.web.__file__)"], cwd=work, env=env
    ).stdout.strip()
    assert package.startswith(str(work / "site")), package  # the installed copy, not the checkout


def test_it_runs_the_demo_from_an_installed_package_with_its_rules(installed, tmp_path):
    require_binary("prometheus")
    work, env = installed
    demo = subprocess.run(
        [
            sys.executable,
            "-m",
            "bridge.server.cli",
            "demo",
            "--port",
            str(free_port()),
            "--interval",
            "1",
            "--duration",
            "2",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "prometheus  http://" in demo.stdout and "not installed" not in demo.stdout
    assert f"dashboards  {work / 'site'}" in demo.stdout


def test_it_keeps_the_shipped_rules_equal_to_the_default_output_of_heartbeat_bridge_rules():
    assert (ROOT / "alerts" / "heartbeat-bridge.rules.yml").read_text() == render_rules()


@pytest.mark.e2e
@pytest.mark.slow
def test_it_installs_the_service_alone_for_make_run(tmp_path):
    """``make run``'s environment: the service and its pins, none of the test and lint tools."""
    venv = tmp_path / "venv"
    result = subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), "install-service", f"VENV={venv}"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert _run([str(venv / "bin" / "heartbeat-bridge"), "--version"], cwd=tmp_path).stdout.startswith(
        "heartbeat-bridge "
    )
    tools = ("pytest", "hypothesis", "schemathesis", "selenium", "mypy", "ruff", "uv")
    probe = f"import importlib.util, json; print(json.dumps([m for m in {tools!r} if importlib.util.find_spec(m)]))"
    found = json.loads(_run([str(venv / "bin" / "python"), "-c", probe], cwd=tmp_path).stdout)
    assert found == [], f"make run installed test or lint tools: {found}"
