"""gunicorn settings, read from the same ``BRIDGE_*`` variables as the app.

Used as ``gunicorn -c python:bridge.server.gunicorn_conf 'bridge.web:create_app()'``; the
``heartbeat-bridge serve`` command does exactly that.
"""

from bridge.service.config import load_settings
from bridge.web.extension import EXTENSION_KEY

_settings = load_settings()

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
