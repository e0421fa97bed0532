"""A 200 means committed: SIGKILL the whole server mid-stream and find every answered heartbeat."""

from __future__ import annotations

import threading
import time

import requests

from support import HEARTBEAT

SENDERS = 8
STREAM_SECONDS = 2.0


def test_it_keeps_every_answered_heartbeat_through_a_sigkill(live_bridge, tmp_path):
    bridge = live_bridge(workers=2)
    answered: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def send(sender: int) -> None:
        session = requests.Session()
        n = 0
        while not stop.is_set():
            execution_id = f"kill-{sender}-{n}"
            n += 1
            try:
                response = session.post(
                    bridge.url + HEARTBEAT,
                    timeout=5,
                    json={"execution_id": execution_id, "container_id": "c", "status": "running"},
                )
            except requests.RequestException:
                session = requests.Session()
                time.sleep(0.01)
                continue
            if response.status_code == 200 and response.json().get("status") == "ok":
                with lock:
                    answered.add(execution_id)

    threads = [threading.Thread(target=send, args=(s,)) for s in range(SENDERS)]
    for t in threads:
        t.start()
    time.sleep(STREAM_SECONDS)
    bridge.kill()  # master and workers together, while requests are in flight
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join(10)
    assert len(answered) > 100, "too few heartbeats reached the server to prove anything"

    restarted = live_bridge(workers=2, data_dir=tmp_path)
    found = {e["execution_id"] for e in restarted.executions()}
    missing = answered - found
    assert not missing, f"{len(missing)} answered heartbeats lost, e.g. {sorted(missing)[:5]}"
