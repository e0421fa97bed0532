"""Dockerfile and docker-compose.yml: checked here, since no base image can be pulled to build them."""

from __future__ import annotations

import re
import subprocess

import yaml

from support import ROOT, require_binary


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
    assert set(services) == {"bridge", "agent", "prometheus", "alertmanager", "grafana", "tempo"}
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source
    assert services["agent"]["entrypoint"] == ["heartbeat-docker-agent"]
    assert "/var/run/docker.sock:/var/run/docker.sock:ro" in services["agent"]["volumes"]


def test_it_ships_a_prometheus_config_that_promtool_accepts(tmp_path):
    promtool = require_binary("promtool")
    config = (ROOT / "deploy" / "prometheus.yml").read_text().replace(
        "/etc/prometheus/heartbeat-bridge.rules.yml", str(ROOT / "alerts" / "heartbeat-bridge.rules.yml"))
    (tmp_path / "prometheus.yml").write_text(config)
    result = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert yaml.safe_load(config)["scrape_configs"][0]["job_name"] == "heartbeat-bridge"
