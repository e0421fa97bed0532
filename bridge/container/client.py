"""A heartbeat client for task containers: standard library only, one file.

Copy this file into a task image (it imports nothing from the rest of the package), or
``from bridge.client import HeartbeatClient``. It keeps the constructor and methods of the
seed document's ``HeartbeatClient`` (``start``, ``stop``, ``update_status``,
``send_completion``) and fixes its flaws: it is a context manager (a block that ends with
no completion sent sends a successful one, or a failed one with the exception that left
it); the first heartbeat
goes out at once and another on every status change; ``stop()`` returns at once; failed
heartbeats are retried with exponential backoff and jitter; the completion is retried
until the bridge acknowledges it (the bridge deduplicates, so a retry is safe); it logs
through :mod:`logging`; it installs no signal handlers unless asked to.

    with HeartbeatClient("http://bridge:8000", execution_id, os.environ["HOSTNAME"]) as hb:
        hb.update_status("running", {"stage": "download", "percentage": 10})
        ...
        hb.send_completion(True, result_data={"records": 1000})
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from types import TracebackType
from typing import Any, Literal

__all__ = ["HeartbeatClient", "execution_traceparent"]

log = logging.getLogger("bridge.client")

DEFAULT_INTERVAL_SECONDS = 30
DEFAULT_TIMEOUT_SECONDS = 10.0
DEFAULT_COMPLETION_DEADLINE_SECONDS = 300.0
MAX_BACKOFF_SECONDS = 60.0
STOP_WAIT_SECONDS = 1.0
_RETRYABLE_CLIENT_ERRORS = (408, 429)
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")


def execution_traceparent(execution_id: str, traceparent: str | None = None) -> str:
    """Return the W3C ``traceparent`` of the bridge's span for ``execution_id``.

    The bridge derives that span's ids from the execution id (docs/design.md, Traces), so a
    task knows them before the span exists and can parent its own spans under it. When
    the execution joined an outer trace through ``traceparent``, that trace is used.
    """
    canonical = execution_id.lower() if _UUID.fullmatch(execution_id) else execution_id
    match = _TRACEPARENT.fullmatch(traceparent or "")
    if match and match.group(1) != "0" * 32:
        trace_id = match.group(1)
    elif _UUID.fullmatch(canonical):
        trace_id = canonical.replace("-", "")
    else:
        trace_id = hashlib.sha256(canonical.encode()).hexdigest()[:32]
    span_id = hashlib.sha256(f"span:{canonical}".encode()).hexdigest()[:16]
    return f"00-{trace_id}-{span_id}-01"


def _backoff(failures: int, cap: float) -> float:
    """Return the wait after ``failures`` failures in a row: exponential, full jitter."""
    return random.uniform(0.5, 1.0) * min(cap, 2.0 ** (failures - 1))


class HeartbeatClient:
    """Posts heartbeats from a background thread and the completion when asked."""

    def __init__(
        self,
        api_base_url: str,
        execution_id: str,
        container_id: str,
        heartbeat_interval: float = DEFAULT_INTERVAL_SECONDS,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        task_name: str | None = None,
        task_type: str | None = None,
        max_runtime_seconds: float | None = None,
        traceparent: str | None = None,
        handle_signals: bool = False,
        completion_deadline: float = DEFAULT_COMPLETION_DEADLINE_SECONDS,
    ):
        """Prepare a client; nothing is sent before :meth:`start`.

        ``traceparent`` defaults to the ``TRACEPARENT`` environment variable; ``token`` is
        sent as a bearer token. With ``handle_signals`` SIGTERM and SIGINT stop the client
        and exit with 128 + the signal number (the seed always did this; here it is asked for).
        """
        self.api_base_url = api_base_url.rstrip("/")
        self.execution_id = execution_id
        self.container_id = container_id
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_url = f"{self.api_base_url}/api/v1/monitoring/heartbeat"
        self.completion_url = f"{self.api_base_url}/api/v1/monitoring/completion"
        self.token = token
        self.timeout = timeout
        self.completion_deadline = completion_deadline
        self.traceparent = traceparent if traceparent is not None else os.environ.get("TRACEPARENT")
        self._extras = {
            k: v
            for k, v in (
                ("task_name", task_name),
                ("task_type", task_type),
                ("max_runtime_seconds", max_runtime_seconds),
            )
            if v is not None
        }
        self.task_status = "running"
        self.task_progress: dict[str, Any] = {}
        self.completed = False
        #: the status and progress of the last heartbeat the bridge accepted
        self._accepted: tuple[str, dict[str, Any]] = ("running", {})
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._abandoned = threading.Event()
        self._thread: threading.Thread | None = None
        if handle_signals:
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)

    @property
    def is_running(self) -> bool:
        """True while the heartbeat thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def execution_traceparent(self) -> str:
        """Return the ``traceparent`` under which this execution's own spans belong."""
        return execution_traceparent(self.execution_id, self.traceparent)

    def __enter__(self) -> HeartbeatClient:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        # A block that ends without a completion must still end the run: left alone, the
        # execution would go lost and page someone for a task that did its work.
        try:
            if not self.completed and not isinstance(exc, GeneratorExit):
                if exc is None or (isinstance(exc, SystemExit) and exc.code in (0, None)):
                    self.send_completion(True)
                else:
                    self.send_completion(False, error_message=f"{type(exc).__name__}: {exc}")
        finally:
            self.stop()
        return False

    def start(self) -> None:
        """Start heartbeating; the first heartbeat goes out at once. A second call does nothing."""
        if self.is_running:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)
        self._thread.start()
        log.info("heartbeats started for execution %s", self.execution_id)

    def stop(self) -> None:
        """Stop heartbeating; returns at once (waits at most a second for a request in flight)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(STOP_WAIT_SECONDS)
        log.info("heartbeats stopped for execution %s", self.execution_id)

    def update_status(self, status: str, progress: dict[str, Any] | None = None) -> None:
        """Set the status (``running``, ``completed``, ``failed``) and merge ``progress`` in.

        A change of status is reported at once; progress goes with the next heartbeat.
        """
        with self._lock:
            changed = status != self.task_status
            self.task_status = status
            if progress:
                self.task_progress.update(progress)
        if changed:
            self._wake.set()

    def abandon(self) -> None:
        """Stop retrying a completion: :meth:`send_completion` returns False at once.

        For a process told to stop while its bridge is unreachable; safe from a signal handler.
        """
        self._abandoned.set()

    def flush(self) -> bool:
        """Send a heartbeat now, with the current status and progress; returns True if accepted."""
        return self._send_heartbeat()

    def send_completion(
        self,
        success: bool,
        result_data: dict[str, Any] | None = None,
        error_message: str | None = None,
        exit_code: int | None = None,
    ) -> bool:
        """Report the end of the task; retries until acknowledged or ``completion_deadline``.

        Returns True once the bridge acknowledged it (a duplicate counts), False when it
        refused it (4xx), the deadline passed, or :meth:`abandon` was called. Heartbeats stop
        once it is acknowledged.
        """
        payload = {
            "execution_id": self.execution_id,
            "container_id": self.container_id,
            "success": success,
            "result_data": result_data or {},
            "error_message": error_message,
        }
        if exit_code is not None:
            payload["exit_code"] = exit_code
        if "task_name" in self._extras:
            payload["task_name"] = self._extras["task_name"]
        deadline = time.monotonic() + self.completion_deadline
        failures = 0
        while True:
            remaining = deadline - time.monotonic()
            status, body = self._post(self.completion_url, payload, min(self.timeout, max(1.0, remaining)))
            if status == 200 and body.get("status") == "ok":
                self.completed = True
                self._stopping.set()
                self._wake.set()
                log.info("completion acknowledged (success=%s)", success)
                return True
            if 400 <= status < 500 and status not in _RETRYABLE_CLIENT_ERRORS:
                log.error("completion refused by %s with %s: %s", self.completion_url, status, body)
                return False
            failures += 1
            wait = _backoff(failures, MAX_BACKOFF_SECONDS)
            if time.monotonic() + wait > deadline:
                log.error(
                    "completion not acknowledged by %s after %d attempts in %.0fs; giving up",
                    self.completion_url,
                    failures,
                    self.completion_deadline,
                )
                return False
            log.warning(
                "completion not acknowledged by %s (%s); retrying in %.1fs",
                self.completion_url,
                status or "no answer",
                wait,
            )
            if self._abandoned.wait(wait):
                log.error(
                    "completion abandoned after %d attempts: %s did not acknowledge it", failures, self.completion_url
                )
                return False

    def _loop(self) -> None:
        failures, failing_since = 0, 0.0
        while not self._stopping.is_set():
            if self._send_heartbeat():
                if failures:
                    log.info(
                        "heartbeats to %s recovered after %d failed in %.0fs",
                        self.heartbeat_url,
                        failures,
                        time.monotonic() - failing_since,
                    )
                failures, wait = 0, self.heartbeat_interval
            else:
                failures += 1
                failing_since = failing_since if failures > 1 else time.monotonic()
                wait = _backoff(failures, self.heartbeat_interval)
            self._wake.wait(wait)
            self._wake.clear()

    def _send_heartbeat(self) -> bool:
        """Post one heartbeat; returns False when it should be retried soon."""
        with self._lock:
            sent = (self.task_status, dict(self.task_progress))
            payload = {
                "execution_id": self.execution_id,
                "container_id": self.container_id,
                "status": sent[0],
                "progress": sent[1],
                "timestamp": int(time.time()),
                "interval_seconds": self.heartbeat_interval,
                **self._extras,
            }
        if self.traceparent:
            payload["traceparent"] = self.traceparent
        status, body = self._post(self.heartbeat_url, payload)
        if status == 200 and body.get("status") == "ok":
            self._accepted = sent
            log.debug("heartbeat sent")
            return True
        if 400 <= status < 500 and status not in _RETRYABLE_CLIENT_ERRORS:
            # The same payload would be refused again, and so would every later one carrying
            # it: go back to what was last accepted, say so, and keep the cadence.
            with self._lock:
                dropped = (self.task_status, self.task_progress) != self._accepted
                self.task_status, self.task_progress = self._accepted[0], dict(self._accepted[1])
            log.error(
                "heartbeat refused by %s with %s: %s%s",
                self.heartbeat_url,
                status,
                body,
                "; dropped the status and progress set since the last accepted one" if dropped else "",
            )
            return True
        log.warning("heartbeat to %s failed (%s)", self.heartbeat_url, status or "no answer")
        return False

    def _post(self, url: str, payload: dict[str, Any], timeout: float | None = None) -> tuple[int, dict[str, Any]]:
        """Return (HTTP status, decoded body); status 0 when no answer came within ``timeout``
        (default: the client's)."""
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as response:
                return response.status, _json(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, _json(exc.read())
        except (OSError, ValueError) as exc:  # URLError, timeouts, resets, a bad URL
            log.debug("no answer from %s: %s", url, exc)
            return 0, {}

    def _on_signal(self, signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        self.stop()
        sys.exit(128 + signum)


def _json(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
