"""The real service under gunicorn with 4 workers, driven over loopback HTTP."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from support import COMPLETION, HEARTBEAT, samples, total, wait_for, workers_holding

WAIT_SECONDS = 30.0


class Fleet:
    """Posts heartbeats and completions from a pool of threads, one HTTP session each."""

    def __init__(self, url: str, threads: int = 16):
        self.url = url
        self.pool = ThreadPoolExecutor(threads)
        self.local = threading.local()

    def session(self) -> requests.Session:
        if not hasattr(self.local, "session"):
            self.local.session = requests.Session()
        return self.local.session

    def heartbeat(self, execution_id: str) -> dict:
        response = self.session().post(
            self.url + HEARTBEAT,
            timeout=10,
            json={
                "execution_id": execution_id,
                "container_id": f"task-{execution_id}",
                "status": "running",
                "progress": {"percentage": 50},
                "timestamp": int(time.time()),
                "task_name": "e2e",
                "interval_seconds": 1,
            },
        )
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "ok"
        return response.json()

    def complete(self, execution_id: str, success: bool) -> dict:
        response = self.session().post(
            self.url + COMPLETION,
            timeout=10,
            json={
                "execution_id": execution_id,
                "container_id": f"task-{execution_id}",
                "success": success,
                "result_data": {},
                "error_message": None if success else "boom",
            },
        )
        assert response.status_code == 200, response.text
        return response.json()

    def heartbeats(self, ids) -> list[dict]:
        return list(self.pool.map(self.heartbeat, ids))


def test_it_tracks_200_concurrent_executions_exactly_once_across_4_workers(live_bridge):
    bridge = live_bridge(workers=4, env={"BRIDGE_LOST_AFTER_INTERVALS": "2", "BRIDGE_REAPER_INTERVAL_SECONDS": "0.2"})
    fleet = Fleet(bridge.url)
    ids = [str(uuid.uuid4()) for _ in range(200)]
    silent, finishing, steady = ids[:50], ids[50:100], ids[100:]

    fleet.heartbeats(ids)
    assert len(bridge.executions(status="running")) == 200

    # Each completion twice, concurrently, so the copies race through different workers.
    outcomes = list(
        fleet.pool.map(lambda pair: fleet.complete(*pair), [(eid, n % 2 == 0) for n, eid in enumerate(finishing)] * 2)
    )
    assert sorted(o["duplicate"] for o in outcomes) == [False] * 50 + [True] * 50

    # The steady half keeps beating; the silent half must become lost, each once.
    deadline = time.monotonic() + WAIT_SECONDS
    while len(bridge.executions(status="lost")) < 50 and time.monotonic() < deadline:
        fleet.heartbeats(steady)
        time.sleep(0.3)
    for _ in range(5):  # several more reaper rounds in every worker: nothing may count twice
        fleet.heartbeats(steady)
        time.sleep(0.3)

    lost = bridge.executions(status="lost")
    assert sorted(e["execution_id"] for e in lost) == sorted(silent)
    assert {e["lost_count"] for e in lost} == {1}
    assert len(bridge.executions(status="running")) == 100
    metrics = bridge.metrics()
    assert total(metrics, "task_executions_lost_total", task_name="e2e") == 50
    assert total(metrics, "task_completions_total", task_name="e2e", outcome="success") == 25
    assert total(metrics, "task_completions_total", task_name="e2e", outcome="failure") == 25
    assert total(metrics, "task_execution_duration_seconds_count", task_name="e2e") == 50
    for status, count in {"running": 100, "lost": 50, "completed": 25, "failed": 25}.items():
        assert total(metrics, "task_executions", task_name="e2e", status=status) == count
    assert total(metrics, "task_execution_status", status="lost") == 50

    # A lost one comes back: running again, one recovery, the loss still counted once.
    assert fleet.heartbeat(silent[0])["execution_status"] == "running"
    back = requests.get(f"{bridge.url}/api/v1/executions/{silent[0]}", timeout=10).json()
    assert (back["status"], back["recoveries"], back["lost_count"]) == ("running", 1, 1)
    metrics = bridge.metrics()
    assert total(metrics, "task_execution_recoveries_total", task_name="e2e") == 1
    assert total(metrics, "task_executions_lost_total", task_name="e2e") == 50
    assert total(metrics, "task_executions", task_name="e2e", status="lost") == 49
    fleet.pool.shutdown()


def test_it_answers_every_worker_the_same_metrics(live_bridge):
    bridge = live_bridge(workers=4)
    fleet = Fleet(bridge.url, threads=4)
    fleet.heartbeats([f"job-{n}" for n in range(20)])
    bodies = {requests.get(bridge.url + "/metrics", timeout=10).text for _ in range(12)}
    assert len(bodies) == 1
    fleet.pool.shutdown()


def test_it_refuses_a_chunked_body_over_the_limit_with_413(live_bridge):
    bridge = live_bridge(workers=1, env={"BRIDGE_MAX_BODY_BYTES": "4096"})

    def chunks(size):
        yield b'{"execution_id": "chunked", "progress": {"blob": "'
        yield b"x" * size
        yield b'"}}'

    url = bridge.url + HEARTBEAT
    headers = {"Content-Type": "application/json"}
    too_large = requests.post(url, data=chunks(10_000), headers=headers, timeout=10)
    assert too_large.status_code == 413, too_large.text
    assert too_large.json()["field"] == "body"
    fits = requests.post(url, data=chunks(1_000), headers=headers, timeout=10)
    assert fits.status_code == 200, fits.text
    assert total(bridge.metrics(), "bridge_requests_rejected_total", reason="too_large") == 1


def _trickle(url: str, head: bytes, stop: threading.Event, opened: list) -> None:
    """Open a connection and send ``head`` one byte every two seconds until ``stop``."""
    host, port = url.removeprefix("http://").split(":")
    try:
        sock = socket.create_connection((host, int(port)), timeout=5)
    except OSError:
        return
    opened.append(sock)
    for byte in head:
        if stop.wait(2):
            return
        try:
            sock.send(bytes([byte]))
        except OSError:  # closed by the bridge: the point
            return


def _closed_by_peer(sock: socket.socket) -> bool:
    sock.settimeout(0.5)
    try:
        data = sock.recv(65536)
    except (TimeoutError, BlockingIOError):
        return False
    except OSError:
        return True
    return data == b"" or data.startswith(b"HTTP/1.1 408")


def test_it_answers_probes_and_heartbeats_at_once_while_200_clients_trickle(live_bridge):
    bridge = live_bridge(workers=2, env={"BRIDGE_REQUEST_READ_TIMEOUT_SECONDS": "4"})
    stop, opened = threading.Event(), []
    heads = [
        b"POST /api/v1/monitoring/heartbeat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 40\r\n\r\n{"execution_id": ',  # declares a body, then stalls in it
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100,
    ]  # headers, a byte at a time
    threads = [threading.Thread(target=_trickle, args=(bridge.url, heads[n % 2], stop, opened)) for n in range(200)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(opened) == 200, "200 trickling connections")
        time.sleep(1)  # every one of them has sent its first bytes and holds its request open
        session = requests.Session()
        deadline = time.monotonic() + 8  # past the read timeout: the tricklers get cut meanwhile
        while time.monotonic() < deadline:
            # Without read deadlines each of these waits behind the tricklers for good.
            assert session.get(bridge.url + "/healthz", timeout=3).status_code == 200
            assert session.get(bridge.url + "/readyz", timeout=3).status_code == 200
            response = session.post(bridge.url + HEARTBEAT, json={"execution_id": "prompt"}, timeout=3)
            assert response.status_code == 200
        assert all(_closed_by_peer(sock) for sock in opened)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        for sock in opened:
            sock.close()
    parsed = samples(requests.get(bridge.url + "/metrics", timeout=10).text)
    assert total(parsed, "bridge_requests_rejected_total", endpoint="http", reason="timeout") == 200


def test_it_answers_408_to_a_chunked_body_that_stalls(live_bridge):
    bridge = live_bridge(workers=1, env={"BRIDGE_REQUEST_READ_TIMEOUT_SECONDS": "1"})
    host, port = bridge.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /api/v1/monitoring/heartbeat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Transfer-Encoding: chunked\r\n\r\n10\r\n{"execution_id":'
        )  # then nothing
        answer = sock.recv(65536)
        head, _, body = answer.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
        while len(body) < length:  # the body may come in a segment of its own
            body += sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 408")
    assert json.loads(body)["field"] == "body"
    parsed = samples(requests.get(bridge.url + "/metrics", timeout=10).text)
    assert total(parsed, "bridge_requests_rejected_total", endpoint="heartbeat", reason="timeout") == 1


def _raw(url: str, request: bytes) -> tuple[int, dict, bytes]:
    """Send ``request`` as it is; return the status, headers and body of the answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


