"""The seed document's HeartbeatClient, unchanged, against the real service."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import requests

from support import HEARTBEAT, ROOT, require_binary

SEED_DIR = ROOT / "tests" / "seed"

# The seed's task_service.py flow, with short sleeps: start, progress, then complete or fail.
TASK = """
import sys, time
sys.path.insert(0, {seed_dir!r})
from heartbeat_client import HeartbeatClient
client = HeartbeatClient(api_base_url={url!r}, execution_id={eid!r},
                         container_id="task-" + {eid!r}, heartbeat_interval=1)
client.start()
client.update_status("running", {{"stage": "配置加载完成"}})
for step in range(1, 4):
    client.update_status("running", {{"stage": "数据处理中", "current_step": step,
                                     "total_steps": 10, "percentage": round(step / 10 * 100, 2)}})
    time.sleep(0.8)
if {fail!r}:
    client.update_status("failed", {{"error": "模拟错误"}})
    client.send_completion(success=False, error_message="模拟任务执行错误")
else:
    client.update_status("completed", {{"stage": "任务完成"}})
    client.send_completion(success=True, result_data={{"processed_records": 1000,
                           "output_files": ["result.json", "summary.txt"], "execution_time": "2.5分钟"}})
client.stop()
"""


def run_task(url: str, execution_id: str, fail: bool) -> str:
    code = TASK.format(seed_dir=str(SEED_DIR), url=url, eid=execution_id, fail=fail)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_it_serves_the_seed_client_through_a_successful_task(live_bridge):
    bridge = live_bridge()
    execution_id = str(uuid.uuid4())
    output = run_task(bridge.url, execution_id, fail=False)
    assert "心跳发送成功" in output  # printed only when the answer's status is "ok"
    assert "任务完成通知发送成功" in output
    assert "心跳响应异常" not in output and "失败" not in output
    record = requests.get(f"{bridge.url}/api/v1/executions/{execution_id}", timeout=10).json()
    assert (record["status"], record["success"]) == ("completed", True)
    assert record["heartbeat_count"] >= 2
    assert record["container_id"] == f"task-{execution_id}"
    assert record["result_data"]["processed_records"] == 1000
    assert record["progress"]["stage"] == "数据处理中"


def test_it_serves_the_seed_client_through_a_failed_task(live_bridge):
    bridge = live_bridge()
    execution_id = str(uuid.uuid4()).upper()  # the seed's ids are UUIDs, in either case
    output = run_task(bridge.url, execution_id, fail=True)
    assert "任务完成通知发送成功" in output
    record = requests.get(f"{bridge.url}/api/v1/executions/{execution_id.lower()}", timeout=10).json()
    assert (record["status"], record["error_message"]) == ("failed", "模拟任务执行错误")


def test_it_accepts_the_seed_troubleshooting_curl_call(live_bridge):
    bridge = live_bridge()
    curl = require_binary("curl")
    result = subprocess.run(
        [
            curl,
            "-sS",
            "-X",
            "POST",
            bridge.url + HEARTBEAT,
            "-H",
            "Content-Type: application/json",
            "-d",
            '{"execution_id":"test","container_id":"test","status":"running"}',
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"] == "ok"
