"""gunicorn settings, read from the same ``BRIDGE_*`` variables as the app.

Used as ``gunicorn -c python:bridge.server.gunicorn_conf 'bridge.web:create_app()'``; the
``heartbeat-bridge serve`` command does exactly that.
"""

import ctypes
import ctypes.util
import os

from gunicorn.arbiter import Arbiter
from gunicorn.workers.base import Worker

from bridge import __version__
from bridge.service.config import describe, load_settings, unknown_variables
from bridge.web.extension import EXTENSION_KEY

#: Buffers at least this large come from a mapping of their own, returned to the system when freed.
LARGE_BUFFER_BYTES = 1024 * 1024
_M_MMAP_THRESHOLD = -3  # glibc's mallopt() parameter number


def _return_large_buffers() -> None:
    """Keep glibc's malloc from holding on to a scrape's buffers after it answered.

    A scrape of many executions builds its text (a hundred megabytes at 100,000) in whichever
    request thread serves it. glibc's threshold for giving a buffer its own mapping rises to
    the size of the last one freed, so the next scrape's buffers come from that thread's heap
    and stay resident there, thread after thread; a fixed threshold returns each one. Set in
    the master, before the workers fork. Does nothing where malloc is not glibc's, or where
    ``MALLOC_MMAP_THRESHOLD_`` already says otherwise.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, LARGE_BUFFER_BYTES)


_return_large_buffers()

# The master reports unknown variables once, in gunicorn's log format (when_ready); the
# workers it forks inherit that they were reported.
_settings = load_settings(warn_unknown=False)

bind = [_settings.bind]
workers = _settings.workers
# gthread, reading each request whole (under a deadline) before a thread takes it
worker_class = "bridge.server.worker.BridgeWorker"
threads = _settings.threads
timeout = 30
graceful_timeout = 10
keepalive = 5
accesslog = None
errorlog = "-"
loglevel = _settings.log_level.lower()
proc_name = "heartbeat-bridge"
# One fixed socket path per user would collide between bridges on one host; unused.
control_socket_disable = True


def when_ready(server: Arbiter) -> None:
    """Say once, in gunicorn's log, what the bridge runs with."""
    from bridge.telemetry.tracing import exporter_names

    exporters = exporter_names()
    server.log.info(
        "Heartbeat Bridge %s: %s, tracing %s",
        __version__,
        describe(_settings),
        f"on ({', '.join(exporters)})" if exporters else "off",
    )
    for warning in unknown_variables(os.environ):
        server.log.warning("%s", warning)


def post_worker_init(worker: Worker) -> None:
    """Start this worker's tracing and reaper: after the fork, so nothing is inherited."""
    bridge = getattr(worker.wsgi, "extensions", {}).get(EXTENSION_KEY)
    if bridge is not None:  # the benchmark's bare app runs under this same configuration
        bridge.start()


def worker_exit(server: Arbiter, worker: Worker) -> None:
    """Stop the reaper and flush the spans this worker still holds."""
    app = getattr(worker, "wsgi", None)
    if app is not None and EXTENSION_KEY in getattr(app, "extensions", {}):
        app.extensions[EXTENSION_KEY].stop()
