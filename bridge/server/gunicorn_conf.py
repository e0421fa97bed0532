"""gunicorn settings, read from the same ``BRIDGE_*`` variables as the app.

Used as ``gunicorn -c python:bridge.server.gunicorn_conf 'bridge.web:create_app()'``; the
``heartbeat-bridge serve`` command does exactly that.
"""

import os

from bridge import __version__
from bridge.service.config import describe, load_settings, unknown_variables
from bridge.web.extension import EXTENSION_KEY

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


def when_ready(server):
    """Say once, in gunicorn's log, what the bridge runs with."""
    from bridge.telemetry.tracing import exporter_names

    exporters = exporter_names()
    server.log.info("Heartbeat Bridge %s: %s, tracing %s", __version__, describe(_settings),
                    f"on ({', '.join(exporters)})" if exporters else "off")
    for warning in unknown_variables(os.environ):
        server.log.warning("%s", warning)


def post_worker_init(worker):
    """Start this worker's tracing and reaper: after the fork, so nothing is inherited."""
    bridge = getattr(worker.wsgi, "extensions", {}).get(EXTENSION_KEY)
    if bridge is not None:  # the benchmark's bare app runs under this same configuration
        bridge.start()


def worker_exit(server, worker):
    """Stop the reaper and flush the spans this worker still holds."""
    app = getattr(worker, "wsgi", None)
    if app is not None and EXTENSION_KEY in getattr(app, "extensions", {}):
        app.extensions[EXTENSION_KEY].stop()