MALFORMED = {
    "duplicate Content-Length": (
        b"POST /api/v1/monitoring/heartbeat HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\nContent-Length: 3\r\n"
        b"\r\n{}",
        400,
    ),
    "NUL in a header": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad: a\x00b\r\n\r\n", 400),
    "too many headers": (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % n for n in range(200)) + b"\r\n",
        431,
    ),
    "an over-long URI": (b"GET /healthz?" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
}


def test_it_refuses_malformed_requests_in_json_and_counts_them(live_bridge):
    bridge = live_bridge(workers=1)
    for name, (request, status) in MALFORMED.items():
        code, headers, body = _raw(bridge.url, request)
        assert (code, headers["content-type"]) == (status, "application/json"), name
        assert json.loads(body)["error"], name
    parsed = samples(requests.get(bridge.url + "/metrics", timeout=10).text)
    assert total(parsed, "bridge_requests_rejected_total", endpoint="http") == len(MALFORMED)


def test_it_answers_a_doubled_slash_with_a_json_404_not_a_redirect(live_bridge):
    bridge = live_bridge(workers=1)
    response = requests.post(
        bridge.url + "/api/v1//monitoring/heartbeat", json={"execution_id": "x"}, timeout=10, allow_redirects=False
    )
    assert response.status_code == 404 and "base URL" in response.json()["error"]
    assert requests.get(bridge.url + "/api/v1/executions/x", timeout=10).status_code == 404
    parsed = samples(requests.get(bridge.url + "/metrics", timeout=10).text)
    assert total(parsed, "bridge_requests_rejected_total", endpoint="http", reason="not_found") == 1


