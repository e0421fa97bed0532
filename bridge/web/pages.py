"""The status pages: what a person pointing a browser at the bridge sees.

    GET /                          the tasks, and the executions (filtered by status and task)
    GET /tasks/<task_name>         one task: its declaration, status, last runs and durations
    GET /executions/<id>           one execution: its timeline, stages, outcome and trace
    GET /runbooks                  what to do for each alert (one anchor per alert), open to all

Server-rendered HTML that reads without JavaScript and refreshes itself. Guarded like the
query API: with ``BRIDGE_METRICS_TOKEN`` set a browser is asked for it as the password of
HTTP basic authentication (any user name).
"""

from __future__ import annotations

import functools
import json
import math
import re
import shlex
import statistics
from datetime import datetime, timezone
from typing import Any

from flask import Blueprint, Response, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from markdown_it import MarkdownIt
from markupsafe import Markup
from werkzeug.exceptions import MethodNotAllowed

from ..assets import asset
from ..core import inputs
from ..core.errors import BridgeError, Conflict, Forbidden, InvalidInput, NotFound, StoreUnavailable, Unauthorized
from ..core.executions import STATUSES, Execution
from ..core.ids import normalise_id
from ..core.tasks import UNHEALTHY_STATUSES, Task, effective_declaration, status_at
from .auth import basic_password
from .errors import refusals
from .extension import current_bridge
from .tasks import task_json

__all__ = ["bp"]

bp = Blueprint("pages", __name__, template_folder="templates")

REFRESH_SECONDS = 15
#: Executions a page lists; a ``next`` link goes on from the last.
PAGE_EXECUTIONS = 100
LIVE_STATUSES = ("running", "starting", "lost")
#: The pages run no script, take no frame and send forms nowhere: a link or text a task
#: declared cannot act in the origin where the browser holds the metrics token.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
ENDED_STATUSES = ("completed", "failed")


#: Pages anyone may open: an alert's runbook link must open for whoever got the page.
_OPEN_PAGES = frozenset({"pages.runbooks"})
#: The forms that act (forget, pause, resume): guarded like the API they stand for.
_ACTIONS = frozenset({"pages.forget_execution", "pages.pause_task", "pages.resume_task"})
#: The realm a browser is asked a fleet token in, apart from the pages' metrics token.
ACTION_REALM = "Heartbeat Bridge: acting on tasks and executions"


@bp.before_request
def _authorize() -> None:
    # A name in a path may hold "/": .../pause, /resume and /forget are the forms' actions
    # whatever the method, never a page of something so named (as in the tasks API).
    if request.path.endswith(("/pause", "/resume", "/forget")) and request.method != "POST":
        raise MethodNotAllowed(valid_methods=["POST"])
    if request.endpoint in _ACTIONS:
        _authorize_action()
    elif request.endpoint not in _OPEN_PAGES:
        current_bridge().authorizer.read(request.headers.get("Authorization"))


def _authorize_action() -> None:
    """Refuse a form's post from another site (a browser says where it comes from), and one
    without the token the API would want: a fleet token, as a bearer or a basic-auth password."""
    site = request.headers.get("Sec-Fetch-Site")
    origin = request.headers.get("Origin")
    if (site is not None and site not in ("same-origin", "none")) or (
        origin is not None and origin.rstrip("/") != request.host_url.rstrip("/")
    ):
        raise Forbidden("a form of another site may not act here", "Origin")
    authorizer = current_bridge().authorizer
    if authorizer.ingest_open:
        return
    header = request.headers.get("Authorization")
    password = basic_password(header)
    try:
        grant = authorizer.ingest(f"Bearer {password}" if password else header)
    except Unauthorized:
        raise Unauthorized(
            "acting needs a fleet token, as the password", "Authorization", reason="unauthorized"
        ) from None
    if not grant.any_execution:
        raise Forbidden("acting needs a fleet token, not an execution's", "Authorization")


