"""Helpers shared by the tests: a fake clock, a live gunicorn bridge, metric parsing."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_SECONDS = 30.0


def stop_group(process: subprocess.Popen, grace: float = 15.0) -> None:
    """Stop a process and its group: SIGTERM, then SIGKILL after ``grace`` seconds."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
    except ProcessLookupError:
        pass


def wait_for(condition, what: str = "a condition", timeout: float = 30.0):
    """Return ``condition()``'s first true value, polling; raise AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class FakeClock:
    """A clock the tests move by hand."""

    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def unavailable(message: str) -> NoReturn:
    """Skip the test for a missing binary or facility; fail instead when ``CI=true``."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def require_binary(name: str) -> str:
    """Return the path of ``name``; skip without it, but fail when ``CI=true``."""
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is not installed (Debian package; see README)")
    return path


def make_immutable(*paths: Path) -> None:
    """Make ``paths`` immutable (``chattr +i``: root cannot write them either); skip where the
    filesystem cannot, but fail when ``CI=true``."""
    made = subprocess.run(
        [require_binary("chattr"), "+i", *map(str, paths)], capture_output=True, text=True, timeout=30
    )
    if made.returncode != 0:
        make_mutable(*paths)  # it may have taken on one file before failing
        unavailable(f"chattr +i is not available here: {made.stderr.strip()}")


def make_mutable(*paths: Path) -> None:
    """Undo :func:`make_immutable`."""
    subprocess.run(["chattr", "-i", *map(str, paths)], capture_output=True, timeout=30)


_PORTS_HANDED_OUT: set[int] = set()


def _ports_outside_the_ephemeral_range() -> range:
    """Ports the kernel never picks as the local end of an outgoing connection: below
    ``ip_local_port_range``. Empty when that range starts too low to leave room."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return range(0)
    return range(max(10_000, low - 12_000), low)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago and not handed out before.

    A port the kernel hands out for ``bind(0)`` comes from the ephemeral range, where any
    client socket (a test's, a bridge's to Redis) may take it before the server binds it; and
    a port freed by one server may be handed out again while another is being told it. So
    ports come from below that range, each once per test run.
    """
    candidates = [port for port in _ports_outside_the_ephemeral_range() if port not in _PORTS_HANDED_OUT]
    random.shuffle(candidates)
    for port in [*candidates[:200], 0, 0, 0]:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = sock.getsockname()[1]
        if port not in _PORTS_HANDED_OUT:
            _PORTS_HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free TCP port on 127.0.0.1")


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Return ``{(sample name, frozenset(labels.items())): value}`` of Prometheus text."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(parsed: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    """Return the sum of the samples called ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in parsed.items() if n == name and wanted <= ls)


class LiveBridge:
    """``heartbeat-bridge serve`` in its own process group, on a free loopback port."""

    def __init__(self, data_dir: Path, workers: int = 2, env: dict[str, str] | None = None, port: int | None = None):
        self.data_dir = data_dir
        self.workers = workers
        self.extra_env = env or {}
        self.process: subprocess.Popen | None = None
        self.fixed_port = port
        self.port = port or 0
        self.log_path = data_dir / "bridge.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LiveBridge:
        """Start the server and return once ``/readyz`` answers 200."""
        self.port = self.fixed_port or free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        env.update(
            BRIDGE_STORE_URL=f"sqlite:///{self.data_dir / 'bridge.db'}",
            BRIDGE_WORKERS=str(self.workers),
            BRIDGE_LOG_LEVEL="WARNING",
        )
        env.update(self.extra_env)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bridge.server.cli", "serve", "--bind", f"127.0.0.1:{self.port}"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"bridge exited {self.process.returncode}: {self.log()}")
            try:
                if requests.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"bridge did not become ready: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        """SIGKILL the master and every worker at once, as a crash would."""
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
            self.process = None

    def stop(self) -> None:
        """Stop gracefully (SIGTERM), or kill after 15 seconds."""
        if self.process is not None:
            stop_group(self.process)
            self.process = None

    def metrics(self) -> dict[tuple[str, frozenset], float]:
        response = requests.get(self.url + "/metrics", timeout=10)
        response.raise_for_status()
        return samples(response.text)

    def executions(self, **params: str) -> list[dict]:
        """Return every execution matching ``params``, following the pages."""
        found, after = [], None
        while True:
            query = dict(params, limit="1000", **({"after": after} if after else {}))
            body = requests.get(self.url + "/api/v1/executions", params=query, timeout=10).json()
            found += body["executions"]
            after = body["next_after"]
            if after is None:
                return found


HEARTBEAT = "/api/v1/monitoring/heartbeat"
COMPLETION = "/api/v1/monitoring/completion"


def seed_heartbeat(execution_id: str = "550e8400-e29b-41d4-a716-446655440000", **extra) -> dict:
    """Return a heartbeat shaped exactly as the seed's HeartbeatClient sends it, plus ``extra``."""
    body = {
        "execution_id": execution_id,
        "container_id": f"task-{execution_id}",
        "status": "running",
        "progress": {},
        "timestamp": 1_700_000_000,
    }
    body.update(extra)
    return body