def test_it_says_once_what_it_runs_with_and_which_variables_it_ignores(live_bridge):
    bridge = live_bridge(
        workers=3,
        env={
            "BRIDGE_WORKRES": "4",
            "BRIDGE_METRICS_TOKEN": "metrics-token-0123456789",
            "OTEL_TRACES_EXPORTER": "none",
            "BRIDGE_LOG_LEVEL": "INFO",
        },
    )
    # Each worker reads its settings, then opens the store: once all three hold the file, a
    # worker that warned would have done so.
    database = bridge.data_dir / "bridge.db"
    wait_for(lambda: workers_holding(bridge, database) == 3, "three workers to build their apps")
    log = bridge.log()
    [ready] = [line for line in log.splitlines() if "Heartbeat Bridge" in line]
    # gunicorn's own format: [time] [pid] [LEVEL] message
    assert re.fullmatch(
        r"\[[^]]+\] \[\d+\] \[INFO\] Heartbeat Bridge \S+: store sqlite:///\S+bridge\.db, "
        r"3 workers x \d+ threads, auth on \(metrics token\), tracing off",
        ready,
    ), ready
    assert "metrics-token-0123456789" not in log
    warnings = [line for line in log.splitlines() if "unknown variable" in line]
    assert (
        len(warnings) == 1
        and "[WARNING] ignoring unknown variable BRIDGE_WORKRES (did you mean BRIDGE_WORKERS?)" in warnings[0]
    )


