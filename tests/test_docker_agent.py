"""heartbeat-docker-agent against a real Docker engine started here (docs/development.md, Real components)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from support import ROOT, DockerEngine, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

IMAGE = "busybox:local"
#: "Within 2 seconds of its death" is the issue's promise for a container's exit.
DEATH_REPORTED_WITHIN = 2.0


@pytest.fixture(scope="module")
def engine():
    engine = DockerEngine().start()
    engine.import_busybox(IMAGE)
    yield engine
    engine.remove()
    assert not engine.root.exists(), "the engine's folder (and its namespace mount) stayed behind"


@pytest.fixture
def docker_client(engine):
    client = engine.client()
    yield client
    for container in client.containers.list(all=True):
        container.remove(force=True)
    client.close()


@pytest.fixture
def bridge(live_bridge):
    return live_bridge(workers=2, env={"BRIDGE_STARTUP_GRACE_SECONDS": "2", "BRIDGE_REAPER_INTERVAL_SECONDS": "0.2"})


@pytest.fixture
def agent(engine, bridge, tmp_path):
    """Start ``heartbeat-docker-agent``; returns a function, as tests choose its options."""
    started = []

    def start(reconnect_delay: float = 0.5) -> subprocess.Popen:
        log = open(tmp_path / "agent.log", "ab")
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bridge.agent",
                "--bridge-url",
                bridge.url,
                "--docker-host",
                engine.host,
                "--reconnect-delay",
                str(reconnect_delay),
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        started.append(process)
        wait_for(
            lambda: b"following the engine's events" in (tmp_path / "agent.log").read_bytes(),
            f"the agent to connect: {(tmp_path / 'agent.log').read_text()}",
        )
        return process

    yield start
    for process in started:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def execution(bridge, execution_id):
    response = requests.get(f"{bridge.url}/api/v1/executions/{execution_id}", timeout=5)
    return response.json() if response.status_code == 200 else None


def status_is(bridge, execution_id, status):
    return lambda: (record := execution(bridge, execution_id)) and record["status"] == status and record


def test_it_fails_an_execution_within_2_seconds_of_its_container_exiting_3(bridge, agent, docker_client):
    agent()
    execution_id = str(uuid.uuid4())
    container = docker_client.containers.run(
        IMAGE, ["sh", "-c", "sleep 0.5; exit 3"], name=f"task-{execution_id}", detach=True
    )
    wait_for(status_is(bridge, execution_id, "starting"), "the start report")
    assert container.wait(timeout=30)["StatusCode"] == 3
    died = time.monotonic()
    record = wait_for(status_is(bridge, execution_id, "failed"), "the death report", timeout=10)
    assert time.monotonic() - died < DEATH_REPORTED_WITHIN
    assert (record["exit_code"], record["error_message"]) == (3, "exited with code 3")
    assert (record["container_name"], record["image"]) == (f"task-{execution_id}", IMAGE)
    assert record["container_id"] == container.id


def test_it_reports_a_removed_container_from_the_event_alone(bridge, agent, docker_client):
    agent()
    execution_id = str(uuid.uuid4())
    docker_client.containers.run(
        IMAGE, ["sh", "-c", "exit 5"], name=f"task-{execution_id}", auto_remove=True, detach=True
    )  # docker run --rm: gone at once
    record = wait_for(status_is(bridge, execution_id, "failed"), "the death of a --rm container")
    assert (record["exit_code"], record["error_message"]) == (5, "exited with code 5")


def test_it_reports_a_container_killed_for_memory_as_out_of_memory(bridge, agent, docker_client):
    agent()
    execution_id = str(uuid.uuid4())
    docker_client.containers.run(
        IMAGE,
        ["sh", "-c", 'x=a; while true; do x="$x$x"; done'],
        labels={"heartbeat.execution_id": execution_id},
        mem_limit="32m",
        memswap_limit="32m",
        detach=True,
    )
    record = wait_for(status_is(bridge, execution_id, "failed"), "the OOM kill", timeout=60)
    assert (record["error_message"], record["oom_killed"]) == ("killed: out of memory", True)
    assert record["exit_code"] == 137


def test_it_flags_a_container_that_never_sends_a_heartbeat(bridge, agent, docker_client):
    agent()
    execution_id = str(uuid.uuid4())
    docker_client.containers.run(
        IMAGE,
        ["sleep", "60"],
        environment={"TASK_EXECUTION_ID": execution_id},
        name=f"quiet-{execution_id[:8]}",
        detach=True,
    )
    wait_for(status_is(bridge, execution_id, "starting"), "the start report")
    record = wait_for(status_is(bridge, execution_id, "lost"), "the startup grace to pass", timeout=15)
    assert "startup grace" in record["status_reason"]
    assert record["heartbeat_count"] == 0


def test_it_sees_a_python_task_container_complete_normally(bridge, agent, docker_client, tmp_path):
    agent()
    execution_id = str(uuid.uuid4())
    python = Path(sys.base_prefix)
    task = (
        "import os, sys, time\n"
        "sys.path.insert(0, '/app')\n"
        "from bridge.client import HeartbeatClient\n"
        "with HeartbeatClient(os.environ['API_BASE_URL'], os.environ['TASK_EXECUTION_ID'],\n"
        "                     os.environ['HOSTNAME'], heartbeat_interval=1) as hb:\n"
        "    for step in range(1, 4):\n"
        "        hb.update_status('running', {'stage': 'crawl', 'current_step': step, 'total_steps': 3})\n"
        "        time.sleep(0.5)\n"
        "    hb.update_status('completed', {'stage': 'done'})\n"
        "    assert hb.send_completion(True, result_data={'pages': 3})\n"
    )
    volumes = {
        str(python): {"bind": str(python), "mode": "ro"},
        str(ROOT / "bridge"): {"bind": "/app/bridge", "mode": "ro"},
    }
    for system in ("/lib", "/lib64", "/usr/lib"):  # extension modules' shared libraries
        if os.path.isdir(system):
            volumes[system] = {"bind": system, "mode": "ro"}
    container = docker_client.containers.run(
        IMAGE,
        [str(python / "bin" / "python3"), "-c", task],
        name=f"task-{execution_id}",
        environment={"TASK_EXECUTION_ID": execution_id, "API_BASE_URL": bridge.url},
        volumes=volumes,
        network_mode="host",
        detach=True,
    )
    assert container.wait(timeout=60)["StatusCode"] == 0, container.logs().decode()
    record = wait_for(status_is(bridge, execution_id, "completed"), "the completion")
    assert record["result_data"] == {"pages": 3} and record["heartbeat_count"] >= 2
    assert record["image"] == IMAGE
    # The die report comes after the completion: once the bridge has answered it, nothing changed.
    wait_for(
        lambda: f"reported die of {execution_id}" in (tmp_path / "agent.log").read_text(),
        "the bridge to answer the die report",
    )
    assert execution(bridge, execution_id)["status"] == "completed"


def test_it_survives_an_engine_restart_and_catches_up_on_what_it_missed(engine, bridge, agent, docker_client):
    process = agent(reconnect_delay=4)
    before = str(uuid.uuid4())
    docker_client.containers.run(IMAGE, ["sleep", "300"], name=f"task-{before}", detach=True)
    wait_for(status_is(bridge, before, "starting"), "the start report")

    engine.stop()  # the engine stops the running task container as it goes down
    engine.start()
    after = str(uuid.uuid4())
    client = engine.client()
    try:  # while the agent waits to reconnect: start and end another task
        container = client.containers.run(IMAGE, ["sh", "-c", "exit 3"], name=f"task-{after}", detach=True)
        assert container.wait(timeout=30)["StatusCode"] == 3
    finally:
        client.close()

    record = wait_for(status_is(bridge, after, "failed"), "the events missed during the outage")
    assert record["exit_code"] == 3
    gone = wait_for(status_is(bridge, before, "failed"), "the death that happened during the restart")
    assert gone["error_message"].startswith("exited with code")
    assert process.poll() is None, "the agent died with the engine"


# The seed's task_service.py, shortened: its own client, unchanged, reading its config.
SEED_TASK = """
import json, os, sys, time
sys.path[:0] = ["/seed", {site!r}]
from heartbeat_client import HeartbeatClient
client = HeartbeatClient(api_base_url=os.environ["API_BASE_URL"], execution_id=os.environ["TASK_EXECUTION_ID"],
                         container_id=os.environ.get("HOSTNAME", "unknown-container"), heartbeat_interval=1)
