"""bridge.client.HeartbeatClient against the real running bridge."""

from __future__ import annotations

import signal
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from bridge.client import HeartbeatClient, execution_traceparent
from bridge.core import ids

from support import free_port, total, wait_for

#: A bound on "at once" that is far below any interval used here (30 s): not a benchmark.
PROMPTLY = 5.0


def execution(bridge, execution_id):
    response = requests.get(f"{bridge.url}/api/v1/executions/{execution_id}", timeout=5)
    return response.json() if response.status_code == 200 else None


@pytest.fixture
def bridge(live_bridge):
    return live_bridge(workers=2)


def test_it_works_the_way_the_seed_client_is_used(bridge):
    execution_id = str(uuid.uuid4())
    client = HeartbeatClient(
        api_base_url=bridge.url, execution_id=execution_id, container_id=f"task-{execution_id}", heartbeat_interval=1
    )
    client.start()
    client.update_status("running", {"stage": "配置加载完成"})
    for step in range(1, 4):
        client.update_status("running", {"stage": "数据处理中", "current_step": step, "total_steps": 3})
        time.sleep(0.4)
    client.update_status("completed", {"stage": "任务完成"})
    assert client.send_completion(success=True, result_data={"processed_records": 1000}) is True
    client.stop()
    record = execution(bridge, execution_id)
    assert (record["status"], record["success"]) == ("completed", True)
    assert record["interval_seconds"] == 1 and record["interval_source"] == "reported"
    assert record["result_data"] == {"processed_records": 1000}


def test_it_sends_the_first_heartbeat_at_once_and_another_on_a_status_change(bridge):
    client = HeartbeatClient(bridge.url, "prompt-1", "c", heartbeat_interval=30)
    with client:
        first = wait_for(lambda: execution(bridge, "prompt-1"), timeout=PROMPTLY)
        assert first["heartbeat_count"] == 1
        client.update_status("failed", {"error": "模拟错误"})
        changed = wait_for(
            lambda: (r := execution(bridge, "prompt-1")) and r["reported_status"] == "failed" and r, timeout=PROMPTLY
        )
        assert changed["progress"] == {"error": "模拟错误"}
        started = time.monotonic()
    assert time.monotonic() - started < PROMPTLY, "stop() waited for the 30 s interval"
    assert not client.is_running


def test_it_reports_an_exception_in_its_block_as_a_failed_completion(bridge):
    with pytest.raises(ValueError):
        with HeartbeatClient(bridge.url, "boom-1", "c", heartbeat_interval=30):
            raise ValueError("bad input file")
    record = execution(bridge, "boom-1")
    assert (record["status"], record["error_message"]) == ("failed", "ValueError: bad input file")


def test_it_completes_successfully_when_its_block_ends_normally_without_a_completion(bridge):
    with HeartbeatClient(bridge.url, "quiet-1", "c", heartbeat_interval=30):
        wait_for(lambda: execution(bridge, "quiet-1"), timeout=PROMPTLY)
    assert execution(bridge, "quiet-1")["status"] == "completed"
    with pytest.raises(SystemExit):
        with HeartbeatClient(bridge.url, "quiet-2", "c", heartbeat_interval=30):
            sys.exit(0)
    assert execution(bridge, "quiet-2")["status"] == "completed"
    with pytest.raises(SystemExit):
        with HeartbeatClient(bridge.url, "quiet-3", "c", heartbeat_interval=30):
            sys.exit(2)
    assert (execution(bridge, "quiet-3")["status"], execution(bridge, "quiet-3")["error_message"]) == (
        "failed",
        "SystemExit: 2",
    )


def test_it_keeps_the_completion_its_block_sent(bridge):
    with HeartbeatClient(bridge.url, "told-1", "c", heartbeat_interval=30) as client:
        client.send_completion(False, error_message="3 of 10 files failed")
    record = execution(bridge, "told-1")
    assert (record["status"], record["error_message"]) == ("failed", "3 of 10 files failed")


def test_it_retries_while_the_bridge_is_down_and_completes_exactly_once(live_bridge, tmp_path):
    port = free_port()
    client = HeartbeatClient(f"http://127.0.0.1:{port}", "retry-1", "c", heartbeat_interval=1, completion_deadline=60)
    client.start()
    time.sleep(1.5)  # heartbeats fail for a while: nobody listens
    bridge = live_bridge(workers=2, port=port)
    wait_for(
        lambda: (r := execution(bridge, "retry-1")) and r["heartbeat_count"] >= 1,
        "heartbeats once the bridge is up",
        timeout=PROMPTLY * 3,
    )
    bridge.stop()
    acknowledged = []
    completer = threading.Thread(target=lambda: acknowledged.append(client.send_completion(True)))
    completer.start()
    time.sleep(1.0)  # the completion fails for a while too
    bridge = live_bridge(workers=2, port=port)  # the same store: nothing was lost
    completer.join(60)
    client.stop()
    assert acknowledged == [True]
    assert execution(bridge, "retry-1")["status"] == "completed"
    assert client.send_completion(True) is True  # a repeat is acknowledged as a duplicate
    assert total(bridge.metrics(), "task_completions_total") == 1


def test_it_installs_no_signal_handlers_unless_asked():
    before = signal.getsignal(signal.SIGTERM)
    HeartbeatClient("http://127.0.0.1:9", "sig-1", "c")
    assert signal.getsignal(signal.SIGTERM) is before


def test_it_gives_up_on_a_completion_the_bridge_refuses(bridge):
    client = HeartbeatClient(bridge.url, "bad id with spaces", "c", completion_deadline=30)
    started = time.monotonic()
    assert client.send_completion(True) is False
    assert time.monotonic() - started < PROMPTLY, "a 400 was retried"


@pytest.mark.parametrize(
    "execution_id, traceparent",
    [
        ("550E8400-E29B-41D4-A716-446655440000", None),
        ("nightly-etl:42", None),
        ("job-7", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    ],
)
def test_it_knows_the_execution_span_the_bridge_will_emit(execution_id, traceparent):
    canonical = ids.normalise_id(execution_id)
    expected = f"00-{ids.trace_id_for(canonical, traceparent)}-{ids.execution_span_id(canonical)}-01"
    assert execution_traceparent(execution_id, traceparent) == expected


def test_it_sends_a_bearer_token_and_the_traceparent():
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            seen.append((self.headers.get("Authorization"), self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"status": "ok"}')

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        with HeartbeatClient(
            f"http://127.0.0.1:{server.server_address[1]}", "tok-1", "c", token="s3cret", traceparent=parent
        ):
            wait_for(lambda: seen, timeout=PROMPTLY)
        authorization, body = seen[0]
        assert authorization == "Bearer s3cret"
        assert b'"traceparent": "00-0af7651916cd43dd8448eb211c80319c' in body
    finally:
        server.shutdown()