def seed_completion(execution_id: str = "550e8400-e29b-41d4-a716-446655440000", success=True, **extra) -> dict:
    """Return a completion shaped exactly as the seed's ``send_completion`` sends it."""
    body = {
        "execution_id": execution_id,
        "container_id": f"task-{execution_id}",
        "success": success,
        "result_data": {},
        "error_message": None,
    }
    body.update(extra)
    return body


class LiveProcess:
    """A Debian-packaged server (Prometheus, Alertmanager) on a free loopback port."""

    def __init__(self, argv: list[str], log_path: Path, ready_url: str | None = None):
        self.argv, self.log_path, self.ready_url = argv, log_path, ready_url
        self.process: subprocess.Popen | None = None

    def start(self) -> LiveProcess:
        return self.start_until(self._http_ready)

    def _http_ready(self) -> bool:
        try:
            return requests.get(self.ready_url, timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def start_until(self, ready) -> LiveProcess:
        """Start the process and return once ``ready()`` is true."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.argv[0]} exited: {self.log_path.read_text()[-3000:]}")
            if ready():
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.argv[0]} did not become ready: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process)
            self.process = None


def start_prometheus(workdir: Path, config_text: str) -> tuple[LiveProcess, str]:
    """Start Debian's prometheus with ``config_text``; return it and its base URL."""
    binary = require_binary("prometheus")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "prometheus.yml").write_text(config_text)
    address = f"127.0.0.1:{free_port()}"
    process = LiveProcess(
        [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address={address}",
        ],
        workdir / "prometheus.log",
        f"http://{address}/-/ready",
    )
    return process.start(), f"http://{address}"


def start_alertmanager(workdir: Path, config_text: str) -> tuple[LiveProcess, str]:
    """Start Debian's prometheus-alertmanager with ``config_text``; return it and its base URL."""
    binary = require_binary("prometheus-alertmanager")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "alertmanager.yml").write_text(config_text)
    address = f"127.0.0.1:{free_port()}"
    process = LiveProcess(
        [
            binary,
            f"--config.file={workdir / 'alertmanager.yml'}",
            f"--storage.path={workdir / 'data'}",
            f"--web.listen-address={address}",
            "--cluster.listen-address=",
        ],
        workdir / "alertmanager.log",
        f"http://{address}/-/ready",
    )
    return process.start(), f"http://{address}"


