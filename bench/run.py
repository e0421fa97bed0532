"""``make bench``: how fast the bridge ingests and scrapes, beside a bare Flask app and the Pushgateway.

Everything runs here, on 127.0.0.1, started and stopped by this script: the bridge (SQLite,
then Redis), the bare Flask app under the same gunicorn configuration, Debian's
``redis-server`` and ``prometheus-pushgateway``, and ``wrk`` as the load generator, each run
bounded in time. Ratios against the bare app come from the same run on the same machine.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from pathlib import Path

from bridge.server.cli import HUGE_PAGES_TUNABLE

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
NEEDED = ("wrk", "redis-server", "prometheus-pushgateway")
#: The live executions the curve is measured at: scrape, size, memory and ingest at each.
SCRAPE_COUNTS = (1_000, 10_000, 50_000, 100_000)
#: Tasks declared for the rows that measure the bridge with tasks.
DECLARED_TASKS = 200
PUSH_COUNTS = (1_000, 10_000)
WORKERS = 2
BATCH = 500
CONNECTIONS = 32
ROUNDS = 5
WRK_THREADS = 2
# gunicorn's workers share one listening socket, and one of them sometimes accepts all of
# wrk's kept-alive connections, measuring one worker instead of two. Both apps run with
# room for a little over half of them per worker, so the load is shared either way.
GUNICORN_ARGS = f"--worker-connections {CONNECTIONS // WORKERS + 4}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A server process group on a loopback port, stopped on exit."""

    def __init__(self, argv: list[str], ready: str, env: dict | None = None, log: Path | None = None):
        self.ready = ready
        out = open(log, "ab") if log else subprocess.DEVNULL
        self.process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{argv[0]} exited with {self.process.returncode}")
            try:
                if self._ready():
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{argv[0]} did not start")

    def _ready(self) -> bool:
        if self.ready.startswith("http"):
            try:
                urllib.request.urlopen(self.ready, timeout=1).close()
            except urllib.error.HTTPError:
                pass  # any answer means it is serving
            return True
        host, port = self.ready.split(":")
        with socket.create_connection((host, int(port)), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")

    def rss_mb(self) -> float:
        """Resident memory of the whole process group, in MiB."""
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == self.process.pid:  # the process group
                    status = (stat.parent / "status").read_text()
                    total += int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
            except (OSError, AttributeError, IndexError, ValueError):
                continue
        return total / 1024

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _bridge(store_url: str, work: Path, name: str, **extra: str) -> tuple[Server, str]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "OTEL_"))}
    env.update(
        BRIDGE_STORE_URL=store_url,
        BRIDGE_WORKERS=str(WORKERS),
        BRIDGE_LOG_LEVEL="WARNING",
        BRIDGE_MAX_EXECUTIONS="200000",
        BRIDGE_BIND=f"127.0.0.1:{port}",
        GUNICORN_CMD_ARGS=GUNICORN_ARGS,
        **extra,
    )
    server = Server(
        [sys.executable, "-m", "bridge.server.cli", "serve"],
        f"http://127.0.0.1:{port}/healthz",
        env,
        work / f"{name}.log",
    )
    return server, f"http://127.0.0.1:{port}"


def _bare(work: Path) -> tuple[Server, str]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(
        BRIDGE_WORKERS=str(WORKERS),
        BRIDGE_BIND=f"127.0.0.1:{port}",
        BRIDGE_LOG_LEVEL="WARNING",
        BRIDGE_STORE_URL=f"sqlite:///{work / 'unused.db'}",
        GUNICORN_CMD_ARGS=GUNICORN_ARGS,
        GLIBC_TUNABLES=HUGE_PAGES_TUNABLE,  # what `heartbeat-bridge serve` gives the bridge
    )
    server = Server(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--config",
            "python:bridge.server.gunicorn_conf",
            "bench.bare_app:create_app()",
        ],
        f"http://127.0.0.1:{port}/",
        env,
        work / "bare.log",
    )
    return server, f"http://127.0.0.1:{port}"


def _tasks_file(work: Path) -> Path:
    """Write a tasks file declaring DECLARED_TASKS tasks, ``bench-0`` and on, each hourly."""
    path = work / "tasks.yml"
    path.write_text(
        "tasks:\n"
        + "".join(
            f"  - name: bench-{n}\n    period_seconds: 3600\n    labels: {{team: team-{n % 10}}}\n"
            for n in range(DECLARED_TASKS)
        )
    )
    return path


