"""``heartbeat-bridge demo``: the bridge with a simulated fleet, and Prometheus when installed.

Some simulated tasks finish, some fail and some go silent, so a newcomer sees every state
in the metrics and, with Debian's ``prometheus`` and ``prometheus-alertmanager`` on the
PATH, the alerts of ``alerts/`` firing. Everything listens on 127.0.0.1 only, in a temporary
folder removed at the end; Ctrl-C or SIGTERM stops every process it started.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from ..assets import asset
from .alert_log import AlertLog
from .alert_rules import render as render_rules

__all__ = ["alertmanager_config", "main", "prometheus_config"]

RULES_FILE = "heartbeat-bridge.rules.yml"
JOB = "heartbeat-bridge"
STAGES = ("download", "parse", "transform", "upload")
#: Fractions of simulated executions that complete, fail, or go silent.
OUTCOMES = (("complete", 0.6), ("fail", 0.2), ("vanish", 0.2))
FLEET_TASKS = ("crawl-news", "etl-orders", "train-ranker")
#: A task declared to run every few intervals that never does: it goes missed.
NEVER_RUNS = "nightly-report"
#: A declared task that needs NEVER_RUNS: missed too, but its alert is held back by its upstream's.
DEPENDENT = "publish-report"
#: A task whose runs all succeed sooner than it declares a run can do its work: too short.
TOO_SHORT = "sync-catalog"
#: A declared task paused for maintenance: nothing is expected of it, nothing alerts.
PAUSED = "archive-backups"
PAUSE_SECONDS = 600
#: A declared task whose runs all fail: it goes failing after two.
ALWAYS_FAILS = "flaky-import"
#: Of the new executions, the share that are runs of ALWAYS_FAILS.
FLAKY_SHARE = 0.1
READY_TIMEOUT_SECONDS = 30.0
STOP_GRACE_SECONDS = 15.0
#: Where the web interface answers: Debian's Prometheus serves the classic one under /classic.
PROMETHEUS_PAGES = ("/classic/alerts", "/alerts")


class _Stop(Exception):
    """SIGTERM arrived: stop as Ctrl-C does."""


class _PortTaken(RuntimeError):
    """The bridge's port is in use: another bridge may be listening there."""


def prometheus_config(bridge: str, rules: Path, alertmanager: str | None) -> str:
    """Return the shipped ``deploy/prometheus.yml`` with only its addresses rewritten: the
    bridge's target, the rules file and Alertmanager (``host:port``; None leaves alerting out).

    Its intervals stay as shipped, so the demo and the measurements run what users run.
    """
    config = yaml.safe_load(asset("deploy", "prometheus.yml").read_text())
    config["rule_files"] = [str(rules)]
    [job] = [job for job in config["scrape_configs"] if job["job_name"] == JOB]
    job["static_configs"] = [{"targets": [bridge]}]
    if alertmanager:
        config["alerting"]["alertmanagers"] = [{"static_configs": [{"targets": [alertmanager]}]}]
    else:
        config.pop("alerting", None)
    return yaml.safe_dump(config, sort_keys=False)


