"""The tasks API: declarations (``PUT``, ``DELETE``) and each task's state as JSON."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import MethodNotAllowed

from ..core import inputs
from ..core.declarations import TaskDeclaration, parse_declaration
from ..core.errors import BridgeError, Conflict, Forbidden, InvalidInput, NotFound
from ..core.tasks import Task, effective_declaration, is_paused, status_at
from .errors import refusals
from .extension import Bridge, current_bridge
from .ingest import json_body

__all__ = ["bp", "task_json"]

bp = Blueprint("tasks", __name__, url_prefix="/api/v1/tasks")
refusals(bp, "tasks")

#: Record fields that are bookkeeping, not part of the public task object.
_INTERNAL = frozenset(
    {
        "declarations",
        "version",
        "deadline_at",
        "recent",
        "declared_at",
        "running",
        "running_ids",
        "created_by_ping_key",
        "failing",
    }
)


def task_json(task: Task, now: float) -> dict[str, Any]:
    """Return the public JSON object of ``task`` at ``now`` (times in unix seconds)."""
    declared, source = effective_declaration(task)
    # an undeclared task: the defaults, and no schedule to be late for
    fields = (
        declared.to_dict()
        if declared is not None
        else {**TaskDeclaration().to_dict(), "timezone": None, "start_grace_seconds": None, "early_grace_seconds": None}
    )
    # the ping key whose slug URLs reach it: the one declared, else the one that created it
    fields["ping_key"] = fields.get("ping_key") or task.created_by_ping_key
    public = {k: v for k, v in vars(task).items() if k not in _INTERNAL}
    return {
        **public,
        **fields,
        "status": status_at(task, now),
        "declared_by": source,
        "paused": is_paused(task, now),
        "paused_until": task.paused_until if is_paused(task, now) else None,
        "running": task.running_ids,
        "running_count": task.running,
        "next_run_deadline_at": None if task.paused else task.deadline_at,
        "last_executions": [run._asdict() for run in reversed(task.recent)],
    }


def _task_name(name: str, refusal: type[BridgeError] = NotFound) -> str:
    """Return ``name`` when it can name a task; else raise ``refusal`` (a read finds no such task)."""
    try:
        inputs.task_name(name, required=True)
    except InvalidInput as exc:
        raise refusal(exc.message, "task_name") from None
    return name


#: The actions on a task, after its name in the URL; only POST takes them.
_ACTIONS = ("/pause", "/resume")


@bp.before_request
def _action_methods() -> None:
    # A task's name may hold "/": /api/v1/tasks/<name>/pause is the pause action whatever the
    # method, never a task named "<name>/pause", so its other methods are 405, not a task.
    path = request.path
    if path.endswith(_ACTIONS) and request.method != "POST":
        raise MethodNotAllowed(valid_methods=["POST"])


@bp.get("")
def list_tasks() -> ResponseReturnValue:
    """List every task the bridge knows, declared or seen running, by name."""
    bridge = current_bridge()
    bridge.authorizer.read(request.headers.get("Authorization"))
    now = bridge.monitor.clock()
    return jsonify(tasks=[task_json(task, now) for task in bridge.monitor.store.tasks()])


@bp.get("/<path:name>")
def get_task(name: str) -> ResponseReturnValue:
    """Return one task; 404 when the bridge knows no task of that name."""
    bridge = current_bridge()
    bridge.authorizer.read(request.headers.get("Authorization"))
    task = bridge.monitor.store.get_task(_task_name(name))
    if task is None:
        raise NotFound(f"no task {name[:128]!r}", "task_name")
    return jsonify(task_json(task, bridge.monitor.clock()))


def _declare(name: str, withdraw: bool = False) -> ResponseReturnValue:
    """Declare task ``name`` from the request's JSON body, or withdraw the API's declaration."""
    bridge = current_bridge()
    _fleet(bridge)
    name = _task_name(name, InvalidInput)
    declared = None if withdraw else parse_declaration(json_body(bridge.settings.max_body_bytes), name)
    current = bridge.monitor.store.get_task(name)
    if current is not None and current.declarations.get("file") is not None:
        raise Conflict(f"task {name!r} is declared in BRIDGE_TASKS_FILE: change it there", "task_name")
    if declared is None and (current is None or current.declarations.get("api") is None):
        raise NotFound(f"task {name!r} has no declaration made through the API", "task_name")
    outcome = bridge.monitor.declare_task(name, declared)
    task = outcome.record or bridge.monitor.store.get_task(name)
    return jsonify(task_json(task, bridge.monitor.clock()) if task is not None else {"task_name": name})


#: The longest pause: a year (a task paused for longer should be withdrawn instead).
MAX_PAUSE_SECONDS = 366 * 86_400.0


@bp.post("/<path:name>/pause")
def pause_task(name: str) -> ResponseReturnValue:
    """Pause task ``name``: nothing is expected of it and nothing alerts. An optional JSON body
    ``{"seconds": N}`` or ``{"until": <unix seconds>}`` ends the pause by itself; without one
    it lasts until ``/resume`` or the task's next run."""
    bridge = current_bridge()
    _fleet(bridge)
    name = _task_name(name)
    body = json_body(bridge.settings.max_body_bytes) if request.content_length else {}
    body = inputs.object_of(body, "body")
    unknown = sorted(set(body) - {"seconds", "until"})
    if unknown or ("seconds" in body and "until" in body):
        raise InvalidInput(
            "the body may hold seconds or until (unix seconds), not both", unknown[0] if unknown else "until"
        )
    now = bridge.monitor.clock()
    seconds = inputs.number(body.get("seconds"), "seconds", 1, MAX_PAUSE_SECONDS)
    until = inputs.number(body.get("until"), "until", now + 1, now + MAX_PAUSE_SECONDS)
    task = bridge.monitor.pause(name, now + seconds if seconds is not None else until)
    return jsonify(task_json(task, bridge.monitor.clock()))


@bp.post("/<path:name>/resume")
def resume_task(name: str) -> ResponseReturnValue:
    """Resume task ``name`` now; its runs are expected again from its next slot."""
    bridge = current_bridge()
    _fleet(bridge)
    task = bridge.monitor.resume(_task_name(name))
    return jsonify(task_json(task, bridge.monitor.clock()))


def _fleet(bridge: Bridge) -> None:
    """Raise unless the request's token may act on tasks: a fleet token, not an execution's."""
    if not bridge.authorizer.ingest(request.headers.get("Authorization")).any_execution:
        raise Forbidden("acting on tasks needs a fleet token, not an execution's", "Authorization")


@bp.put("/<path:name>")
def put_task(name: str) -> ResponseReturnValue:
    """Declare task ``name`` (a JSON object of the declaration's fields); idempotent."""
    return _declare(name)


@bp.delete("/<path:name>")
def delete_task(name: str) -> ResponseReturnValue:
    """Withdraw the API's declaration of task ``name``; it stays known from its runs."""
    return _declare(name, withdraw=True)
