"""The executions: their current state as JSON, and the launcher's announcement of one."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from ..core.errors import Conflict, InvalidInput, NotFound
from ..core.executions import STATUSES, Execution
from ..core.ids import normalise_id
from .errors import by_view, refusals
from .extension import current_bridge
from .ingest import event_answer, json_body
from .validation import parse_announcement

__all__ = ["bp", "execution_json"]

bp = Blueprint("executions", __name__, url_prefix="/api/v1/executions")
refusals(
    bp,
    by_view(
        {
            "announce": "announcement",
            "list_executions": "executions",
            "get_execution": "executions",
            "forget": "executions",
        }
    ),
)


@bp.before_request
def _authorize() -> None:
    # an announcement and a deletion are ingest, with the ingest tokens
    if request.method in ("GET", "HEAD"):
        current_bridge().authorizer.read(request.headers.get("Authorization"))


DEFAULT_PAGE = 100
MAX_PAGE = 1000

#: Record fields that are bookkeeping, not part of the public execution object.
_INTERNAL = frozenset({"gaps", "version", "metric_task_name"})


def execution_json(record: Execution) -> dict[str, Any]:
    """Return the public JSON object of an execution (times in unix seconds)."""
    return {k: v for k, v in record.to_dict().items() if k not in _INTERNAL}


@bp.get("")
def list_executions() -> ResponseReturnValue:
    """List executions by id, filtered by ``status`` and ``task_name``, paged with ``after``."""
    status = request.args.get("status")
    if status is not None and status not in STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(STATUSES)}", "status")
    raw_limit = request.args.get("limit", str(DEFAULT_PAGE))
    # ASCII digits only: str.isdigit() also takes "²" (which int() refuses) and full-width digits; and
    # few of them, since int() refuses thousands.
    if not (raw_limit.isascii() and raw_limit.isdigit() and len(raw_limit) <= 6) or not 1 <= int(raw_limit) <= MAX_PAGE:
        raise InvalidInput(f"limit must be an integer from 1 to {MAX_PAGE}", "limit")
    limit = int(raw_limit)
    records = current_bridge().monitor.store.query(
        status=status, task_name=request.args.get("task_name"), after=request.args.get("after"), limit=limit
    )
    return jsonify(
        executions=[execution_json(r) for r in records],
        next_after=records[-1].execution_id if len(records) == limit else None,
    )


@bp.get("/<path:execution_id>")
def get_execution(execution_id: str) -> ResponseReturnValue:
    """Return one execution; 404 when the id is unknown (or cannot be an id)."""
    canonical = normalise_id(execution_id)
    record = current_bridge().monitor.store.get(canonical) if canonical else None
    if record is None:
        raise NotFound(f"no execution {execution_id[:128]!r}", "execution_id")
    return jsonify(execution_json(record))


@bp.put("/<path:execution_id>")
def announce(execution_id: str) -> ResponseReturnValue:
    """Announce an execution before its container starts: it is ``starting`` as a run of its
    task, and its heartbeats fill in the rest. Idempotent; after its end a duplicate."""
    bridge = current_bridge()
    grant = bridge.authorizer.ingest(request.headers.get("Authorization"))
    announcement = parse_announcement(execution_id, json_body(bridge.settings.max_body_bytes))
    bridge.authorizer.check(grant, announcement.execution_id)
    return event_answer(announcement.execution_id, bridge.monitor.announce(announcement))


@bp.delete("/<path:execution_id>")
def forget(execution_id: str) -> ResponseReturnValue:
    """Forget an ended or lost execution (one that will never come back) without waiting for
    its retention: its series leave /metrics, so its alerts resolve; nothing is counted.
    404 for an unknown one, 409 for one still running or starting."""
    bridge = current_bridge()
    grant = bridge.authorizer.ingest(request.headers.get("Authorization"))
    canonical = normalise_id(execution_id)
    if canonical is None:
        raise NotFound(f"no execution {execution_id[:128]!r}", "execution_id")
    bridge.authorizer.check(grant, canonical)
    outcome = bridge.monitor.forget(canonical)
    if outcome.result == "missing":
        raise NotFound(f"no execution {canonical!r}", "execution_id")
    if outcome.result == "live":
        raise Conflict(
            f"execution {canonical!r} is still running: it can be forgotten once it has ended or is lost",
            "execution_id",
        )
    assert outcome.record is not None
    return jsonify(status="ok", execution_id=canonical, forgotten=True, execution_status=outcome.record.status)
