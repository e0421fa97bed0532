"""heartbeat-run: exit codes, signals, progress and the completion, against the real bridge."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from bridge.client import execution_traceparent

from support import ROOT, free_port, total, wait_for

#: A bound far below the 30 s the commands below would otherwise sleep: not a benchmark.
PROMPTLY = 10.0


@pytest.fixture
def bridge(live_bridge):
    return live_bridge(workers=2)


def run(bridge, execution_id, *command, extra_env=None, options=(), url=None, **popen):
    env = {k: v for k, v in os.environ.items() if k not in ("TASK_EXECUTION_ID", "TRACEPARENT")}
    env.update(TASK_EXECUTION_ID=execution_id, API_BASE_URL=url or bridge.url, HOSTNAME=f"host-{execution_id}")
    env.update(extra_env or {})
    return subprocess.Popen(
        [sys.executable, "-m", "bridge.container.run", "--interval", "1", *options, "--", *command],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **popen,
    )


def read_until(wrapper: subprocess.Popen, text: bytes) -> None:
    """Read the wrapper's stderr until a line has ``text``; fail if it ends first."""
    seen = b""
    while text not in seen:
        line = wrapper.stderr.readline()
        assert line, f"the wrapper ended without saying {text!r}: {seen!r}"
        seen += line


def nobody_listening() -> str:
    return f"http://127.0.0.1:{free_port()}"


def execution(bridge, execution_id):
    return requests.get(f"{bridge.url}/api/v1/executions/{execution_id}", timeout=5).json()


@pytest.mark.parametrize("code", [0, 3])
def test_it_passes_the_exit_code_through_and_reports_it(bridge, code):
    wrapper = run(bridge, f"exit-{code}", "sh", "-c", f"echo working; echo 'disk full' >&2; exit {code}")
    out, err = wrapper.communicate(timeout=60)
    assert wrapper.returncode == code
    assert b"working" in out and b"disk full" in err  # both streams still reach the caller
    record = execution(bridge, f"exit-{code}")
    assert record["exit_code"] == code
    assert record["container_id"] == f"host-exit-{code}"
    if code == 0:
        assert (record["status"], record["error_message"]) == ("completed", None)
    else:
        assert (record["status"], record["error_message"]) == ("failed", "disk full")


def test_it_forwards_sigterm_and_exits_with_the_commands_code(bridge):
    script = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(42))\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    wrapper = run(bridge, "term-1", sys.executable, "-c", script)
    assert wrapper.stdout.readline() == b"ready\n"
    started = time.monotonic()
    wrapper.send_signal(signal.SIGTERM)
    wrapper.wait(timeout=60)
    assert time.monotonic() - started < PROMPTLY, "the command did not get the signal"
    assert wrapper.returncode == 42
    assert execution(bridge, "term-1")["exit_code"] == 42


def test_it_reports_a_command_killed_by_a_signal_as_128_plus_n(bridge):
    wrapper = run(bridge, "int-1", "sh", "-c", "echo ready; exec sleep 30")
    assert wrapper.stdout.readline() == b"ready\n"
    wrapper.send_signal(signal.SIGINT)
    wrapper.wait(timeout=60)
    assert wrapper.returncode == 128 + signal.SIGINT
    record = execution(bridge, "int-1")
    assert (record["status"], record["exit_code"]) == ("failed", 130)
    assert record["error_message"] == "killed by SIGINT"


def test_it_takes_progress_from_json_lines_on_fd_3(bridge):
    script = (
        'echo \'{"stage": "download", "percentage": 20}\' >&3; sleep 1.5; '
        "echo 'not json' >&3; "
        'echo \'{"stage": "load", "percentage": 80, "rows": 5}\' >&3; '
        'echo "fd=$HEARTBEAT_PROGRESS_FD"'
    )
    wrapper = run(bridge, "progress-1", "sh", "-c", script)
    out, _ = wrapper.communicate(timeout=60)
    assert wrapper.returncode == 0 and b"fd=3" in out
    record = execution(bridge, "progress-1")
    assert record["progress"] == {"stage": "load", "percentage": 80, "rows": 5}
    assert [stage[0] for stage in record["stages"]] == ["download", "load"]
    metrics = bridge.metrics()
    assert total(metrics, "task_progress_ratio", execution_id="progress-1") == 0.8


