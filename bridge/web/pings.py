"""Healthchecks pings, as its docs and clients send them: a changed base URL is the migration.

    GET|HEAD|POST /ping/<uuid>[/start|/fail|/log|/<exit status 0-255>][?rid=<uuid>]
    GET|HEAD|POST /ping/<ping key>/<slug>[/start|/fail|/log|/<exit status>][?rid=...&create=1]

A uuid names the task declared with that ``ping_uuid``; a slug is a task name, under a ping
key of ``BRIDGE_PING_KEYS``. Answers are Healthchecks' own: ``OK`` in plain text with a
``Ping-Body-Limit`` header, ``Created`` (201) for a task made by ``?create=1``, ``not found``
(404), ``invalid url format`` and ``invalid uuid format`` (400). The request body (its first
``BRIDGE_PING_BODY_BYTES``) is the run's log line or its failure's error message. Pings
need no bearer token: as at Healthchecks, the uuid or the ping key is the secret.
"""

from __future__ import annotations

import re

from flask import Blueprint, Response, request

from ..core.declarations import TaskDeclaration
from ..core.events import RunReport
from ..store import CapacityError, StoreUnavailable
from .extension import current_bridge

__all__ = ["bp"]

bp = Blueprint("pings", __name__)

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_SLUG = re.compile(r"[-a-zA-Z0-9_]+")
_ACTIONS = {"": "success", "start": "start", "fail": "failure", "log": "log"}
MAX_EXIT_STATUS = 255


class _Refused(Exception):
    """A ping answered with Healthchecks' words for it: ``status``, ``text``, and the reason counted."""

    def __init__(self, status: int, text: str, reason: str):
        super().__init__(text)
        self.status, self.text, self.reason = status, text, reason


def _text(status: int, text: str) -> Response:
    response = Response(text, status=status, content_type="text/plain; charset=utf-8")
    response.headers["Ping-Body-Limit"] = str(current_bridge().settings.ping_body_bytes)
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response


def _action(segment: str) -> tuple[str, int | None]:
    """Return the run phase and exit status a URL's last segment names. Raises :class:`_Refused`."""
    if segment in _ACTIONS:
        return _ACTIONS[segment], None
    if segment.isascii() and segment.isdigit() and len(segment) <= 10:
        status = int(segment)
        if status > MAX_EXIT_STATUS:
            raise _Refused(400, "invalid url format", "invalid_field")
        return ("success" if status == 0 else "failure"), status
    raise _Refused(404, "not found", "not_found")


def _target(path: str) -> tuple[str | None, str | None, str, int | None]:
    """Return (check uuid, (ping key, slug) joined by '/', phase, exit status) of a ping path."""
    parts = path.split("/")
    if _UUID.fullmatch(parts[0]) and len(parts) <= 2:
        phase, status = _action(parts[1] if len(parts) == 2 else "")
        return parts[0].lower(), None, phase, status
    if len(parts) in (2, 3) and _SLUG.fullmatch(parts[0]) and _SLUG.fullmatch(parts[1]):
        phase, status = _action(parts[2] if len(parts) == 3 else "")
        if parts[1] != parts[1].lower():
            raise _Refused(400, "invalid url format", "invalid_field")
        return None, f"{parts[0]}/{parts[1]}", phase, status
    raise _Refused(404, "not found", "not_found")


@bp.route("/ping/<path:path>", methods=["GET", "HEAD", "POST"])
def ping(path: str):
    """Record a ping as a run of its task: a start, a success, a failure, or a log line."""
    bridge = current_bridge()
    monitor = bridge.monitor
    try:
        check, slug, phase, exit_status = _target(path)
        run_id = request.args.get("rid")
        if run_id is not None:
            if not _UUID.fullmatch(run_id):
                raise _Refused(400, "invalid uuid format", "invalid_field")
            run_id = run_id.lower()
        try:
            body = request.stream.read(bridge.settings.ping_body_bytes) if request.method == "POST" else b""
        except OSError:  # a body that stalled past the read deadline (bridge.server.worker)
            raise _Refused(408, "request timeout", "timeout") from None
        created = False
        if check is not None:
            task = monitor.task_by_ping_uuid(check)
            if task is None:
                raise _Refused(404, "not found", "not_found")
        else:
            assert slug is not None
            ping_key, task = slug.split("/")
            if ping_key not in bridge.settings.ping_keys:
                raise _Refused(404, "not found", "not_found")
            if monitor.store.get_task(task) is None:
                if request.args.get("create") != "1":
                    raise _Refused(404, "not found", "not_found")
                try:
                    monitor.declare_task(task, TaskDeclaration(), "api")
                except CapacityError:  # as Healthchecks answers a check beyond the account's limit
                    raise _Refused(404, "not found", "capacity") from None
                created = True
        message = body.decode("utf-8", "replace").strip() or None
        if phase == "failure" and message is None and exit_status is not None:
            message = f"exited with code {exit_status}"
        monitor.report(RunReport(task, phase, "hc", run_id, message, exit_status))
    except _Refused as refused:
        monitor.reject("ping", refused.reason)
        return _text(refused.status, refused.text)
    except CapacityError:  # a new run beyond BRIDGE_MAX_EXECUTIONS: clients retry this
        monitor.reject("ping", "capacity")
        response = _text(429, "rate limit exceeded")
        response.headers["Retry-After"] = "5"
        return response
    except StoreUnavailable:
        response = _text(503, "service unavailable")
        response.headers["Retry-After"] = "5"
        return response
    return _text(201, "Created") if created else _text(200, "OK")