client.start()
if os.environ.get("CONFIG_PATH"):
    with open(os.environ["CONFIG_PATH"], encoding="utf-8") as f:
        print("任务配置:", json.load(f)["task_name"])
for step in range(1, 4):
    client.update_status("running", {{"stage": "数据处理中", "current_step": step, "total_steps": 3}})
    time.sleep(0.5)
client.send_completion(success=True, result_data={{"processed_records": 1000}})
client.stop()
"""


def test_it_names_seed_containers_by_announcement_label_or_config_mount(bridge, agent, docker_client, tmp_path):
    import site

    agent()
    python, site_packages = Path(sys.base_prefix), next(p for p in site.getsitepackages() if "site-packages" in p)
    volumes = {
        str(python): {"bind": str(python), "mode": "ro"},
        site_packages: {"bind": site_packages, "mode": "ro"},  # the seed client's requests
        str(ROOT / "tests" / "seed"): {"bind": "/seed", "mode": "ro"},
    }
    for system in ("/lib", "/lib64", "/usr/lib"):
        if os.path.isdir(system):
            volumes[system] = {"bind": system, "mode": "ro"}
    announced, labelled, configured = (str(uuid.uuid4()) for _ in range(3))
    response = requests.put(
        f"{bridge.url}/api/v1/executions/{announced}",
        timeout=5,
        json={"task_name": "nightly-crawl", "task_type": "crawler"},
    )
    assert response.json()["execution_status"] == "starting"
    config = tmp_path / "task_configs" / configured / "config.json"
    config.parent.mkdir(parents=True)
    config.write_text(
        json.dumps({"task_name": "示例数据采集任务", "task_type": "crawler", "simulate_error": False}), encoding="utf-8"
    )
    runs = {
        announced: ({}, {}),
        labelled: ({"heartbeat.task_name": "hourly-etl", "heartbeat.task_type": "etl"}, {}),
        configured: ({}, {str(config): {"bind": "/app/config/config.json", "mode": "ro"}}),
    }
    containers = []
    for execution_id, (labels, mounts) in runs.items():
        environment = {"TASK_EXECUTION_ID": execution_id, "API_BASE_URL": bridge.url}
        if mounts:
            environment["CONFIG_PATH"] = "/app/config/config.json"
        containers.append(
            docker_client.containers.run(
                IMAGE,
                [str(python / "bin" / "python3"), "-c", SEED_TASK.format(site=site_packages)],
                name=f"task-{execution_id}",
                labels=labels,
                environment=environment,
                volumes={**volumes, **mounts},
                network_mode="host",
                detach=True,
            )
        )
    for container in containers:
        assert container.wait(timeout=60)["StatusCode"] == 0, container.logs().decode()
    assert "示例数据采集任务" in containers[2].logs().decode()
    for execution_id, task_name in (
        (announced, "nightly-crawl"),
        (labelled, "hourly-etl"),
        (configured, "示例数据采集任务"),
    ):
        record = wait_for(status_is(bridge, execution_id, "completed"), f"the completion of {task_name}")
        assert record["task_name"] == task_name, record
        assert record["task_type"] in ("crawler", "etl")
        task = requests.get(f"{bridge.url}/api/v1/tasks/{task_name}", timeout=5).json()
        assert task["last_executions"][0]["execution_id"] == execution_id and task["status"] == "up"
    metrics = requests.get(f"{bridge.url}/metrics", timeout=5).text
    assert 'task_completions_total{outcome="success",task_name="示例数据采集任务"} 1.0' in metrics
