"""``heartbeat-run [options] -- CMD ARGS...``: run any command under heartbeats.

Standard library only (with :mod:`bridge.client`). The wrapper heartbeats while the
command runs, forwards SIGTERM, SIGINT and friends to it, then sends the completion with
its exit code and the tail of its stderr, and exits with its exit code (128 + N when a
signal N killed it). It reads the seed's variables: ``TASK_EXECUTION_ID``,
``API_BASE_URL`` and ``HOSTNAME``.

The command reports progress without importing anything: each JSON object it writes as
one line to file descriptor ``$HEARTBEAT_PROGRESS_FD`` (always 3) is merged into the
progress, and a ``"status"`` key in it sets the status::

    echo '{"stage": "load", "percentage": 40}' >&3

A line that is not a JSON object, or whose ``"status"`` is not ``running``, ``completed``
or ``failed``, is reported and skipped; a line the bridge refuses (too large, too deep) is
dropped from the progress once refused, so later heartbeats go through.

It also gets ``TRACEPARENT`` naming the bridge's execution span, so spans it exports
itself nest under that span. Once the command has exited, heartbeats stop and the
completion is retried for at most ``--completion-timeout`` seconds; SIGTERM or SIGINT
ends that wait at once.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from typing import IO

from .. import __version__
from .client import DEFAULT_INTERVAL_SECONDS, HeartbeatClient

__all__ = ["main"]

log = logging.getLogger("bridge.run")

PROGRESS_FD = 3
PROGRESS_FD_VARIABLE = "HEARTBEAT_PROGRESS_FD"
DEFAULT_API_BASE_URL = "http://localhost:8000"  # the seed's default
DEFAULT_STDERR_TAIL_BYTES = 4096
DEFAULT_COMPLETION_TIMEOUT_SECONDS = 30.0
REPORTED_STATUSES = ("running", "completed", "failed")
#: Signals that, once the command has exited, end the wait for the completion's acknowledgement.
ABANDON_SIGNALS = (signal.SIGTERM, signal.SIGINT)
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
EXIT_USAGE = 2
EXIT_CANNOT_RUN = 127
PUMP_JOIN_SECONDS = 5.0


def _parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="heartbeat-run",
        usage="heartbeat-run [options] -- CMD [ARGS...]",
        description="Run a command with heartbeats to Heartbeat Bridge and a completion carrying "
        f"its exit code. Progress: JSON lines written to fd {PROGRESS_FD}.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--api-base-url",
        default=env("API_BASE_URL", DEFAULT_API_BASE_URL),
        help="the bridge (default: $API_BASE_URL or %(default)s)",
    )
    parser.add_argument(
        "--execution-id", default=env("TASK_EXECUTION_ID"), help="execution id (default: $TASK_EXECUTION_ID)"
    )
    parser.add_argument(
        "--container-id", default=env("HOSTNAME", "unknown-container"), help="container id (default: $HOSTNAME)"
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=DEFAULT_INTERVAL_SECONDS,
        help="seconds between heartbeats (default: %(default)s)",
    )
    parser.add_argument(
        "--task-name",
        default=env("TASK_NAME"),
        help="the task this run is a run of (default: $TASK_NAME; none: shown as unknown)",
    )
    parser.add_argument(
        "--task-type", default=env("TASK_TYPE"), help="the task's type, such as crawler or etl (default: $TASK_TYPE)"
    )
    parser.add_argument(
        "--max-runtime", type=float, help="seconds this run may take, declared as max_runtime_seconds (default: none)"
    )
    parser.add_argument("--token", default=env("BRIDGE_TOKEN"), help="bearer token (default: $BRIDGE_TOKEN)")
    parser.add_argument(
        "--stderr-tail",
        type=int,
        default=DEFAULT_STDERR_TAIL_BYTES,
        help="bytes of stderr sent as the error message (default: %(default)s)",
    )
    parser.add_argument(
        "--completion-timeout",
        type=float,
        default=DEFAULT_COMPLETION_TIMEOUT_SECONDS,
        help="once the command exited, seconds to retry the completion (default: %(default)s)",
    )
    return parser


def _pump_stderr(stream: IO[bytes], tail: collections.deque[int]) -> None:
    """Copy the command's stderr to ours, keeping its last bytes."""
    for chunk in iter(lambda: stream.read1(65536), b""):  # type: ignore[attr-defined]  # a BufferedReader
        sys.stderr.buffer.write(chunk)
        sys.stderr.buffer.flush()
        tail.extend(chunk)