def test_it_relies_only_on_gunicorn_internals_that_are_there():
    """bridge/server/worker.py reads and overrides parts of gunicorn's gthread worker that are
    not its public API. A gunicorn that changes one of them fails here, by name, before a slow
    client finds out; docs/development.md ("The gunicorn worker") says what to do then."""
    import inspect
    import io

    from gunicorn.config import Config
    from gunicorn.http.unreader import SocketUnreader
    from gunicorn.workers import base, gthread

    def parameters(function) -> list[str]:
        return list(inspect.signature(function).parameters)

    worker_init = inspect.getsource(gthread.ThreadWorker.__init__)
    for attribute in ("self.nr_conns", "self.poller", "self.tpool"):  # read or counted down by BridgeWorker
        assert attribute in worker_init, f"gthread.ThreadWorker no longer sets {attribute}"
    assert parameters(gthread.ThreadWorker.enqueue_req) == ["self", "conn"], "enqueue_req(conn) changed"
    assert "self.tpool.submit(self.handle" in inspect.getsource(gthread.ThreadWorker.enqueue_req), (
        "enqueue_req no longer hands the connection to a thread"
    )
    assert parameters(gthread.ThreadWorker.murder_keepalived)[:1] == ["self"], "murder_keepalived changed"
    assert set(parameters(gthread.ThreadWorker.murder_keepalived)) <= {"self", "force"}, (
        "murder_keepalived takes arguments BridgeWorker does not pass on"
    )
    assert parameters(base.Worker.handle_error) == ["self", "req", "client", "addr", "exc"], "handle_error changed"
    assert parameters(gthread.ThreadWorker.run) == ["self"], "run() changed"  # the collector is settled first
    connection_init = inspect.getsource(gthread.TConn.__init__)
    for attribute in ("self.sock", "self.parser"):  # replaced, and its read-ahead taken, by BridgeWorker
        assert attribute in connection_init, f"gthread.TConn no longer sets {attribute}"
    handle = inspect.getsource(gthread.ThreadWorker.handle)
    # A thread that waits for data would wait on a request BridgeWorker already read whole:
    # data_ready (in the gunicorns that wait) must be what tells it not to.
    assert "wait_for_data" not in handle or "data_ready" in handle, (
        "the request thread waits for data without asking conn.data_ready"
    )
    # A plain heartbeat on a kept-alive connection is answered by BridgeWorker.handle itself,
    # which keeps or closes the connection as handle_request would, and answers the requests
    # sent behind it on the same thread.
    assert parameters(gthread.ThreadWorker.handle) == ["self", "conn"], "handle(conn) changed"
    assert parameters(gthread.ThreadWorker.finish_request) in (["self", "fs"], ["self", "conn", "fs"]), (
        "finish_request takes something else of handle's result"
    )
    assert "self.initialized = True" in inspect.getsource(gthread.TConn.init), "TConn.init no longer says so"
    handle_request = inspect.getsource(gthread.ThreadWorker.handle_request)
    kept = "self.keepalived_conns" if "self.keepalived_conns" in worker_init else "self._keep"  # 23: _keep
    for decision in ("self.nr += 1", "self.max_requests", "self.alive = False", "self.cfg.keepalive", f"len({kept})"):
        assert decision in handle_request, f"handle_request no longer decides keep-alive with {decision}"
    for hook in ("pre_request", "post_request"):
        assert callable(Config().settings[hook].default), f"gunicorn's default {hook} hook changed"
    if "_lock" in worker_init:  # gunicorn 23 registers with the poller from threads, under it
        assert "with self._lock" in inspect.getsource(gthread.ThreadWorker), "the poller's lock changed"
    left, right = socket.socketpair()
    try:
        assert isinstance(SocketUnreader(left).buf, io.BytesIO), "the parser's read-ahead is no longer a BytesIO"
    finally:
        left.close()
        right.close()


# -- plain heartbeats answered by the worker itself (BridgeWorker.handle) -------------------------