def _declare_tasks(url: str) -> None:
    """Declare DECLARED_TASKS tasks through the API."""
    _say(f"bridge: declaring {DECLARED_TASKS} tasks")
    for n in range(DECLARED_TASKS):
        request = urllib.request.Request(
            f"{url}/api/v1/tasks/bench-{n}",
            method="PUT",
            data=json.dumps({"period_seconds": 3600}).encode(),
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(request, timeout=30).close()


def _pushgateway(address: str, work: Path, *, checked: bool) -> Server:
    """Start a Pushgateway on ``address`` that keeps nothing on disk; ``checked`` keeps its
    default consistency check of every push."""
    argv = ["prometheus-pushgateway", f"--web.listen-address={address}", "--persistence.file="]
    if not checked:
        argv.append("--push.disable-consistency-check")
    return Server(argv, f"http://{address}/-/ready", log=work / "pushgateway.log")


def _say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


WARMUP_SECONDS = 2


def _wrk(url: str, script: str, seconds: float, **env: str) -> float:
    """Return requests per second after a short unmeasured warm-up; raises if any answer was not 2xx."""
    _say(f"wrk {script} {url} {env or ''}")
    for length in (WARMUP_SECONDS, seconds):
        result = subprocess.run(
            ["wrk", f"-t{WRK_THREADS}", f"-c{CONNECTIONS}", f"-d{length:g}s", "-s", str(BENCH / script), url],
            capture_output=True,
            text=True,
            env={**os.environ, "THREADS": str(WRK_THREADS), **env},
            timeout=length + 60,
        )
    rate = re.search(r"Requests/sec:\s+([\d.]+)", result.stdout)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", result.stdout)
    if rate is None or errors:
        raise RuntimeError(f"wrk on {url} failed:\n{result.stdout}\n{result.stderr}")
    return float(rate.group(1))


def _populate_bridge(url: str, target: int, start: int) -> None:
    """Add executions until ``target`` are tracked (ids from ``start``)."""
    _say(f"bridge: {start:,} -> {target:,} live executions")
    for first in range(start, target, 1000):
        body = json.dumps(
            [
                {
                    "execution_id": f"live-{n}",
                    "status": "running",
                    "task_name": f"bench-{n % 10}",
                    "container_id": f"task-live-{n}",
                    "progress": {"percentage": n % 100},
                }
                for n in range(first, min(first + 1000, target))
            ]
        ).encode()
        request = urllib.request.Request(
            url + "/api/v1/monitoring/heartbeats", data=body, headers={"Content-Type": "application/json"}
        )
        urllib.request.urlopen(request, timeout=60).close()


def _populate_pushgateway(address: str, start: int, target: int) -> None:
    _say(f"pushgateway: {start:,} -> {target:,} groups")
    host, port = address.split(":")

    def push(ids: range) -> None:
        connection = HTTPConnection(host, int(port), timeout=30)
        for n in ids:
            body = (
                f"task_heartbeat_last_timestamp_seconds 1700000000\ntask_heartbeat_interval_seconds 30\n"
                f"task_progress_ratio {n % 100 / 100}\n"
                'task_execution_status{status="running"} 1\n'
            )
            connection.request("PUT", f"/metrics/job/heartbeat/execution_id/live-{n}", body)
            connection.getresponse().read()
        connection.close()

    step = max(1, (target - start) // 8)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(push, [range(a, min(a + step, target)) for a in range(start, target, step)]))


def _scrape(url: str) -> tuple[float, int]:
    """Return (median milliseconds of 5 scrapes, bytes)."""
    times, size = [], 0
    for _ in range(5):
        started = time.perf_counter()
        with urllib.request.urlopen(url, timeout=120) as response:
            size = len(response.read())
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), size


def _growth(curve: list[tuple[int, float, int, float, float]]) -> list[tuple[str, str, str, str]]:
    """Return the rows saying how each measure grows per tenfold of the executions tracked."""
    by_count = {point[0]: point for point in curve}
    rows = []
    for low, high in ((1_000, 10_000), (10_000, 100_000)):
        if low in by_count and high in by_count:
            a, b = by_count[low], by_count[high]
            rows.append(
                (
                    f"8. growth from {low:,} to {high:,} executions",
                    f"scrape x{b[1] / a[1]:.1f}, size x{b[2] / a[2]:.1f}",
                    f"memory above idle x{b[3] / max(a[3], 0.1):.1f}",
                    f"ingest x{b[4] / a[4]:.2f}",
                )
            )
    return rows


def _curve(
    fresh: Server, fresh_url: str, pushgateway: Server, push_address: str, bare_rate: float, seconds: float
) -> list[tuple[str, str, str, str]]:
    """Return the rows of the curve: scrape, size, memory and ingest at each of SCRAPE_COUNTS,
    on a bridge and a Pushgateway that start empty, and the growth per tenfold."""
    rows, memory, curve = [], [], []
    tracked = pushed = 0
    idle_mb = fresh.rss_mb()
    extra = 0  # the executions heartbeat.lua's ingest runs add, once: counted in the total
    for count in SCRAPE_COUNTS:
        # Each server is measured while the other is idle: the Pushgateway digests tens of
        # thousands of pushes for a while after taking them.
        _populate_bridge(fresh_url, count - extra, tracked)
        tracked = count - extra
        bridge_ms, bridge_bytes = _scrape(fresh_url + "/metrics")
        resident = fresh.rss_mb()
        ingest = _wrk(fresh_url, "heartbeat.lua", seconds)
        extra = 1000  # heartbeat.lua's executions (the same ids at every size) are tracked now
        with_tasks = None
        if count == SCRAPE_COUNTS[1]:  # the same, with tasks declared (and kept for the rest)
            _declare_tasks(fresh_url)
            tasks_ms, tasks_bytes = _scrape(fresh_url + "/metrics")
            with_tasks = (
                f"5. /metrics at {count:,} live executions, {DECLARED_TASKS} declared tasks",
                f"{tasks_ms:,.0f} ms, {tasks_bytes / 1e6:.1f} MB",
                f"without tasks {bridge_ms:,.0f} ms",
                f"{tasks_ms / bridge_ms:.2f}",
            )
        _populate_pushgateway(push_address, pushed, count)
        pushed = count
        push_ms, push_bytes = _scrape(f"http://{push_address}/metrics")
        rows.append(
            (
                f"5. /metrics at {count:,} live executions",
                f"{bridge_ms:,.0f} ms, {bridge_bytes / 1e6:.1f} MB",
                f"Pushgateway {push_ms:,.0f} ms, {push_bytes / 1e6:.1f} MB",
                f"{bridge_ms / push_ms:.2f}",
            )
        )
        if with_tasks:
            rows.append(with_tasks)
        memory.append(
            (
                f"6. resident memory at {count:,} executions",
                f"{resident:,.0f} MiB",
                f"Pushgateway {pushgateway.rss_mb():,.0f} MiB",
                f"{(resident - idle_mb) * 1024 / count:.1f} KiB per execution above idle",
            )
        )
        rows.append(
            (
                f"7. heartbeat ingest at {count:,} live executions",
                f"{ingest:,.0f} /s",
                f"bare Flask {bare_rate:,.0f} /s",
                f"{ingest / bare_rate:.2f}",
            )
        )
        curve.append((count, bridge_ms, bridge_bytes, resident - idle_mb, ingest))
    return rows + memory + _growth(curve)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10, help="length of each load run (default 10)")
    args = parser.parse_args(argv)
    missing = [tool for tool in NEEDED if shutil.which(tool) is None]
    if missing:
        print(
            f"bench: install {' '.join(missing)} (Debian: apt-get install wrk redis-server prometheus-pushgateway)",
            file=sys.stderr,
        )
        return 2
    work = Path(tempfile.mkdtemp(prefix="heartbeat-bench-"))
    rows: list[tuple[str, str, str, str]] = []
    servers: list[Server] = []
    try:
        # The bare app and both bridges take turns, ROUNDS times, and each reports its
        # median: a run on this small machine varies by a tenth, and a slow spell then
        # touches every app alike instead of one.
        bare, bare_url = _bare(work)
        servers.append(bare)
        sqlite, sqlite_url = _bridge(f"sqlite:///{work / 'bench.db'}", work, "bridge-sqlite")
        servers.append(sqlite)
        tasked, tasked_url = _bridge(
            f"sqlite:///{work / 'tasks.db'}",
            work,
            "bridge-tasks",
            BRIDGE_TASKS_FILE=str(_tasks_file(work)),
            BRIDGE_MAX_TASK_NAMES="1000",
            BRIDGE_METRIC_LABELS="team",
        )
        servers.append(tasked)
        redis_port = _free_port()
        redis = Server(
            [
                "redis-server",
                "--port",
                str(redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(work),
            ],
            f"127.0.0.1:{redis_port}",
        )
        servers.append(redis)
        on_redis, redis_url = _bridge(f"redis://127.0.0.1:{redis_port}/0", work, "bridge-redis")
        servers.append(on_redis)
        urls = {"bare": bare_url, "SQLite": sqlite_url, "Redis": redis_url, "tasks": tasked_url}
        runs: dict[str, list[float]] = {name: [] for name in urls}
        names = list(urls)
        for round_number in range(ROUNDS):
            # Each round starts with the next app: the one that runs first in a round gains
            # (measured up to a tenth), and no app is to be first every time.
            for name in names[round_number % len(names) :] + names[: round_number % len(names)]:
                url = urls[name]
                # With tasks, each heartbeat names one of the declared tasks.
                tasks = {"TASKS": str(DECLARED_TASKS)} if name == "tasks" else {}
                runs[name].append(_wrk(url, "heartbeat.lua", args.seconds, **tasks))
        on_redis.stop()
        redis.stop()
        bare.stop()
        tasked.stop()
        bare_rate = statistics.median(runs["bare"])
        for label, name in (
            ("1. heartbeat ingest, SQLite store, 2 workers", "SQLite"),
            ("2. heartbeat ingest, Redis store, 2 workers", "Redis"),
            (f"1. heartbeat ingest, SQLite store, 2 workers, {DECLARED_TASKS} declared tasks", "tasks"),
        ):
            rate = statistics.median(runs[name])
            rows.append((label, f"{rate:,.0f} /s", f"bare Flask {bare_rate:,.0f} /s", f"{rate / bare_rate:.2f}"))

        # Twice the executions that the requests in flight hold, so that no two of them carry
        # the same execution (a sender does not resend one within a second or two): those
        # would race, and one of them be decided again.
        batch_executions = 2 * CONNECTIONS * BATCH
        # At least 3 s: a batch of 500 takes a while, and a shorter run may complete none. The
        # median of ROUNDS runs, as for single heartbeats: one run is at the mercy of a slow spell.
        batch_rate = BATCH * statistics.median(
            _wrk(sqlite_url, "batch.lua", max(args.seconds, 3), BATCH=str(BATCH), EXECUTIONS=str(batch_executions))
            for _ in range(ROUNDS)
        )
        rows.append(
            (
                "4. batch ingest, SQLite store",
                f"{batch_rate:,.0f} heartbeats/s",
                f"{BATCH} per request, {batch_executions:,} executions",
                "",
            )
        )

        # The Pushgateway's default consistency check serialises pushes (about 150 ms each
        # here): measure that once, then compare against its fast configuration.
        push_address = f"127.0.0.1:{_free_port()}"
        checked = _pushgateway(push_address, work, checked=True)
        push_rate = _wrk(f"http://{push_address}", "push.lua", min(args.seconds, 5), EXECUTIONS="1000")
        rows.append(
            (
                "3. Pushgateway push, default settings",
                f"{push_rate:,.1f} /s",
                f"bare Flask {bare_rate:,.0f} /s",
                f"{push_rate / bare_rate:.4f}",
            )
        )
        checked.stop()
        pushgateway = _pushgateway(push_address, work, checked=False)
        servers.append(pushgateway)
        for count in PUSH_COUNTS:
            push_rate = _wrk(f"http://{push_address}", "push.lua", args.seconds, EXECUTIONS=str(count))
            rows.append(
                (
                    f"3. Pushgateway push, no consistency check, {count:,} executions",
                    f"{push_rate:,.0f} /s",
                    f"bare Flask {bare_rate:,.0f} /s",
                    f"{push_rate / bare_rate:.2f}",
                )
            )
        pushgateway.stop()  # fresh servers below: only the live executions they are given

        _scrape(sqlite_url + "/metrics")
        sqlite.stop()
        pushgateway = _pushgateway(push_address, work, checked=False)
        servers.append(pushgateway)
        fresh, fresh_url = _bridge(f"sqlite:///{work / 'scrape.db'}", work, "bridge-scrape")
        servers.append(fresh)
        rows.extend(_curve(fresh, fresh_url, pushgateway, push_address, bare_rate, args.seconds))
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"Heartbeat Bridge benchmark: {os.cpu_count()} cores, wrk -t{WRK_THREADS} -c{CONNECTIONS} for "
        f"{args.seconds:g} s per run (ingest and batches: the median of {ROUNDS} runs each), {WORKERS} gunicorn "
        f"workers ({GUNICORN_ARGS})\n"
    )
    print("| measure | bridge | baseline | ratio |")
    print("| --- | --- | --- | --- |")
    for row in sorted(rows, key=lambda r: int(r[0].split(".")[0])):  # by section, in the order measured
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