class DockerEngine:
    """A private dockerd: no iptables, no bridge, vfs, its own socket."""

    def __init__(self):
        import tempfile

        # A short path: a unix socket's path must fit in 108 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="hbdk", dir="/tmp"))
        self.host = f"unix://{self.root / 'docker.sock'}"
        self.process: subprocess.Popen | None = None

    def start(self) -> DockerEngine:
        import docker

        binary = require_binary("dockerd")
        with open(self.root / "dockerd.log", "ab") as log:
            self.process = subprocess.Popen(
                [
                    binary,
                    "--iptables=false",
                    "--ip6tables=false",
                    "--bridge=none",
                    "--storage-driver=vfs",
                    f"--data-root={self.root / 'data'}",
                    f"--exec-root={self.root / 'exec'}",
                    f"--pidfile={self.root / 'docker.pid'}",
                    f"-H={self.host}",
                    "--shutdown-timeout=2",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dockerd exited: {(self.root / 'dockerd.log').read_text()[-3000:]}")
            try:  # the constructor already asks the engine for its API version
                docker.DockerClient(base_url=self.host, timeout=5).close()
                return self
            except docker.errors.DockerException as exc:
                last_error = exc
                time.sleep(0.2)
        log = (self.root / "dockerd.log").read_text()[-2000:]
        self.stop()  # a daemon that never answered must not outlive the test
        raise RuntimeError(f"dockerd did not answer ({last_error}): {log}")

    def client(self):
        import docker

        return docker.DockerClient(base_url=self.host, timeout=60)

    def import_busybox(self, tag: str = "busybox:local") -> str:
        """Import an image holding only a static busybox (Debian's busybox-static)."""
        import io
        import tarfile

        busybox = require_binary("busybox")
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            tar.add(busybox, arcname="bin/busybox")
            for applet in ("sh", "sleep", "echo", "cat", "env", "true"):
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type, link.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(link)
            for folder in ("tmp", "proc", "sys", "dev", "etc"):
                info = tarfile.TarInfo(folder)
                info.type, info.mode = tarfile.DIRTYPE, 0o1777 if folder == "tmp" else 0o755
                tar.addfile(info)
        repository, name_tag = tag.split(":")
        client = self.client()
        try:
            client.api.import_image(src=archive.getvalue(), repository=repository, tag=name_tag)
        finally:
            client.close()
        return tag

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process, grace=60)
            self.process = None
        # Whatever daemon the pidfile still names (one that outlived its Popen) goes too.
        try:
            os.kill(int((self.root / "docker.pid").read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass

    def remove(self) -> None:
        self.stop()
        # dockerd leaves its network namespace mounted (exec/netns/default): unmount what is
        # mounted below the folder, deepest first, or the folder cannot go.
        with open("/proc/self/mounts") as mounts:
            inside = [line.split()[1] for line in mounts if line.split()[1].startswith(str(self.root) + "/")]
        for mount in sorted(inside, key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True, timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)


def start_redis(workdir: Path, durable: bool = False) -> tuple[LiveProcess, str]:
    """Start Debian's redis-server (``durable``: AOF, fsync on every write); return it and its URL."""
    binary = require_binary("redis-server")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    persistence = ["--appendonly", "yes", "--appendfsync", "always"] if durable else ["--appendonly", "no"]
    process = LiveProcess(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", *persistence, "--dir", str(workdir)],
        workdir / "redis.log",
    )
    process.ready = lambda: _redis_answers(port)
    return process.start_until(process.ready), f"redis://127.0.0.1:{port}/0"


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisCluster:
    """Three Debian redis-server masters on loopback, joined by ``redis-cli --cluster create``."""

    def __init__(self, workdir: Path, masters: int = 3):
        self.workdir = workdir
        self.ports = [free_port() for _ in range(masters)]
        self.bus_ports = [free_port() for _ in range(masters)]
        self.servers: list[LiveProcess] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> RedisCluster:
        binary, cli = require_binary("redis-server"), require_binary("redis-cli")
        try:
            for port, bus_port in zip(self.ports, self.bus_ports):
                folder = self.workdir / str(port)
                folder.mkdir(parents=True, exist_ok=True)
                server = LiveProcess(
                    [
                        binary,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-port",
                        str(bus_port),
                        "--cluster-config-file",
                        str(folder / "nodes.conf"),
                        "--dir",
                        str(folder),
                    ],
                    folder / "redis.log",
                )
                self.servers.append(server.start_until(lambda port=port: _redis_answers(port)))
            subprocess.run(
                [
                    cli,
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{port}" for port in self.ports),
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )
            wait_for(
                lambda: all(
                    b"cluster_state:ok"
                    in subprocess.run([cli, "-p", str(port), "cluster", "info"], capture_output=True, timeout=10).stdout
                    for port in self.ports
                ),
                "the cluster's slots to be served",
            )
        except BaseException:
            self.stop()
            raise
        return self

    def flush(self) -> None:
        """Empty every master."""
        import redis

        for port in self.ports:
            with redis.Redis(port=port) as node:
                node.flushall()

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        self.servers = []


def empty_store(request, kind: str, tmp_path) -> str:
    """Return the URL of an empty store of ``kind``: sqlite, redis or redis-cluster."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'b.db'}"
    if kind == "redis-cluster":
        cluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        return cluster.url
    import redis

    url = request.getfixturevalue("redis_url")
    redis.Redis.from_url(url).flushdb()
    return url


def workers_holding(bridge: LiveBridge, path: Path) -> int:
    """Return how many of the bridge's workers hold ``path`` open."""
    master, held = str(bridge.process.pid), 0
    for entry in os.scandir("/proc"):
        try:
            if (
                not entry.name.isdigit()
                or open(f"/proc/{entry.name}/stat").read().rsplit(")", 1)[1].split()[1] != master
            ):
                continue
            held += any(os.readlink(fd.path) == str(path) for fd in os.scandir(f"/proc/{entry.name}/fd"))
        except OSError:  # a process that ended meanwhile
            continue
    return held