@bp.after_request
def _guard(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def _refused(exc: BridgeError, status: int) -> Response:
    if isinstance(exc, StoreUnavailable):
        response = Response(
            render_template(
                "pages/error.html",
                status=503,
                refresh=REFRESH_SECONDS,
                message="The store is unavailable; this page tries again by itself.",
            ),
            status=503,
        )
        response.headers["Retry-After"] = str(REFRESH_SECONDS)
        return response
    response = Response(
        render_template("pages/error.html", status=status, message=exc.message, refresh=None), status=status
    )
    if status == 401:  # the browser then asks for the metrics token (a fleet token, to act)
        realm = ACTION_REALM if request.endpoint in _ACTIONS else "Heartbeat Bridge"
        response.headers["WWW-Authenticate"] = f'Basic realm="{realm}", charset="UTF-8"'
    return response


refusals(bp, "pages", _refused)


@bp.app_template_filter("when")
def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "—"
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


@bp.app_template_filter("iso")
def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


@bp.app_template_filter("span")
def _span(seconds: float | None) -> str:
    """Return a duration as people say it: ``42 s``, ``3 min 5 s``, ``2 h 10 min``, ``3 d 4 h``."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    seconds = max(0, round(seconds))
    for unit, size, smaller, smaller_size in (("d", 86_400, "h", 3600), ("h", 3600, "min", 60), ("min", 60, "s", 1)):
        if seconds >= size:
            whole, rest = divmod(seconds, size)
            part = rest // smaller_size
            return f"{whole} {unit} {part} {smaller}" if part else f"{whole} {unit}"
    return f"{seconds} s"


@bp.app_template_filter("http_link")
def _http_link(url: str | None) -> str | None:
    """Return ``url`` when a person may follow it (http or https), else None: a record written
    before the input rules refused other schemes is shown as text, never as a link."""
    try:
        return inputs.url(url, "link")
    except InvalidInput:
        return None


@bp.app_template_filter("shell_quote")
def _shell_quote(value: str) -> str:
    """Return ``value`` quoted for a POSIX shell when it needs it."""
    return shlex.quote(value)


@bp.app_template_filter("pretty_json")
def _pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def _render(template: str, **context: Any) -> str:
    bridge = current_bridge()
    alerts = bridge.alertmanager.alerts() if bridge.alertmanager is not None else None
    return render_template(
        template,
        now=bridge.monitor.clock(),
        refresh=REFRESH_SECONDS,
        alerts=alerts,
        trace_url=bridge.settings.trace_url,
        base_url=bridge.settings.external_url or request.host_url.rstrip("/"),
        **context,
    )


def _page(status: str | None, task_name: str | None, cursor: str | None) -> tuple[list[Execution], str | None]:
    """Return a page of executions, live ones first (by status, then id), and the cursor of the
    next page (``<status>:<last id>``; None on the last page). Raises :class:`InvalidInput` for
    a cursor that is not one."""
    statuses = (status,) if status else LIVE_STATUSES + ENDED_STATUSES
    start, after = statuses[0], None
    if cursor:
        start, _, after = cursor.partition(":")
        if start not in statuses or not after:
            raise InvalidInput("after must be the cursor of a page's next link", "after")
    store = current_bridge().monitor.store
    found: list[Execution] = []
    for wanted in statuses[statuses.index(start) :]:
        found += store.query(
            status=wanted,
            task_name=task_name,
            after=after if wanted == start else None,
            limit=PAGE_EXECUTIONS + 1 - len(found),
        )
        if len(found) > PAGE_EXECUTIONS:
            break
    if len(found) <= PAGE_EXECUTIONS:
        return found, None
    last = found[PAGE_EXECUTIONS - 1]
    return found[:PAGE_EXECUTIONS], f"{last.status}:{last.execution_id}"


def _order(records: list[Execution], now: float) -> list[Execution]:
    """Live executions first, the most recently heard from first; then ended ones, newest first."""

    def key(record: Execution) -> tuple[int, float]:
        if record.status in LIVE_STATUSES:
            return 0, -(record.last_heartbeat_at or record.started_at)
        return 1, -(record.ended_at or record.updated_at)

    return sorted(records, key=key)


@bp.get("/")
def index() -> ResponseReturnValue:
    """The tasks, then the executions: filter with ``?status=`` and ``?task_name=``."""
    bridge = current_bridge()
    store = bridge.monitor.store
    now = bridge.monitor.clock()
    status = request.args.get("status") or None
    task_name = request.args.get("task_name") or None
    if status is not None and status not in STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(STATUSES)}", "status")
    tasks = _with_upstreams([task_json(task, now) for task in store.tasks()])
    shown, after = _page(status, task_name, request.args.get("after"))
    return _render(
        "pages/index.html",
        tasks=tasks,
        executions=_order(shown, now),
        after=after,
        statuses=STATUSES,
        status=status,
        task_name=task_name,
        task_names=sorted({t["task_name"] for t in tasks} | ({task_name} if task_name else set())),
    )


def _with_upstreams(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return ``tasks`` (task_json objects), each with ``blocked_by``: its upstreams that are
    failing or missed, which hold its alerts back."""
    statuses = {task["task_name"]: task["status"] for task in tasks}
    for task in tasks:
        task["blocked_by"] = [name for name in task["depends_on"] or () if statuses.get(name) in UNHEALTHY_STATUSES]
    return tasks


def _durations(task: dict[str, Any]) -> dict[str, float] | None:
    """Return the median, 95th percentile and longest duration of the task's last completed runs."""
    runs = [
        run["ended_at"] - run["started_at"]
        for run in task["last_executions"]
        if run["status"] == "completed" and run["ended_at"] is not None
    ]
    if not runs:
        return None
    ordered = sorted(runs)
    p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
    return {"runs": len(runs), "median": statistics.median(ordered), "p95": p95, "longest": ordered[-1]}


@bp.get("/tasks/<path:task_name>")
def task_page(task_name: str) -> ResponseReturnValue:
    """One task: declaration, status, next deadline, failure streak, last runs and their durations."""
    bridge = current_bridge()
    task: Task | None = bridge.monitor.store.get_task(task_name)
    if task is None:
        raise NotFound(f"No task is named {task_name[:128]!r}.", "task_name")
    now = bridge.monitor.clock()
    record = task_json(task, now)
    upstreams = [bridge.monitor.store.get_task(name) for name in record["depends_on"] or ()]
    record["blocked_by"] = [
        up.task_name for up in upstreams if up is not None and status_at(up, now) in UNHEALTHY_STATUSES
    ]
    _, source = effective_declaration(task)
    cursor = request.args.get("after")
    runs, after = _page(None, task.task_name, cursor)
    return _render(
        "pages/task.html",
        task=record,
        status=status_at(task, now),
        declared_by=source,
        durations=_durations(record),
        runs=_order(runs, now),
        after=after,
        after_cursor=cursor,
    )


@bp.post("/executions/<path:execution_id>/forget")
def forget_execution(execution_id: str) -> ResponseReturnValue:
    """The execution page's form: forget an ended or lost execution (``DELETE`` of the API)."""
    canonical = normalise_id(execution_id)
    outcome = current_bridge().monitor.forget(canonical) if canonical else None
    if outcome is None or outcome.result == "missing":
        raise NotFound(f"No execution {execution_id[:128]!r} is tracked.", "execution_id")
    if outcome.result == "live":
        raise Conflict("A running execution cannot be forgotten: it must end or go lost first.", "execution_id")
    return redirect(url_for("pages.index"), 303)


@bp.post("/tasks/<path:task_name>/pause")
def pause_task(task_name: str) -> ResponseReturnValue:
    """The task page's form: pause the task, for ``seconds`` or until it is resumed."""
    bridge = current_bridge()
    raw = request.form.get("seconds") or None
    if raw is not None and not (raw.isascii() and raw.isdigit() and 0 < int(raw) <= 366 * 86_400):
        raise InvalidInput("seconds must be a whole number of seconds up to a year", "seconds")
    until = bridge.monitor.clock() + int(raw) if raw else None
    bridge.monitor.pause(task_name, until)
    return redirect(url_for("pages.task_page", task_name=task_name), 303)


@bp.post("/tasks/<path:task_name>/resume")
def resume_task(task_name: str) -> ResponseReturnValue:
    """The task page's form: resume the task now."""
    current_bridge().monitor.resume(task_name)
    return redirect(url_for("pages.task_page", task_name=task_name), 303)


@bp.get("/runbooks")
def runbooks() -> ResponseReturnValue:
    """The runbooks: ``docs/runbooks.md`` as a page, each alert's section at ``#<alert in lower case>``."""
    return render_template(
        "pages/runbooks.html", body=_runbooks_html(), now=current_bridge().monitor.clock(), refresh=None
    )


@functools.lru_cache(maxsize=1)
def _runbooks_html() -> Markup:
    """Return the shipped runbooks as HTML (their raw HTML escaped), each second-level heading
    with an id: the alert's name in lower case, or the heading's words joined by ``-``."""
    html = MarkdownIt("commonmark", {"html": False}).enable("table").render(asset("docs", "runbooks.md").read_text())

    def anchored(match: re.Match[str]) -> str:
        title = match.group(1)
        anchor = re.sub(r"[^a-z0-9]+", "-", re.sub(r"<[^>]+>", "", title).lower()).strip("-")
        return f'<h2 id="{anchor}">{title}</h2>'

    return Markup(re.sub(r"<h2>(.*?)</h2>", anchored, html))


@bp.get("/executions/<path:execution_id>")
def execution_page(execution_id: str) -> ResponseReturnValue:
    """One execution: facts, progress, status timeline, stages, outcome, result data, trace."""
    bridge = current_bridge()
    canonical = normalise_id(execution_id)
    record = bridge.monitor.store.get(canonical) if canonical else None
    if record is None:
        raise NotFound(
            f"No execution {execution_id[:128]!r} is tracked: unknown, or past its retention.", "execution_id"
        )
    trace_link = bridge.settings.trace_url.replace("{trace_id}", record.trace_id) if bridge.settings.trace_url else None
    return _render("pages/execution.html", execution=record, trace_link=trace_link)