def _heartbeat_request(execution_id: str, target: str = HEARTBEAT, extra: bytes = b"") -> bytes:
    body = json.dumps(
        {"execution_id": execution_id, "container_id": f"task-{execution_id}", "status": "running"}
    ).encode()
    return (
        f"POST {target} HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


def _answers(sock: socket.socket, count: int) -> list[tuple[int, list[str], bytes]]:
    """Read ``count`` answers from ``sock``: each one's status, header lines but Date, and body."""
    data, answers = b"", []
    while len(answers) < count:
        head_end = data.find(b"\r\n\r\n")
        if head_end >= 0:
            head = data[:head_end].decode("latin-1").split("\r\n")
            length = int(next(line.split(":")[1] for line in head if line.lower().startswith("content-length:")))
            if len(data) >= head_end + 4 + length:
                lines = [line for line in head[1:] if not line.startswith("Date: ")]
                answers.append((int(head[0].split()[1]), lines, data[head_end + 4 : head_end + 4 + length]))
                data = data[head_end + 4 + length :]
                continue
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {len(answers)} of {count} answers"
        data += chunk
    return answers


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def test_it_answers_a_heartbeat_on_a_kept_alive_connection_as_gunicorn_does(live_bridge):
    bridge = live_bridge(workers=1)
    traceparent = b"Traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n"
    with _connect(bridge.url) as sock:
        sent = [
            _heartbeat_request("direct-1"),  # a connection's first request: gunicorn reads it
            _heartbeat_request("direct-1"),  # kept alive: the worker answers it
            _heartbeat_request("direct-1", HEARTBEAT + "?via=gunicorn"),  # another target: gunicorn's
            _heartbeat_request("traced-1", extra=traceparent),  # the worker's, with what the view reads
        ]
        answers = []
        for request in sent:
            sock.sendall(request)
            answers.extend(_answers(sock, 1))
    assert answers[0][0] == 200 and "Connection: keep-alive" in answers[0][1]
    answers[3] = (answers[3][0], answers[3][1], answers[3][2].replace(b"traced-1", b"direct-1"))
    assert all(answer == answers[0] for answer in answers), answers
    assert json.loads(answers[0][2])["execution_status"] == "running"
    execution = requests.get(f"{bridge.url}/api/v1/executions/direct-1", timeout=10).json()
    assert execution["heartbeat_count"] == 3
    traced = requests.get(f"{bridge.url}/api/v1/executions/traced-1", timeout=10).json()
    assert traced["trace_id"] == "0af7651916cd43dd8448eb211c80319c"


def test_it_answers_heartbeats_sent_back_to_back_in_one_write(live_bridge):
    bridge = live_bridge(workers=1)
    with _connect(bridge.url) as sock:
        sock.sendall(_heartbeat_request("piped-0"))
        _answers(sock, 1)
        targets = [HEARTBEAT, HEARTBEAT + "?via=gunicorn", HEARTBEAT]  # the worker's, gunicorn's, the worker's
        sock.sendall(
            b"".join(_heartbeat_request(f"piped-{n}", target) for n, target in enumerate(targets, 1))
            + b"GET /healthz HTTP/1.1\r\n\r\n"
        )
        answers = _answers(sock, 4)
    assert [json.loads(body)["execution_id"] for _, _, body in answers[:3]] == ["piped-1", "piped-2", "piped-3"]
    assert answers[3][0] == 200 and json.loads(answers[3][2])["status"] == "ok"


def test_it_closes_the_connection_when_the_client_or_the_worker_says_so(live_bridge):
    bridge = live_bridge(workers=1, env={"GUNICORN_CMD_ARGS": "--max-requests 20"})
    with _connect(bridge.url) as sock:
        sock.sendall(_heartbeat_request("closing"))
        _answers(sock, 1)
        sock.sendall(_heartbeat_request("closing", extra=b"Connection: close\r\n"))
        status, lines, _ = _answers(sock, 1)[0]
        assert (status, "Connection: close" in lines) == (200, True)
        assert sock.recv(1) == b""
    with _connect(bridge.url) as sock:  # the worker's last request before it restarts (the probes count)
        kept = []
        for _ in range(20):
            sock.sendall(_heartbeat_request("closing"))
            status, lines, _ = _answers(sock, 1)[0]
            kept.append("Connection: keep-alive" in lines)
            if not kept[-1]:
                break
        assert 2 < len(kept) < 20 and not kept[-1] and all(kept[:-1]), kept
        assert sock.recv(1) == b""


def test_it_answers_a_refusal_of_the_store_once_and_as_gunicorn_does(live_bridge):
    bridge = live_bridge(workers=1, env={"BRIDGE_MAX_EXECUTIONS": "1"})
    with _connect(bridge.url) as sock:
        sock.sendall(_heartbeat_request("the-one"))
        _answers(sock, 1)
        sock.sendall(_heartbeat_request("one-too-many"))  # kept alive: the worker takes it
        direct = _answers(sock, 1)[0]
        sock.sendall(_heartbeat_request("one-too-many", HEARTBEAT + "?via=gunicorn"))
        through_gunicorn = _answers(sock, 1)[0]
    assert direct[0] == 429 and "Retry-After: 5" in direct[1]
    assert direct == through_gunicorn
    parsed = samples(requests.get(bridge.url + "/metrics", timeout=10).text)
    assert total(parsed, "bridge_requests_rejected_total", endpoint="heartbeat") == 2  # once per request


def test_it_leaves_to_gunicorn_every_heartbeat_that_is_not_plain():
    from bridge.server.worker import plain_heartbeat_request

    body = b'{"execution_id": "x"}'
    head = b"POST /api/v1/monitoring/heartbeat HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n"
    plain = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    environ, size, close = plain_heartbeat_request(plain + b"GET / HTTP/1.1\r\n\r\n")
    assert (size, close, environ["wsgi.input"].read()) == (len(plain), False, body)
    assert (environ["CONTENT_TYPE"], environ["HTTP_HOST"], environ["CONTENT_LENGTH"]) == (
        "application/json",
        "b",
        str(len(body)),
    )
    length = b"Content-Length: %d\r\n" % len(body)
    not_plain = {
        "another path": plain.replace(b"heartbeat HTTP", b"completion HTTP"),
        "a query": plain.replace(b"heartbeat HTTP", b"heartbeat?x=1 HTTP"),
        "HTTP/1.0": plain.replace(b"HTTP/1.1", b"HTTP/1.0"),
        "no Content-Length": head + b"\r\n" + body,
        "two Content-Lengths": head + length + length + b"\r\n" + body,
        "a signed Content-Length": head + b"Content-Length: +%d\r\n\r\n" % len(body) + body,
        "chunked": head + length + b"Transfer-Encoding: chunked\r\n\r\n" + body,
        "Expect": head + length + b"Expect: 100-continue\r\n\r\n" + body,
        "an upgrade": head + length + b"Connection: Upgrade\r\nUpgrade: h2c\r\n\r\n" + body,
        "an underscore in a name": head + length + b"X_Forwarded: a\r\n\r\n" + body,
        "a space before the colon": head + length + b"X-A : b\r\n\r\n" + body,
        "a folded line": head + length + b"X-A: b\r\n c\r\n\r\n" + body,
        "a byte beyond ASCII": head + length + b"X-A: \xe9\r\n\r\n" + body,
        "a control character": head + length + b"X-A: a\x00b\r\n\r\n" + body,
        "a body still coming": plain[:-1],
        "too many fields": head + length + b"".join(b"X-%d: v\r\n" % n for n in range(100)) + b"\r\n" + body,
        "a field too long": head + length + b"X-A: " + b"v" * 8200 + b"\r\n\r\n" + body,
    }
    for name, request in not_plain.items():
        assert plain_heartbeat_request(request) is None, name
    assert plain_heartbeat_request(head.replace(b"Host: b", b"Connection: close") + length + b"\r\n" + body)[2]


@pytest.fixture
def worker_connection(app):
    """A BridgeWorker over ``app`` in this process, and a kept-alive connection to it: yields
    (worker, connection, the client's socket, the targets of the requests gunicorn handled)."""
    import os
    from types import SimpleNamespace

    from gunicorn.config import Config
    from gunicorn.glogging import Logger
    from gunicorn.workers.gthread import TConn

    from bridge.server.worker import BridgeWorker, _DeadlineSocket

    cfg = Config()
    worker = BridgeWorker(0, os.getpid(), [], SimpleNamespace(wsgi=lambda: app), 30, cfg, Logger(cfg))
    worker.load_wsgi()
    through_gunicorn: list[str] = []
    handle_request = worker.handle_request
    worker.handle_request = lambda req, conn: through_gunicorn.append(req.uri) or handle_request(req, conn)
    ours, theirs = socket.socketpair()
    conn = TConn(cfg, ours, ("127.0.0.1", 1), ("127.0.0.1", 2))
    conn.sock = _DeadlineSocket(ours.family, ours.type, ours.proto, fileno=ours.detach())
    conn.init()  # as gthread does for a connection's first request
    yield worker, conn, theirs, through_gunicorn
    conn.sock.close()
    theirs.close()
    worker.tmp.close()


def test_it_answers_a_kept_alive_heartbeat_without_gunicorns_request_handling(worker_connection):
    worker, conn, client, through_gunicorn = worker_connection
    answers = []
    for target in (HEARTBEAT, HEARTBEAT + "?via=gunicorn"):
        conn.sock.keep(_heartbeat_request("in-process", target))  # as the main loop reads it
        kept = worker.handle(conn)
        assert (kept if isinstance(kept, bool) else kept[0]) is True  # gunicorn 23: (kept, conn)
        answers.extend(_answers(client, 1))
    assert through_gunicorn == [HEARTBEAT + "?via=gunicorn"]
    assert answers[0] == answers[1] and answers[0][0] == 200


def test_it_leaves_what_it_built_before_serving_to_the_collectors_permanent_generation(worker_connection, monkeypatch):
    import gc

    from gunicorn.workers.gthread import ThreadWorker

    from bridge.server.worker import YOUNG_OBJECTS_PER_COLLECTION

    worker, *_ = worker_connection
    served = []
    monkeypatch.setattr(ThreadWorker, "run", lambda self: served.append((gc.get_freeze_count(), gc.get_threshold())))
    threshold = gc.get_threshold()
    gc.unfreeze()
    try:
        worker.run()
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
    [(frozen, (young, *_))] = served
    assert frozen > 10_000 and young == YOUNG_OBJECTS_PER_COLLECTION  # the app and its modules


@pytest.mark.parametrize("error, status", [("StoreUnavailable", 503), ("RuntimeError", 500)])
def test_it_applies_a_heartbeat_it_answers_itself_once_when_its_commit_fails(
    app, worker_connection, monkeypatch, error, status
):
    from bridge.core import errors

    worker, conn, client, through_gunicorn = worker_connection
    calls = []

    def failing(hb):
        calls.append(hb.execution_id)
        raise getattr(errors, error, RuntimeError)("injected")

    monkeypatch.setattr(app.extensions["heartbeat_bridge"].monitor, "heartbeat", failing)
    conn.sock.keep(_heartbeat_request("failing"))
    worker.handle(conn)
    (answer,) = _answers(client, 1)
    assert (answer[0], set(json.loads(answer[2]))) == (status, {"error"})
    assert calls == ["failing"]  # the app answered the store's error without applying it again
    assert through_gunicorn == [HEARTBEAT]


@pytest.mark.parametrize("settings_overrides", [{"auth_tokens": ("a-token-of-sixteen-chars",)}])
def test_it_leaves_a_heartbeat_without_its_token_to_the_app(worker_connection):
    worker, conn, client, through_gunicorn = worker_connection
    conn.sock.keep(_heartbeat_request("guarded"))
    worker.handle(conn)
    assert _answers(client, 1)[0][0] == 401
    assert through_gunicorn == [HEARTBEAT]  # refused by the app, which counts it
    conn.sock.keep(_heartbeat_request("guarded", extra=b"Authorization: Bearer a-token-of-sixteen-chars\r\n"))
    worker.handle(conn)
    assert _answers(client, 1)[0][0] == 200
    assert through_gunicorn == [HEARTBEAT]


def _environment_of(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as environ:
        pairs = [item.decode().partition("=") for item in environ.read().split(b"\0") if item]
    return {name: value for name, _, value in pairs}


def test_it_has_malloc_ask_for_huge_pages_unless_told_otherwise(live_bridge, monkeypatch):
    from bridge.server.cli import HUGE_PAGES_TUNABLE, _ask_for_huge_pages

    # ld.so rewrites the variable it starts with in /proc/<pid>/environ: start without one
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    bridge = live_bridge(workers=1)
    assert _environment_of(bridge.process.pid)["GLIBC_TUNABLES"] == HUGE_PAGES_TUNABLE  # gunicorn, exec'd
    for before, after in [
        ({}, HUGE_PAGES_TUNABLE),
        ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, f"glibc.malloc.arena_max=2:{HUGE_PAGES_TUNABLE}"),
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "glibc.malloc.hugetlb=0"),  # the operator's say
    ]:
        _ask_for_huge_pages(before)
        assert before["GLIBC_TUNABLES"] == after
