"""``heartbeat-bridge alert-log``: a webhook receiver printing Alertmanager's notifications.

The example ``alerts/alertmanager.yml`` posts every receiver to ``127.0.0.1:5001``; this
prints what arrives there, one line per alert naming its task and execution, so the demo
and the Compose stack show their notifications without a pager.
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ..service.config import ConfigError, parse_bind

__all__ = ["AlertLog", "alert_line", "main"]

DEFAULT_BIND = "127.0.0.1:5001"
#: The labels that say what an alert is about, in the order printed.
SUBJECT_LABELS = ("task_name", "execution_id", "container_name", "reason", "instance")


def alert_line(alert: dict[str, Any], receiver: str) -> str:
    """Return the line printed for one alert of a notification to ``receiver``."""
    labels = alert.get("labels", {})
    subject = " ".join(f"{name}={labels[name]}" for name in SUBJECT_LABELS if labels.get(name))
    return (
        f"ALERT {alert.get('status', '?'):8} {labels.get('alertname', '?')} "
        f"{subject or '(the bridge)'} -> {receiver or 'default'}"
    )


class AlertLog(BaseHTTPRequestHandler):
    """Prints each alert of each notification posted to it; the path names the receiver."""

    def do_POST(self) -> None:
        try:
            payload = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            alerts = payload.get("alerts", []) if isinstance(payload, dict) else []
        except ValueError:
            self.send_error(400, "not a notification")
            return
        for alert in alerts:
            print(f"  {alert_line(alert, self.path.strip('/'))}", flush=True)
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    """Serve until interrupted; returns the exit status (2 for a bad ``--bind``)."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="heartbeat-bridge alert-log",
        description="A webhook receiver for Alertmanager: prints each notification's alerts, one line each, "
        "naming the task and execution.",
    )
    parser.add_argument("--bind", default=DEFAULT_BIND, help="HOST:PORT to listen on (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        host, port = parse_bind("--bind", args.bind).rsplit(":", 1)
    except ConfigError as exc:
        print(f"heartbeat-bridge alert-log: {exc}", file=sys.stderr)
        return 2
    server = ThreadingHTTPServer((host.strip("[]"), int(port)), AlertLog)
    print(f"alert-log listening on {args.bind}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