def alertmanager_config(webhook: str) -> str:
    """Return ``alerts/alertmanager.yml`` with its receivers posting to ``webhook`` instead."""
    text = asset("alerts", "alertmanager.yml").read_text()
    return text.replace("http://127.0.0.1:5001", webhook.rstrip("/"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _claim(port: int) -> int:
    """Return ``port`` (a free one for 0) once nothing listens on it. Raises :class:`_PortTaken`."""
    if port == 0:
        return _free_port()
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise _PortTaken(
                f"127.0.0.1:{port} is in use (is a bridge running there?): the demo would "
                f"write its simulated fleet into it. Stop it, or choose another port: "
                f"make demo DEMO_PORT=8001, or --port N (0: any free port)"
            ) from None
    return port


def _first_page(base: str, paths: tuple[str, ...]) -> str:
    """Return the first of ``paths`` that ``base`` answers with 200 (the last one otherwise)."""
    for path in paths:
        try:
            urllib.request.urlopen(base + path, timeout=2).close()
            return base + path
        except OSError:
            continue
    return base + paths[-1]


def _post(url: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        urllib.request.urlopen(request, timeout=5).close()
    except OSError as exc:  # the demo goes on; the bridge's refusal is the lesson
        print(f"  post failed: {exc}", file=sys.stderr)


def _wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer in {READY_TIMEOUT_SECONDS:.0f}s")


class _SimulatedTask(threading.Thread):
    """One execution: heartbeats through the stages, then completes, fails or vanishes."""

    def __init__(self, base: str, interval: float, stop: threading.Event):
        super().__init__(daemon=True)
        self.base, self.interval, self.stop_event = base, interval, stop
        self.execution_id = str(uuid.uuid4())
        if random.random() < FLAKY_SHARE:
            self.task_name, self.fate = ALWAYS_FAILS, "fail"
        else:
            self.task_name = random.choice((*FLEET_TASKS, TOO_SHORT))
            self.fate = random.choices([o for o, _ in OUTCOMES], [w for _, w in OUTCOMES])[0]

    def run(self) -> None:
        steps = random.randint(4, 10)
        for step in range(1, steps + 1):
            if self.stop_event.is_set():
                return
            if self.fate == "vanish" and step == steps // 2:
                return  # the container died: no completion, no more heartbeats
            _post(
                self.base + "/api/v1/monitoring/heartbeat",
                {
                    "execution_id": self.execution_id,
                    "container_id": f"task-{self.execution_id}",
                    "status": "running",
                    "task_name": self.task_name,
                    "task_type": "demo",
                    "interval_seconds": self.interval,
                    "timestamp": int(time.time()),
                    "progress": {
                        "stage": STAGES[min(len(STAGES) - 1, step * len(STAGES) // steps)],
                        "current_step": step,
                        "total_steps": steps,
                    },
                },
            )
            self.stop_event.wait(self.interval)
        success = self.fate == "complete"
        _post(
            self.base + "/api/v1/monitoring/completion",
            {
                "execution_id": self.execution_id,
                "container_id": f"task-{self.execution_id}",
                "success": success,
                "result_data": {"records": random.randint(10, 1000)} if success else {},
                "error_message": None if success else "simulated failure",
                "exit_code": 0 if success else 1,
            },
        )


def _declare_tasks(base: str, interval: float) -> None:
    """Declare the fleet's tasks: one that never runs and one that depends on it, one whose runs
    all fail, one whose runs are all too short, one paused, the others hourly."""
    never: dict[str, object] = {
        "period_seconds": 6 * interval,
        "start_grace_seconds": interval,
        "labels": {"team": "data"},
    }
    declarations: list[tuple[str, dict[str, object]]] = [
        (NEVER_RUNS, never),
        (DEPENDENT, {**never, "depends_on": [NEVER_RUNS]}),
        (ALWAYS_FAILS, {"failure_threshold": 2, "labels": {"team": "web"}}),
        (TOO_SHORT, {"min_runtime_seconds": 20 * interval, "labels": {"team": "web"}}),
        (PAUSED, {"period_seconds": 2 * interval, "start_grace_seconds": interval}),
        *((name, {"period_seconds": 3600, "labels": {"team": "data"}}) for name in FLEET_TASKS),
    ]
    for name, declaration in declarations:
        _send("PUT", f"{base}/api/v1/tasks/{name}", declaration)
    _send("POST", f"{base}/api/v1/tasks/{PAUSED}/pause", {"seconds": PAUSE_SECONDS})


def _send(method: str, url: str, body: dict[str, object]) -> None:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method=method
    )
    urllib.request.urlopen(request, timeout=5).close()


def _start(argv: list[str], log: Path, env: dict[str, Any] | None = None) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    """Stop every process group started, newest first: SIGTERM, then SIGKILL after the grace."""
    for process in reversed(processes):
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(STOP_GRACE_SECONDS)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(STOP_GRACE_SECONDS)


def _on_sigterm(_signum: int, _frame: object) -> None:
    raise _Stop


def main(argv: list[str] | None = None) -> int:
    """Run the demo until Ctrl-C or ``--duration``; returns the exit status."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="heartbeat-bridge demo",
        description="The bridge with a simulated fleet (some runs finish, some fail, some go silent), plus "
        "Prometheus with the alert rules and Alertmanager when they are installed.",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=8000,
        help="bridge port on 127.0.0.1 (default 8000; 0: any free port); refused when in use",
    )
    parser.add_argument(
        "--interval", type=float, default=5.0, help="heartbeat interval of the fleet, seconds (default: %(default)s)"
    )
    parser.add_argument(
        "--spawn-every", type=float, default=3.0, help="seconds between new executions (default: %(default)s)"
    )
    parser.add_argument(
        "--duration", type=float, default=0.0, help="stop after this many seconds (default: 0, run until Ctrl-C)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary folder (logs, data) at the end (default: removed)"
    )
    args = parser.parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):  # each line as it happens, also through a pipe or tee
        sys.stdout.reconfigure(line_buffering=True)
    try:
        port = _claim(args.port)
    except _PortTaken as exc:
        print(f"heartbeat-bridge demo: {exc}", file=sys.stderr)
        return 1
    previous_handler = signal.signal(signal.SIGTERM, _on_sigterm)
    work = Path(tempfile.mkdtemp(prefix="heartbeat-bridge-demo-"))
    try:
        return _run(args, port, work)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        if args.keep:
            print(f"kept        {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _run(args: argparse.Namespace, port: int, work: Path) -> int:
    """Run the demo in ``work``; returns the exit status once stopped."""
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(
        BRIDGE_STORE_URL=f"sqlite:///{work / 'bridge.db'}",
        BRIDGE_REAPER_INTERVAL_SECONDS="1",
        BRIDGE_DEFAULT_INTERVAL_SECONDS=str(args.interval),
        BRIDGE_RETENTION_SECONDS="600",
        BRIDGE_LOG_LEVEL="WARNING",
        BRIDGE_METRIC_LABELS="team",
    )
    prometheus, alertmanager = shutil.which("prometheus"), shutil.which("prometheus-alertmanager")
    # Alertmanager's address is known before the bridge starts, so its pages show the alerts.
    am_address = f"127.0.0.1:{_free_port()}" if prometheus and alertmanager else None
    if am_address:
        env["BRIDGE_ALERTMANAGER_URL"] = f"http://{am_address}"
    processes = [
        _start(
            [sys.executable, "-m", "bridge.server.cli", "serve", "--bind", f"127.0.0.1:{port}"],
            work / "bridge.log",
            env,
        )
    ]
    stop = threading.Event()
    webhook = None
    try:
        _wait_ready(base + "/readyz", processes[0])
        print(f"bridge      {base}/   {base}/metrics   (logs in {work})")
        print(f"dashboards  {asset('dashboards')}   (import them into Grafana)")
        if prometheus:
            if am_address and alertmanager:
                webhook = ThreadingHTTPServer(("127.0.0.1", 0), AlertLog)
                threading.Thread(target=webhook.serve_forever, daemon=True).start()
                (work / "alertmanager.yml").write_text(
                    alertmanager_config(f"http://127.0.0.1:{webhook.server_address[1]}")
                )
                processes.append(
                    _start(
                        [
                            alertmanager,
                            f"--config.file={work / 'alertmanager.yml'}",
                            f"--storage.path={work / 'alertmanager'}",
                            f"--web.listen-address={am_address}",
                            "--cluster.listen-address=",
                        ],
                        work / "alertmanager.log",
                    )
                )
                _wait_ready(f"http://{am_address}/-/ready", processes[-1])
                # Debian's Alertmanager serves no web UI: its API's list, and the bridge's pages, do
                print(
                    f"alertmanager http://{am_address}/api/v2/alerts   (the firing alerts also show on the "
                    f"bridge's pages; notifications print below)"
                )
            prom_address = f"127.0.0.1:{_free_port()}"
            (work / RULES_FILE).write_text(render_rules(external_url=base))
            (work / "prometheus.yml").write_text(prometheus_config(f"127.0.0.1:{port}", work / RULES_FILE, am_address))
            processes.append(
                _start(
                    [
                        prometheus,
                        f"--config.file={work / 'prometheus.yml'}",
                        f"--storage.tsdb.path={work / 'prometheus'}",
                        f"--web.listen-address={prom_address}",
                    ],
                    work / "prometheus.log",
                )
            )
            _wait_ready(f"http://{prom_address}/-/ready", processes[-1])
            print(f"prometheus  {_first_page(f'http://{prom_address}', PROMETHEUS_PAGES)}")
        else:
            print("prometheus  not installed: apt-get install prometheus prometheus-alertmanager to see alerts")
        _declare_tasks(base, args.interval)
        print(
            f"declared    {DEPENDENT} (depends on {NEVER_RUNS}: missed too, its alert held back), {TOO_SHORT} "
            f"(every run too short), {PAUSED} (paused for {PAUSE_SECONDS // 60} minutes: nothing alerts)"
        )
        print(
            f"declared    {NEVER_RUNS} (never runs: goes missed), {ALWAYS_FAILS} (every run fails: goes "
            f"failing)   {base}/api/v1/tasks"
        )
        print("simulating a fleet: some executions complete, some fail, some go silent. Ctrl-C stops.")
        started = time.monotonic()
        while not args.duration or time.monotonic() - started < args.duration:
            _SimulatedTask(base, args.interval, stop).start()
            time.sleep(args.spawn_every)
    except (KeyboardInterrupt, _Stop):
        print("stopping")
    except RuntimeError as exc:
        print(f"heartbeat-bridge demo: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup short
        stop.set()
        _stop_all(processes)
        if webhook is not None:
            webhook.shutdown()
    return 0
