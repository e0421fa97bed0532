"""Spans leave the real service over OTLP/HTTP, once each, and never hold up a request."""

from __future__ import annotations

import gzip
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from bridge.core.ids import execution_span_id

from support import COMPLETION, HEARTBEAT, free_port, total

WAIT_SECONDS = 40.0
OTEL_FAST = {"OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_EXPORTER_OTLP_TIMEOUT": "2"}


class OtlpReceiver:
    """A minimal OTLP/HTTP trace receiver on loopback that decodes the real protobuf."""

    def __init__(self):
        self.spans: list = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest.FromString(body)
                with receiver.lock:
                    for resource_spans in request.resource_spans:
                        for scope_spans in resource_spans.scope_spans:
                            receiver.spans.extend(scope_spans.spans)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def execution_spans(self) -> list:
        with self.lock:
            return [s for s in self.spans if s.name == "task.execution"]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    receiver = OtlpReceiver()
    yield receiver
    receiver.close()


def test_it_exports_exactly_one_span_per_execution_across_4_workers(live_bridge, receiver):
    bridge = live_bridge(
        workers=4,
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "OTEL_SERVICE_NAME": "bridge-under-test",
            "BRIDGE_LOST_AFTER_INTERVALS": "2",
            "BRIDGE_REAPER_INTERVAL_SECONDS": "0.2",
            **OTEL_FAST,
        },
    )
    ids = [str(uuid.uuid4()) for _ in range(100)]
    succeed, fail, go_silent = ids[:40], ids[40:70], ids[70:]
    pool = ThreadPoolExecutor(16)

    def post(path, body):
        response = requests.post(bridge.url + path, json=body, timeout=10)
        assert response.status_code == 200, response.text

    def beat(eid, stage):
        post(
            HEARTBEAT,
            {
                "execution_id": eid,
                "container_id": "c",
                "status": "running",
                "interval_seconds": 1,
                "task_name": "otlp",
                "progress": {"stage": stage},
            },
        )

    list(pool.map(lambda eid: beat(eid, "extract"), ids))
    list(pool.map(lambda eid: beat(eid, "load"), ids))
    finishing = [(eid, True) for eid in succeed] + [(eid, False) for eid in fail]
    list(
        pool.map(
            lambda item: post(
                COMPLETION, {"execution_id": item[0], "success": item[1], "error_message": None if item[1] else "boom"}
            ),
            finishing * 2,
        )
    )  # every completion twice, racing through the workers

    deadline = time.monotonic() + WAIT_SECONDS
    while len(receiver.execution_spans()) < 100 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.5)  # more reaper rounds and export batches: nothing may arrive twice
    bridge.stop()  # a graceful stop flushes whatever the workers still hold

    spans = receiver.execution_spans()
    keys = [(s.trace_id.hex(), s.span_id.hex()) for s in spans]
    assert len(spans) == 100 and len(set(keys)) == 100
    expected = {(eid.replace("-", ""), execution_span_id(eid)) for eid in ids}
    assert set(keys) == expected
    by_trace = {s.trace_id.hex(): s for s in spans}
    assert all(by_trace[e.replace("-", "")].status.code == 1 for e in succeed)  # OK
    assert all(by_trace[e.replace("-", "")].status.code == 2 for e in fail + go_silent)  # ERROR
    stage_parents = {
        (s.trace_id.hex(), s.parent_span_id.hex()) for s in receiver.spans if s.name in ("extract", "load")
    }
    assert stage_parents == expected
    pool.shutdown()


def test_it_answers_every_request_while_the_otlp_endpoint_is_down(live_bridge):
    dead_endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    bridge = live_bridge(workers=2, env={"OTEL_EXPORTER_OTLP_ENDPOINT": dead_endpoint, **OTEL_FAST})
    session = requests.Session()
    for n in range(30):
        body = {"execution_id": f"down-{n}", "container_id": "c", "status": "running"}
        assert session.post(bridge.url + HEARTBEAT, json=body, timeout=5).status_code == 200
        done = session.post(bridge.url + COMPLETION, json={"execution_id": f"down-{n}", "success": True}, timeout=5)
        assert done.status_code == 200 and done.json()["status"] == "ok"
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if total(bridge.metrics(), "bridge_telemetry_errors_total", stage="export") > 0:
            break
        time.sleep(0.3)
    assert total(bridge.metrics(), "bridge_telemetry_errors_total", stage="export") > 0
    assert requests.get(bridge.url + "/readyz", timeout=5).status_code == 200
