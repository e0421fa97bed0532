"""The tasks API: declarations (``PUT``, ``DELETE``) and each task's state as JSON."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request

from ..core import inputs
from ..core.declarations import parse_declaration
from ..core.errors import BridgeError, Conflict, Forbidden, InvalidInput, NotFound
from ..core.tasks import Task, effective_declaration, status_at
from .errors import refusals
from .extension import current_bridge
from .ingest import json_body

__all__ = ["bp", "task_json"]

bp = Blueprint("tasks", __name__, url_prefix="/api/v1/tasks")
refusals(bp, "tasks")

#: Record fields that are bookkeeping, not part of the public task object.
_INTERNAL = frozenset({"declarations", "version", "deadline_at", "recent", "declared_at", "running", "running_ids",
                       "created_by_ping_key"})


def task_json(task: Task, now: float) -> dict[str, Any]:
    """Return the public JSON object of ``task`` at ``now`` (times in unix seconds)."""
    declared, source = effective_declaration(task)
    fields = declared.to_dict() if declared is not None else {
        "schedule": None, "timezone": None, "period_seconds": None, "start_grace_seconds": None,
        "max_runtime_seconds": None, "failure_threshold": 1, "labels": {}, "description": None,
        "runbook_url": None, "ping_uuid": None, "ping_key": None}
    # the ping key whose slug URLs reach it: the one declared, else the one that created it
    fields["ping_key"] = fields.get("ping_key") or task.created_by_ping_key
    public = {k: v for k, v in vars(task).items() if k not in _INTERNAL}
    return {**public, **fields, "status": status_at(task, now), "declared_by": source,
            "running": task.running_ids, "running_count": task.running,
            "next_run_deadline_at": task.deadline_at,
            "last_executions": [{"execution_id": run[0], "status": run[1], "started_at": run[2], "ended_at": run[3]}
                                for run in reversed(task.recent)]}


def _task_name(name: str, refusal: type[BridgeError] = NotFound) -> str:
    """Return ``name`` when it can name a task; else raise ``refusal`` (a read finds no such task)."""
    try:
        inputs.task_name(name, required=True)
    except InvalidInput as exc:
        raise refusal(exc.message, "task_name") from None
    return name


@bp.get("")
def list_tasks():
    """List every task the bridge knows, declared or seen running, by name."""
    bridge = current_bridge()
    bridge.authorizer.read(request.headers.get("Authorization"))
    now = bridge.monitor.clock()
    return jsonify(tasks=[task_json(task, now) for task in bridge.monitor.store.tasks()])


@bp.get("/<path:name>")
def get_task(name: str):
    """Return one task; 404 when the bridge knows no task of that name."""
    bridge = current_bridge()
    bridge.authorizer.read(request.headers.get("Authorization"))
    task = bridge.monitor.store.get_task(_task_name(name))
    if task is None:
        raise NotFound(f"no task {name[:128]!r}", "task_name")
    return jsonify(task_json(task, bridge.monitor.clock()))


def _declare(name: str, withdraw: bool = False):
    """Declare task ``name`` from the request's JSON body, or withdraw the API's declaration."""
    bridge = current_bridge()
    if not bridge.authorizer.ingest(request.headers.get("Authorization")).any_execution:
        raise Forbidden("declaring tasks needs a fleet token, not an execution's", "Authorization")
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


@bp.put("/<path:name>")
def put_task(name: str):
    """Declare task ``name`` (a JSON object of the declaration's fields); idempotent."""
    return _declare(name)


@bp.delete("/<path:name>")
def delete_task(name: str):
    """Withdraw the API's declaration of task ``name``; it stays known from its runs."""
    return _declare(name, withdraw=True)
