"""``make alert-latency``: seconds from a failure to a person's notification, with what is shipped.

Starts, on 127.0.0.1: the bridge on its defaults, Debian's Prometheus with
``deploy/prometheus.yml`` (its addresses rewritten) and the rules of ``heartbeat-bridge
rules``, Debian's Alertmanager with ``alerts/alertmanager.yml`` (its receivers' URLs
rewritten to a receiver here), and, when a Docker engine can run, a private dockerd with
``heartbeat-docker-agent``. Then, in each run, at once: a failed completion, a second failure
of the same task, a container killed with ``docker kill``, one killed for memory, an
execution that goes silent, a scheduled run that never starts, and a storm of 100 failures
of one task in a minute. For each it prints the seconds from the event to the first
notification, how many notifications the event made, and where the time went:

- detection: the event until the bridge's state changed (the agent's report, the reaper);
- scrape: until Prometheus's first sample of the new state;
- evaluation: until the alert became active (Prometheus's ``activeAt``);
- for: until it fired (the ``startsAt`` Prometheus sends Alertmanager);
- grouping: until the receiver had the notification (``group_wait`` or ``group_interval``, delivery).

The event of a silent execution is its lost deadline (last heartbeat + the lost window), of a
missed run its deadline (expected start + grace). Nothing here asserts a time: the tests
assert the notifications, this prints the seconds (docs/performance.md keeps them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

from bench.run import Server, _free_port
from bridge.server.alert_rules import render
from bridge.server.demo import alertmanager_config, prometheus_config

ROOT = Path(__file__).resolve().parent.parent
NEEDED = ("prometheus", "prometheus-alertmanager")
#: The contract's goals, in seconds from the event to the first notification.
GOALS = {
    "failed completion": 30,
    "second failure of a task": 60,
    "docker kill": 30,
    "OOM kill": 30,
    "silent execution": 30,
    "missed scheduled run": 30,
}
STORM_FAILURES = 100
STORM_SECONDS = 60.0
#: How long after the last event a run waits for notifications (a group's interval and more).
SETTLE_SECONDS = 75.0
IMAGE = "busybox:latency"
#: Executions a scrape's cost is measured at.
SCRAPE_COST_EXECUTIONS = 10_000


def _say(message: str) -> None:
    print(f"alert-latency: {message}", file=sys.stderr, flush=True)


class Receiver:
    """Alertmanager's webhook receiver: every notification with the time it arrived."""

    def __init__(self) -> None:
        self.received: list[tuple[float, dict]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.lock:
                    receiver.received.append((time.time(), payload))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def notifications(self) -> list[tuple[float, dict]]:
        with self.lock:
            return list(self.received)


@dataclass
class Event:
    """One event of a run, and what became of it."""

    name: str
    task: str
    #: what an alert of this event carries: its execution, or (None) the task itself
    execution_id: str | None = None
    #: the alert expected to speak for it, and the series whose new state it reads
    alert: str = "TaskExecutionFailed"
    series: str = ""
    happened_at: float | None = None
    changed_at: float | None = None
    note: str = ""
    done: threading.Event = field(default_factory=threading.Event)

    def matches(self, labels: dict) -> bool:
        if labels.get("task_name") != self.task:
            return False
        return self.execution_id is None or labels.get("execution_id") in (None, self.execution_id)


class Stack:
    """The bridge, Prometheus, Alertmanager, the receiver (and Docker with the agent)."""

    def __init__(self, work: Path, docker: bool):
        self.work = work
        self.servers: list[Server] = []
        self.receiver = Receiver()
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "OTEL_"))}
        env.update(BRIDGE_STORE_URL=f"sqlite:///{work / 'bridge.db'}", BRIDGE_BIND=f"127.0.0.1:{port}")
        self.bridge = f"http://127.0.0.1:{port}"
        self.servers.append(
            Server(
                [sys.executable, "-m", "bridge.server.cli", "serve"], self.bridge + "/healthz", env, work / "bridge.log"
            )
        )
        am = f"127.0.0.1:{_free_port()}"
        (work / "alertmanager.yml").write_text(alertmanager_config(self.receiver.url))
        self.servers.append(
            Server(
                [
                    "prometheus-alertmanager",
                    f"--config.file={work / 'alertmanager.yml'}",
                    f"--storage.path={work / 'am'}",
                    f"--web.listen-address={am}",
                    "--cluster.listen-address=",
                ],
                f"http://{am}/-/ready",
                None,
                work / "alertmanager.log",
            )
        )
        (work / "rules.yml").write_text(render())
        prometheus = f"127.0.0.1:{_free_port()}"
        (work / "prometheus.yml").write_text(prometheus_config(f"127.0.0.1:{port}", work / "rules.yml", am))
        self.servers.append(
            Server(
                [
                    "prometheus",
                    f"--config.file={work / 'prometheus.yml'}",
                    f"--storage.tsdb.path={work / 'tsdb'}",
                    f"--web.listen-address={prometheus}",
                ],
                f"http://{prometheus}/-/ready",
                None,
                work / "prometheus.log",
            )
        )
        self.prometheus = f"http://{prometheus}"
        self.engine = self.docker = None
        if docker:
            self._start_docker()

    def _start_docker(self) -> None:
        sys.path.insert(0, str(ROOT / "tests"))
        from support import DockerEngine  # the tests' private engine: vfs, no bridge network

        try:
            self.engine = DockerEngine().start()
            self.engine.import_busybox(IMAGE)
        except Exception as exc:  # an engine that cannot run here: the rest is measured without it
            _say(f"no Docker engine ({exc}): the docker kill and OOM events are left out")
            if self.engine is not None:
                self.engine.remove()
            self.engine = None
            return
        self.docker = self.engine.client()
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        agent_log = self.work / "agent.log"
        self.servers.append(
            Server(
                [sys.executable, "-m", "bridge.agent", "--bridge-url", self.bridge, "--docker-host", self.engine.host],
                self.bridge + "/healthz",
                env,
                agent_log,
            )
        )
        deadline = time.monotonic() + 30
        while b"following the engine's events" not in agent_log.read_bytes():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the agent did not connect: {agent_log.read_text()[-2000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()
        if self.docker is not None:
            for container in self.docker.containers.list(all=True):
                container.remove(force=True)
            self.docker.close()
        if self.engine is not None:
            self.engine.remove()
        self.receiver.server.shutdown()

    # -- the bridge ---------------------------------------------------------------------

    def post(self, path: str, body: object) -> None:
        response = requests.post(self.bridge + path, json=body, timeout=10)
        response.raise_for_status()

    def execution(self, execution_id: str) -> dict | None:
        response = requests.get(f"{self.bridge}/api/v1/executions/{execution_id}", timeout=10)
        return response.json() if response.status_code == 200 else None

    def wait_execution(self, execution_id: str, status: str, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = self.execution(execution_id)
            if record is not None and record["status"] == status:
                return record
            time.sleep(0.1)
        raise TimeoutError(f"execution {execution_id} did not become {status}")

    def fail(self, task: str) -> tuple[str, float, float]:
        """Run an execution of ``task`` that fails; return its id, when the failure was sent and
        when the bridge ended it."""
        execution_id = str(uuid.uuid4())
        self.post("/api/v1/monitoring/heartbeat", {"execution_id": execution_id, "task_name": task})
        sent = time.time()
        self.post(
            "/api/v1/monitoring/completion",
            {"execution_id": execution_id, "success": False, "error_message": "the source answered 500"},
        )
        return execution_id, sent, self.execution(execution_id)["ended_at"]

    # -- Prometheus -----------------------------------------------------------------------

    def active_at(self, labels: dict) -> float | None:
        """Return when Prometheus first saw the alert with ``labels`` active (``activeAt``), or None."""
        answer = requests.get(self.prometheus + "/api/v1/alerts", timeout=10).json()
        for alert in answer["data"]["alerts"]:
            if all(
                alert["labels"].get(name) == labels.get(name) for name in ("alertname", "task_name", "execution_id")
            ):
                return _parse_time(alert["activeAt"])
        return None

    def first_sample(self, selector: str, value: str = "1") -> float | None:
        """Return the time of the first sample of ``selector`` equal to ``value`` (a range read
        of the raw samples), or None."""
        answer = requests.get(
            self.prometheus + "/api/v1/query", params={"query": f"{selector}[30m]"}, timeout=10
        ).json()
        times = [float(ts) for series in answer["data"]["result"] for ts, sample in series["values"] if sample == value]
        return min(times) if times else None


def _parse_time(text: str) -> float:
    """Return the unix time of an RFC 3339 time as Alertmanager or Docker write it (nanoseconds cut)."""
    text = text.replace("Z", "+00:00")
    if "." in text:
        head, _, rest = text.partition(".")
        digits = "".join(c for c in rest if c.isdigit())
        zone = rest[len(digits) :]
        text = f"{head}.{digits[:6]}{zone}"
    return datetime.fromisoformat(text).timestamp()


# -- the events -----------------------------------------------------------------------------


def _failed(stack: Stack, run: int) -> list[Event]:
    first = Event("failed completion", f"lat-failed-{run}")
    second = Event("second failure of a task", first.task)
    first.execution_id, first.happened_at, first.changed_at = stack.fail(first.task)
    first.done.set()
    _wait_for_notification(stack, first, timeout=120)
    time.sleep(2)
    second.execution_id, second.happened_at, second.changed_at = stack.fail(second.task)
    second.done.set()
    return [first, second]


def _docker_kill(stack: Stack, run: int) -> list[Event]:
    event = Event("docker kill", f"lat-killed-{run}", str(uuid.uuid4()))
    container = stack.docker.containers.run(
        IMAGE,
        ["sleep", "600"],
        name=f"task-{event.execution_id}",
        labels={"heartbeat.task_name": event.task},
        detach=True,
    )
    stack.wait_execution(event.execution_id, "starting", 30)
    event.happened_at = time.time()
    container.kill()
    event.changed_at = stack.wait_execution(event.execution_id, "failed", 60)["ended_at"]
    event.done.set()
    return [event]


def _oom_kill(stack: Stack, run: int) -> list[Event]:
    event = Event("OOM kill", f"lat-oom-{run}", str(uuid.uuid4()))
    container = stack.docker.containers.run(
        IMAGE,
        ["sh", "-c", 'sleep 2; x=a; while true; do x="$x$x"; done'],
        name=f"task-{event.execution_id}",
        mem_limit="32m",
        memswap_limit="32m",
        labels={"heartbeat.task_name": event.task},
        detach=True,
    )
    record = stack.wait_execution(event.execution_id, "failed", 120)
    container.reload()
    event.happened_at = _parse_time(container.attrs["State"]["FinishedAt"])
    event.changed_at = record["ended_at"]
    event.note = record["error_message"]
    event.done.set()
    return [event]


def _silent(stack: Stack, run: int) -> list[Event]:
    event = Event("silent execution", f"lat-silent-{run}", str(uuid.uuid4()), alert="TaskExecutionLost")
    stack.post("/api/v1/monitoring/heartbeat", {"execution_id": event.execution_id, "task_name": event.task})
    record = stack.execution(event.execution_id)
    window = record["interval_seconds"] * 3  # BRIDGE_LOST_AFTER_INTERVALS' default
    event.happened_at = record["last_heartbeat_at"] + window
    event.changed_at = stack.wait_execution(event.execution_id, "lost", window + 60)["updated_at"]
    event.done.set()
    return [event]


def _missed(stack: Stack, run: int) -> list[Event]:
    event = Event("missed scheduled run", f"lat-missed-{run}", alert="TaskRunMissed")
    response = requests.put(
        f"{stack.bridge}/api/v1/tasks/{event.task}", timeout=10, json={"period_seconds": 20, "start_grace_seconds": 10}
    )
    event.happened_at = response.json()["next_run_deadline_at"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if requests.get(f"{stack.bridge}/api/v1/tasks/{event.task}", timeout=10).json()["status"] == "missed":
            event.changed_at = time.time()  # the reaper's moment, seen within 0.1 s
            break
        time.sleep(0.1)
    event.done.set()
    return [event]


def _storm(stack: Stack, run: int) -> list[Event]:
    event = Event("storm: 100 failures of one task in a minute", f"lat-storm-{run}")
    event.happened_at = time.time()
    pause = STORM_SECONDS / STORM_FAILURES
    for _ in range(STORM_FAILURES):
        started = time.monotonic()
        stack.fail(event.task)
        time.sleep(max(0.0, pause - (time.monotonic() - started)))
    event.done.set()
    return [event]


def _wait_for_notification(stack: Stack, event: Event, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _notifications(stack, event):
            return
        time.sleep(0.2)


def _notifications(stack: Stack, event: Event) -> list[tuple[float, dict]]:
    """Return the notifications that brought a new firing alert of ``event``, each with the
    first such alert: a notification repeating an alert already sent is not the event's."""
    seen: set[str] = set()
    found: list[tuple[float, dict]] = []
    for arrived, payload in stack.receiver.notifications():
        new = [
            alert
            for alert in payload["alerts"]
            if alert["status"] == "firing"
            and alert["fingerprint"] not in seen
            and event.matches(alert["labels"])
            and event.happened_at is not None
            and _parse_time(alert["startsAt"]) >= event.happened_at - 5
        ]
        seen |= {alert["fingerprint"] for alert in payload["alerts"]}
        if new:
            found.append((arrived, new[0]))
    return found


@dataclass
class Measured:
    event: str
    run: int
    first: float | None
    count: int
    parts: dict[str, float | None]
    note: str = ""


def _measure(stack: Stack, event: Event, run: int) -> Measured:
    notified = _notifications(stack, event)
    if not notified or event.happened_at is None:
        return Measured(event.name, run, None, 0, {}, "no notification")
    arrived, alert = notified[0]
    labels = alert["labels"]
    if event.alert == "TaskRunMissed":
        scraped = stack.first_sample(f'task_status{{task_name="{event.task}", status="missed"}}')
    else:
        status = {"TaskExecutionLost": "lost"}.get(labels["alertname"], "failed")
        scraped = stack.first_sample(
            f'task_execution_status{{execution_id="{labels.get("execution_id")}", status="{status}"}}'
        )
    fired = _parse_time(alert["startsAt"])  # Prometheus sends the time the alert fired
    active = stack.active_at(labels)
    changed = event.changed_at
    parts = {
        "detection": _gap(event.happened_at, changed),
        "scrape": _gap(changed, scraped),
        "evaluation": _gap(scraped, active),
        "for": _gap(active, fired),
        "grouping": _gap(fired, arrived),
    }
    return Measured(
        event.name,
        run,
        arrived - event.happened_at,
        len(notified),
        parts,
        labels["alertname"] + (f"; {event.note}" if event.note else ""),
    )


def _gap(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else end - start


def one_run(stack: Stack, run: int, events: set[str], settle: float = SETTLE_SECONDS) -> list[Measured]:
    """Make every event of one run at once; return what each measured."""
    by_event: dict[str, list[Callable[[Stack, int], list[Event]]]] = {
        "failed": [_failed],
        "docker": [_docker_kill, _oom_kill] if stack.docker is not None else [],
        "silent": [_silent],
        "missed": [_missed],
        "storm": [_storm],
    }
    scenarios = [scenario for name, played in by_event.items() if name in events for scenario in played]
    results: list[list[Event]] = []
    errors: list[str] = []

    def play(scenario: Callable[[Stack, int], list[Event]]) -> None:
        try:
            results.append(scenario(stack, run))
        except Exception as exc:
            errors.append(f"{scenario.__name__}: {exc}")

    threads = [threading.Thread(target=play, args=(scenario,)) for scenario in scenarios]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    for error in errors:
        _say(f"run {run}: {error}")
    _say(f"run {run}: events made; {settle:.0f} s for their notifications")
    time.sleep(settle)
    return [_measure(stack, event, run) for group in results for event in group]


def scrape_cost(work: Path) -> dict[str, float]:
    """Return what one scrape of SCRAPE_COST_EXECUTIONS costs the bridge: CPU and wall milliseconds."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "OTEL_"))}
    env.update(BRIDGE_STORE_URL=f"sqlite:///{work / 'cost.db'}", BRIDGE_BIND=f"127.0.0.1:{port}")
    url = f"http://127.0.0.1:{port}"
    server = Server([sys.executable, "-m", "bridge.server.cli", "serve"], url + "/healthz", env, work / "cost.log")
    try:
        for first in range(0, SCRAPE_COST_EXECUTIONS, 1000):
            requests.post(
                url + "/api/v1/monitoring/heartbeats",
                timeout=60,
                json=[
                    {"execution_id": f"live-{n}", "task_name": f"task-{n % 50}", "progress": {"percentage": n % 100}}
                    for n in range(first, first + 1000)
                ],
            ).raise_for_status()
        requests.get(url + "/metrics", timeout=60)  # warm
        scrapes = 20
        cpu_before, started = _cpu_seconds(server), time.perf_counter()
        for _ in range(scrapes):
            requests.get(url + "/metrics", timeout=60).raise_for_status()
        wall = (time.perf_counter() - started) / scrapes
        cpu = (_cpu_seconds(server) - cpu_before) / scrapes
    finally:
        server.stop()
    return {"cpu_ms": cpu * 1000, "wall_ms": wall * 1000}


def _cpu_seconds(server: Server) -> float:
    """Return the user and system CPU seconds of the server's whole process group so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == server.process.pid:  # the process group
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value + 0.0:.1f}".replace("-0.0", "0.0")


def report(measured: list[Measured], cost: dict[str, float] | None) -> str:
    lines = [
        "| event | run | first notification (s) | notifications | detection | scrape | evaluation | for "
        "| grouping | alert |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in sorted(measured, key=lambda m: (list(GOALS).index(m.event) if m.event in GOALS else 99, m.run)):
        lines.append(
            f"| {m.event} | {m.run} | {_seconds(m.first)} | {m.count} | "
            + " | ".join(
                _seconds(m.parts.get(part)) for part in ("detection", "scrape", "evaluation", "for", "grouping")
            )
            + f" | {m.note} |"
        )
    lines += [
        "",
        "| event | goal (s) | worst (s) | median (s) | one notification each | met |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, goal in GOALS.items():
        firsts = [m.first for m in measured if m.event == name]
        if not firsts:
            continue
        known = [f for f in firsts if f is not None]
        worst = max(known) if len(known) == len(firsts) else None
        single = all(m.count == 1 for m in measured if m.event == name)
        met = worst is not None and worst <= goal and single
        lines.append(
            f"| {name} | {goal} | {_seconds(worst)} | {_seconds(statistics.median(known) if known else None)}"
            f" | {'yes' if single else 'no'} | {'yes' if met else 'NO'} |"
        )
    storms = [m for m in measured if m.event.startswith("storm")]
    if storms:
        lines += [
            "",
            f"A storm of {STORM_FAILURES} failures of one task in {STORM_SECONDS:.0f} s made "
            + ", ".join(f"{m.count} notifications (run {m.run})" for m in storms)
            + ".",
        ]
    if cost:
        lines += [
            "",
            f"A scrape of {SCRAPE_COST_EXECUTIONS:,} executions costs the bridge {cost['cpu_ms']:.0f} ms "
            f"of CPU ({cost['wall_ms']:.0f} ms to answer): every 5 s that is {cost['cpu_ms'] / 50:.1f}% of one "
            f"core, every 15 s {cost['cpu_ms'] / 150:.1f}%.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="alert-latency", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="runs of every event (default 2)")
    parser.add_argument(
        "--events",
        default="failed,docker,silent,missed,storm",
        help="which events, comma-separated (default: failed,docker,silent,missed,storm)",
    )
    parser.add_argument(
        "--no-scrape-cost", action="store_true", help="leave out the CPU cost of a scrape of 10,000 executions"
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=SETTLE_SECONDS,
        help=f"seconds a run waits for notifications after its last event (default {SETTLE_SECONDS:g}: "
        "a storm's last group interval and more)",
    )
    args = parser.parse_args(argv)
    missing = [
        name
        for name in NEEDED
        if not any((Path(p) / name).exists() for p in os.environ.get("PATH", "").split(os.pathsep))
    ]
    if missing:
        print(f"alert-latency: needs {', '.join(missing)} (Debian packages; see README)", file=sys.stderr)
        return 2
    events = set(args.events.split(","))
    with tempfile.TemporaryDirectory(prefix="alert-latency-") as folder:
        work = Path(folder)
        stack = Stack(work, docker="docker" in events)
        try:
            measured = [m for run in range(1, args.runs + 1) for m in one_run(stack, run, events, args.settle)]
        finally:
            stack.stop()
        cost = None if args.no_scrape_cost else scrape_cost(work)
    print(
        f"Time to a human: {args.runs} runs, the bridge on its defaults, deploy/prometheus.yml, "
        "heartbeat-bridge rules, alerts/alertmanager.yml\n"
    )
    print(report(measured, cost))
    return 0


if __name__ == "__main__":
    sys.exit(main())