def test_it_hands_the_command_the_execution_spans_traceparent(bridge):
    wrapper = run(bridge, "trace-1", "sh", "-c", 'echo "$TRACEPARENT"')
    out, _ = wrapper.communicate(timeout=60)
    assert out.decode().strip() == execution_traceparent("trace-1")


def test_it_refuses_to_run_without_an_execution_id(bridge):
    env = {k: v for k, v in os.environ.items() if k != "TASK_EXECUTION_ID"}
    result = subprocess.run(
        [sys.executable, "-m", "bridge.container.run", "--", "true"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "TASK_EXECUTION_ID" in result.stderr


def test_it_reports_a_command_that_cannot_start(bridge):
    wrapper = run(bridge, "missing-1", "/nonexistent/tool")
    wrapper.communicate(timeout=60)
    assert wrapper.returncode == 127
    record = execution(bridge, "missing-1")
    assert record["status"] == "failed" and "cannot run /nonexistent/tool" in record["error_message"]


@pytest.mark.parametrize("option, shown", [("--help", "--completion-timeout"), ("--version", "heartbeat-run 0.")])
def test_it_answers_help_and_version_without_a_command(option, shown):
    env = {k: v for k, v in os.environ.items() if k != "TASK_EXECUTION_ID"}
    result = subprocess.run(
        [sys.executable, "-m", "bridge.container.run", option],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and shown in result.stdout


def test_it_gives_up_on_the_completion_after_the_completion_timeout(bridge):
    url = nobody_listening()
    wrapper = run(bridge, "unheard-1", "sh", "-c", "exit 4", url=url, options=("--completion-timeout", "2"))
    _, err = wrapper.communicate(timeout=60)  # the old default retried for 300 s
    assert wrapper.returncode == 4
    assert f"{url}/api/v1/monitoring/completion" in err.decode() and "giving up" in err.decode()


def test_it_stops_waiting_for_the_bridge_on_sigterm_once_the_command_exited(bridge):
    wrapper = run(bridge, "unheard-2", "true", url=nobody_listening(), options=("--completion-timeout", "600"))
    read_until(wrapper, b"completion not acknowledged")  # the command exited; the wait began
    wrapper.send_signal(signal.SIGTERM)
    _, rest = wrapper.communicate(timeout=PROMPTLY)
    assert wrapper.returncode == 0 and b"completion abandoned" in rest


def test_it_skips_a_bad_progress_line_and_keeps_reporting(live_bridge):
    bridge = live_bridge(workers=1, env={"BRIDGE_MAX_FIELD_BYTES": "1024"})
    script = (
        'echo \'{"status": "done"}\' >&3; '  # not a status: skipped where it is read
        f'echo \'{{"blob": "{"x" * 2000}"}}\' >&3; sleep 2.5; '  # too large: refused once, then dropped
        'echo \'{"stage": "load", "percentage": 50}\' >&3; sleep 2.5'
    )
    wrapper = run(bridge, "bad-line-1", "sh", "-c", script)
    _, err = wrapper.communicate(timeout=60)
    assert wrapper.returncode == 0, err
    assert b"status is not one of" in err and err.count(b"heartbeat refused") == 1 and b"dropped" in err
    record = execution(bridge, "bad-line-1")
    assert record["progress"] == {"stage": "load", "percentage": 50} and record["status"] == "completed"


def test_it_says_when_heartbeats_recover_after_an_outage(live_bridge, tmp_path):
    port, up = free_port(), tmp_path / "bridge-is-up"
    wrapper = run(
        None,
        "outage-1",
        "sh",
        "-c",
        f"until [ -e {up} ]; do sleep 0.2; done; sleep 2.5",
        url=f"http://127.0.0.1:{port}",
    )
    read_until(wrapper, b"failed (no answer)")
    bridge = live_bridge(workers=1, port=port)
    up.touch()
    _, err = wrapper.communicate(timeout=60)
    assert wrapper.returncode == 0 and b"recovered after" in err
    wait_for(lambda: execution(bridge, "outage-1").get("status") == "completed", "the completion")
