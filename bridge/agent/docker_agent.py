"""``heartbeat-docker-agent``: tells the bridge when task containers start, die or run out of memory.

It follows the Docker engine's events with the ``docker`` SDK and recognises task
containers by a label (``heartbeat.execution_id`` by default), by a ``TASK_EXECUTION_ID``
environment variable, or by the seed's ``task-<execution id>`` name. After the engine
restarts (or the agent does, with ``--state-file``) it asks for the events since the last
one it saw, skips those it already handled, and checks the containers it knew to be
running, so that deaths it could not see are still reported. Each report is retried
until the bridge acknowledges it; the bridge treats repeats as duplicates.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import random
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import requests
from docker.errors import DockerException, NotFound

from .. import __version__

__all__ = ["DockerAgent", "main"]

log = logging.getLogger("bridge.agent")

DEFAULT_LABEL = "heartbeat.execution_id"
TASK_NAME_LABEL = "heartbeat.task_name"
TASK_TYPE_LABEL = "heartbeat.task_type"
EXECUTION_ENV = "TASK_EXECUTION_ID"
#: The seed's variable naming the task's JSON config inside the container.
CONFIG_ENV = "CONFIG_PATH"
MAX_CONFIG_BYTES = 1024 * 1024
MAX_TASK_TEXT = 128
EVENTS = ("start", "die", "oom")
EVENTS_URL_PATH = "/api/v1/monitoring/container-events"
DEFAULT_RECONNECT_DELAY_SECONDS = 1.0
MAX_RETRY_DELAY_SECONDS = 30.0
POST_TIMEOUT_SECONDS = 10.0
SEEN_EVENTS_KEPT = 10_000
_SEED_NAME = re.compile(r"/?task-([A-Za-z0-9._:-]{1,128})")


@dataclass
class _TaskContainer:
    execution_id: str
    container_id: str
    name: str | None
    image: str | None
    task_name: str | None = None
    task_type: str | None = None


def _task_text(value: Any) -> str | None:
    """Return ``value`` when the bridge takes it as a task name or type, else None."""
    if (
        isinstance(value, str)
        and value.strip()
        and len(value) <= MAX_TASK_TEXT
        and not any(ord(c) < 32 or ord(c) == 127 for c in value)
    ):
        return value
    return None


def _task_config(mounts: list[dict[str, Any]], config_path: str) -> dict[str, Any]:
    """Return the JSON config the container reads at ``config_path``, read on the host through
    the mount that holds it (the seed's ``docker run -v``); {} when it cannot be read."""
    for mount in sorted(mounts, key=lambda m: len(m.get("Destination") or ""), reverse=True):
        destination, source = (mount.get("Destination") or "").rstrip("/"), mount.get("Source")
        if not destination or not source:
            continue
        if config_path == destination:
            host_path = Path(source)
        elif config_path.startswith(destination + "/"):
            host_path = Path(source) / config_path[len(destination) + 1 :]
        else:
            continue
        try:
            with open(host_path, "rb") as file:
                config = json.loads(file.read(MAX_CONFIG_BYTES))
        except (OSError, ValueError) as exc:
            log.debug("cannot read the task config %s: %s", host_path, exc)
            return {}
        return config if isinstance(config, dict) else {}
    return {}


class DockerAgent:
    """Follows one engine's events and posts task containers' start, die and oom to the bridge."""

    def __init__(
        self,
        connect: Callable[[], docker.DockerClient],
        bridge_url: str,
        *,
        label: str = DEFAULT_LABEL,
        token: str | None = None,
        state_file: Path | None = None,
        reconnect_delay: float = DEFAULT_RECONNECT_DELAY_SECONDS,
    ):
        self._connect = connect
        self._events_url = bridge_url.rstrip("/") + EVENTS_URL_PATH
        self._label = label
        self._state_file = state_file
        self._reconnect_delay = reconnect_delay
        self._http = requests.Session()
        if token:
            self._http.headers["Authorization"] = f"Bearer {token}"
        self._running: dict[str, _TaskContainer] = {}  # container id -> task, while it runs
        self._oom: set[str] = set()
        self._dead: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._seen: collections.OrderedDict[tuple[Any, ...], None] = collections.OrderedDict()
        self._since = self._load_since()
        self._stop = threading.Event()
        self._stream: Any = None  # the engine's event stream, closed by stop()

    # -- the loop -------------------------------------------------------------------

    def run(self) -> None:
        """Follow events until :meth:`stop`, reconnecting whenever the engine goes away."""
        while not self._stop.is_set():
            client = None
            try:
                client = self._connect()
                client.ping()
                if self._since is None:  # first contact: from now on, and from here after an outage
                    self._since = time.time()
                since = self._since
                self._reconcile(client)
                self._stream = client.events(
                    since=f"{since:.9f}", decode=True, filters={"type": "container", "event": list(EVENTS)}
                )
                log.info("following the engine's events since %.3f", since)
                for event in self._stream:
                    self._handle(client, event)
                    if self._stop.is_set():
                        break
            except (DockerException, requests.RequestException, OSError) as exc:
                if not self._stop.is_set():
                    log.warning("lost the engine (%s); reconnecting", exc)
            finally:
                self._close(client)
            self._stop.wait(self._reconnect_delay)

    def stop(self) -> None:
        """Make :meth:`run` return; safe from a signal handler or another thread."""
        self._stop.set()
        stream = self._stream
        if stream is not None:
            try:
                stream.close()
            except Exception:  # closing a stream the engine already dropped
                pass

    def _close(self, client: Any) -> None:
        self._stream = None
        if client is not None:
            try:
                client.close()
            except Exception:
                pass

    # -- events ---------------------------------------------------------------------

    def _handle(self, client: docker.DockerClient, event: dict[str, Any]) -> None:
        action = event.get("Action") or event.get("status")
        actor = event.get("Actor") or {}
        container_id = actor.get("ID") or event.get("id")
        when = event.get("timeNano")
        key = (container_id, action, when)
        if action not in EVENTS or not container_id or key in self._seen:
            return
        self._remember(self._seen, key)
        attributes = actor.get("Attributes") or {}
        if action == "start":
            task = self._identify(client, container_id, attributes)
            if task is not None and container_id not in self._running:
                self._running[container_id] = task
                self._report(task, "start")
        elif action == "oom":
            task = self._running.get(container_id) or self._identify(client, container_id, attributes)
            if task is not None:
                self._oom.add(container_id)
                self._report(task, "oom")
        else:
            task = self._running.get(container_id) or self._identify(client, container_id, attributes)
            if task is not None:
                exit_code = attributes.get("exitCode")
                self._report_death(client, task, int(exit_code) if exit_code not in (None, "") else None)
        if when:
            self._save_since(int(when) / 1e9)

    def _report_death(self, client: docker.DockerClient, task: _TaskContainer, exit_code: int | None) -> None:
        if task.container_id in self._dead:
            return
        oom = task.container_id in self._oom
        try:
            state = client.api.inspect_container(task.container_id)["State"]
            oom = oom or bool(state.get("OOMKilled"))
            exit_code = state.get("ExitCode", exit_code) if exit_code is None else exit_code
        except (NotFound, DockerException, requests.RequestException):
            pass  # a --rm container may be gone already; the event said enough
        self._running.pop(task.container_id, None)
        self._oom.discard(task.container_id)
        self._remember(self._dead, task.container_id)
        self._report(task, "die", exit_code=exit_code, oom_killed=oom)

    def _reconcile(self, client: docker.DockerClient) -> None:
        """Report what changed while the agent could not see the engine's events."""
        running = {c["Id"]: c for c in client.api.containers()}
        for container_id, task in list(self._running.items()):
            if container_id not in running:
                self._report_death(client, task, None)
        for container_id, summary in running.items():
            if container_id in self._running:
                continue
            labels = summary.get("Labels") or {}
            names = summary.get("Names") or []
            found = self._identify(
                client, container_id, {**labels, "name": names[0] if names else "", "image": summary.get("Image", "")}
            )
            if found is not None:
                self._running[container_id] = found
                self._report(task, "start")

    def _identify(
        self, client: docker.DockerClient, container_id: str, attributes: dict[str, str]
    ) -> _TaskContainer | None:
        """Return the task a container runs, or None when it is not a task container.

        The execution comes from the label, the ``TASK_EXECUTION_ID`` variable or the seed's
        ``task-<id>`` name; the task from the ``heartbeat.task_name``/``task_type`` labels, or
        the ``task_name``/``task_type`` of the JSON file ``CONFIG_PATH`` names, read through
        its mount.
        """
        name = (attributes.get("name") or "").lstrip("/") or None
        image = attributes.get("image") or None
        execution_id = attributes.get(self._label)
        task_name, task_type = attributes.get(TASK_NAME_LABEL), attributes.get(TASK_TYPE_LABEL)
        if not execution_id or not task_name:
            try:
                details = client.api.inspect_container(container_id)
            except (NotFound, DockerException, requests.RequestException):
                details = {}  # gone already: the name is all there is
            config = details.get("Config") or {}
            labels = config.get("Labels") or {}
            env = dict(entry.split("=", 1) for entry in config.get("Env") or [] if "=" in entry)
            execution_id = execution_id or labels.get(self._label) or env.get(EXECUTION_ENV)
            task_name, task_type = task_name or labels.get(TASK_NAME_LABEL), task_type or labels.get(TASK_TYPE_LABEL)
            if not task_name and env.get(CONFIG_ENV):
                task_config = _task_config(details.get("Mounts") or [], env[CONFIG_ENV])
                task_name, task_type = task_config.get("task_name"), task_type or task_config.get("task_type")
        if not execution_id and name:
            match = _SEED_NAME.fullmatch(name)
            execution_id = match.group(1) if match else None
        if not execution_id:
            return None
        return _TaskContainer(execution_id, container_id, name, image, _task_text(task_name), _task_text(task_type))

    def _report(self, task: _TaskContainer, event: str, **fields: Any) -> None:
        """Post one event, retrying until the bridge answers (or the agent stops)."""
        body = {
            "execution_id": task.execution_id,
            "event": event,
            "container_id": task.container_id,
            "container_name": task.name,
            "image": task.image,
            "task_name": task.task_name,
            "task_type": task.task_type,
            **fields,
        }
        body = {k: v for k, v in body.items() if v is not None}
        failures = 0
        while not self._stop.is_set():
            try:
                response = self._http.post(self._events_url, json=body, timeout=POST_TIMEOUT_SECONDS)
                if response.status_code < 500 and response.status_code not in (408, 429):
                    if response.status_code >= 400:
                        log.error("bridge refused %s of %s: %s", event, task.execution_id, response.text)
                    else:
                        log.info("reported %s of %s", event, task.execution_id)
                    return
            except requests.RequestException as exc:
                log.debug("bridge unreachable: %s", exc)
            failures += 1
            self._stop.wait(random.uniform(0.5, 1.0) * min(MAX_RETRY_DELAY_SECONDS, 2.0**failures))

    # -- bookkeeping ------------------------------------------------------------------

    @staticmethod
    def _remember(seen: collections.OrderedDict[Any, None], key: Any) -> None:
        seen[key] = None
        while len(seen) > SEEN_EVENTS_KEPT:
            seen.popitem(last=False)

    def _load_since(self) -> float | None:
        if self._state_file is None or not self._state_file.exists():
            return None
        try:
            return float(self._state_file.read_text().strip())
        except ValueError:
            log.warning("ignoring an unreadable state file %s", self._state_file)
            return None

    def _save_since(self, since: float) -> None:
        self._since = since
        if self._state_file is not None:
            temporary = self._state_file.with_suffix(".tmp")
            temporary.write_text(f"{since:.9f}\n")
            temporary.replace(self._state_file)


def main(argv: list[str] | None = None) -> int:
    """Run the agent until SIGTERM or SIGINT; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="heartbeat-docker-agent",
        description="Tell Heartbeat Bridge when task containers start, die or run out of memory: it follows "
        "the Docker engine's events and reports those of containers labelled "
        "heartbeat.execution_id, with a TASK_EXECUTION_ID variable, or named task-<execution id>.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--bridge-url",
        default=os.environ.get("API_BASE_URL", "http://localhost:8000"),
        help="the bridge (default: $API_BASE_URL or %(default)s)",
    )
    parser.add_argument(
        "--docker-host",
        default=os.environ.get("DOCKER_HOST"),
        help="the engine (default: $DOCKER_HOST or the local socket)",
    )
    parser.add_argument("--label", default=DEFAULT_LABEL, help="label holding the execution id (default: %(default)s)")
    parser.add_argument("--token", default=os.environ.get("BRIDGE_TOKEN"), help="bearer token (default: $BRIDGE_TOKEN)")
    parser.add_argument(
        "--state-file",
        type=Path,
        help="remembers the last event across agent restarts (default: none, so events while "
        "the agent is down are not asked for)",
    )
    parser.add_argument(
        "--reconnect-delay",
        type=float,
        default=DEFAULT_RECONNECT_DELAY_SECONDS,
        help="seconds between reconnection attempts (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s heartbeat-docker-agent %(levelname)s %(message)s")

    def connect() -> docker.DockerClient:
        return docker.DockerClient(base_url=args.docker_host) if args.docker_host else docker.from_env()

    agent = DockerAgent(
        connect,
        args.bridge_url,
        label=args.label,
        token=args.token,
        state_file=args.state_file,
        reconnect_delay=args.reconnect_delay,
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: agent.stop())
    agent.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