def _read_progress(fd: int, client: HeartbeatClient) -> None:
    """Apply each JSON line the command writes to the progress pipe."""
    with os.fdopen(fd, "rb") as lines:
        for line in lines:
            try:
                update = json.loads(line)
            except ValueError:
                log.warning("ignoring a progress line that is not JSON: %r", line[:200])
                continue
            if not isinstance(update, dict):
                log.warning("ignoring a progress line that is not an object: %r", line[:200])
                continue
            status = update.pop("status", client.task_status)
            if status not in REPORTED_STATUSES:
                log.warning(
                    "ignoring a progress line whose status is not one of %s: %r",
                    ", ".join(REPORTED_STATUSES),
                    line[:200],
                )
                continue
            client.update_status(status, update)


def _describe(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


class _SignalRelay:
    """Passes the signals heartbeat-run receives on to the command: held until it starts, and,
    once it has exited, taken as the word to stop waiting for the bridge."""

    def __init__(self, client: HeartbeatClient) -> None:
        self.client = client
        self.child: subprocess.Popen[bytes] | None = None
        self.held: list[int] = []
        self.exited = threading.Event()

    def forward(self, signum: int, _frame: object) -> None:
        if self.exited.is_set():  # nothing left to pass it to
            if signum in ABANDON_SIGNALS:
                self.client.abandon()
        elif self.child is not None:
            self.child.send_signal(signum)
        else:
            self.held.append(signum)

    def started(self, child: subprocess.Popen[bytes]) -> None:
        """Pass on to ``child`` the signals that came before it started, and the rest as they come."""
        self.child = child
        for signum in self.held:
            child.send_signal(signum)


def main(argv: list[str] | None = None) -> int:
    """Run the wrapped command; returns its exit code (2 for a usage error, 127 if it cannot start)."""
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    args, command = _parser().parse_args(argv[:split]), argv[split + 1 :]  # --help and --version exit here
    if not command:
        _parser().print_usage(sys.stderr)
        print("heartbeat-run: give the command after --", file=sys.stderr)
        return EXIT_USAGE
    if not args.execution_id:
        print("heartbeat-run: set TASK_EXECUTION_ID or --execution-id", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=logging.INFO, format="heartbeat-run: %(levelname)s %(message)s")

    client = HeartbeatClient(
        args.api_base_url,
        args.execution_id,
        args.container_id,
        args.interval,
        token=args.token,
        task_name=args.task_name,
        task_type=args.task_type,
        max_runtime_seconds=args.max_runtime,
        completion_deadline=args.completion_timeout,
    )
    read_fd, write_fd = os.pipe()
    env = dict(os.environ, **{PROGRESS_FD_VARIABLE: str(PROGRESS_FD), "TRACEPARENT": client.execution_traceparent()})
    # Handlers go in before the command starts: a signal in between is held, then passed on.
    relay = _SignalRelay(client)
    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, relay.forward)
    try:
        # Its own session: a terminal's Ctrl-C reaches the command once, through us.
        child = subprocess.Popen(
            command,
            env=env,
            stderr=subprocess.PIPE,
            start_new_session=True,
            pass_fds=(write_fd, PROGRESS_FD),
            preexec_fn=lambda: os.dup2(write_fd, PROGRESS_FD),
        )
    except OSError as exc:
        os.close(read_fd)
        os.close(write_fd)
        client.start()
        client.send_completion(False, error_message=f"cannot run {command[0]}: {exc}", exit_code=EXIT_CANNOT_RUN)
        client.stop()
        print(f"heartbeat-run: cannot run {command[0]}: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    os.close(write_fd)  # the command holds the only writer: its exit ends the progress stream
    relay.started(child)
    tail: collections.deque[int] = collections.deque(maxlen=max(0, args.stderr_tail))
    pumps = [
        threading.Thread(target=_pump_stderr, args=(child.stderr, tail), daemon=True),
        threading.Thread(target=_read_progress, args=(read_fd, client), daemon=True),
    ]
    for pump in pumps:
        pump.start()
    client.start()
    returncode = child.wait()
    relay.exited.set()
    for pump in pumps:  # a daemon the command left behind may hold the pipes open
        pump.join(PUMP_JOIN_SECONDS)

    exit_code = returncode if returncode >= 0 else 128 - returncode
    error = None
    if returncode != 0:
        error = bytes(tail).decode("utf-8", errors="replace").strip() or _describe(returncode)
    client.stop()
    client.flush()  # the last progress lines may have come after the last heartbeat
    client.send_completion(returncode == 0, error_message=error, exit_code=exit_code)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
