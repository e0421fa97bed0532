"""The API as an OpenAPI 3 document, built from the same constants the validation uses."""

from __future__ import annotations

from typing import Any

from .. import __version__
from ..core.declarations import (
    MAX_CONCURRENCY,
    MAX_FAILURE_THRESHOLD,
    MAX_GRACE_SECONDS,
    MAX_PERIOD_SECONDS,
    MAX_RUNTIME_SECONDS,
    MAX_UPSTREAMS,
)
from ..core.events import CONTAINER_EVENTS, REPORTED_STATUSES
from ..core.executions import STATUSES
from ..core.inputs import (
    LABEL_KEY,
    MAX_DESCRIPTION,
    MAX_ERROR_MESSAGE,
    MAX_LABEL_VALUE,
    MAX_LABELS,
    MAX_TEXT,
    MAX_URL,
    PING_KEY,
)
from ..core.tasks import DECLARATION_SOURCES, TASK_STATUSES
from ..service.config import Settings
from .validation import MAX_CONTAINER_NAME, MAX_IMAGE, MAX_INTERVAL, MAX_RUNTIME, MAX_TIMESTAMP

__all__ = ["document"]

_NO_CONTROL = "[^\\u0000-\\u001f\\u007f]"
#: Text without control characters and not blank, as ``bridge.core.inputs.text`` demands.
_TEXT_PATTERN = f"^{_NO_CONTROL}*[^\\s\\u0000-\\u001f\\u007f]{_NO_CONTROL}*$"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    # JSON Schema (OpenAPI 3.1): null is a type, and an enum admits it only when listed.
    extra = {"enum": [*schema["enum"], None]} if "enum" in schema else {}
    return {**schema, **extra, "type": [schema["type"], "null"]}


def _text(max_length: int) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": max_length, "pattern": _TEXT_PATTERN}


def _errors(*codes: int) -> dict[str, Any]:
    meaning = {
        400: "malformed JSON or a wrong field (named in `field`)",
        401: "missing or wrong token",
        403: "the token does not grant this",
        404: "no such execution or task",
        409: "the task is declared in BRIDGE_TASKS_FILE, its ping_uuid is another task's, or the "
        "execution is still running",
        413: "too large",
        415: "not application/json",
        429: "a limit (executions, task names) is reached",
        503: "the store is unavailable; retry",
    }
    return {
        str(code): {"description": meaning[code], "content": {"application/json": {"schema": _ref("Error")}}}
        for code in codes
    }


def _ok(schema: str, description: str) -> dict[str, Any]:
    return {"200": {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}}


def _sentry_answer(code: str, description: str) -> dict[str, Any]:
    return {code: {"description": description, "content": {"application/json": {"schema": _ref("SentryAnswer")}}}}


def _sentry_errors(*codes: int) -> dict[str, Any]:
    meaning = {
        400: "not an envelope, or a wrong check-in",
        401: "a missing or unknown public key",
        403: "the public key is bound to another project",
        404: "a project id that is not a number",
        409: "the monitor is another project's (or no monitor), or check_in_id names another's run",
        413: "too large, or more than 100 check-ins",
        415: "an unknown Content-Encoding",
        429: "a limit (executions, task names)",
        503: "the store is unavailable; retry",
    }
    # a path that is no route (a project id not a number) gets the bridge's own 404
    return {
        str(code): {
            "description": meaning[code],
            "content": {"application/json": {"schema": _ref("Error" if code == 404 else "SentryError")}},
        }
        for code in codes
    }


def _post(summary: str, body: dict[str, Any], answer: str, *codes: int) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "security": [{}, {"bearer": []}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
            "responses": {**_ok(answer, "accepted"), **_errors(*codes)},
        }
    }


def document(settings: Settings) -> dict[str, Any]:
    """Return the OpenAPI 3.1 document of the API under ``settings``' limits."""
    execution_id = {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"}
    container_id = {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,256}$"}
    document_object = {
        "type": "object",
        "additionalProperties": True,
        "description": f"any JSON object, nested at most 8 deep, at most {settings.max_field_bytes} bytes as JSON",
    }
    exit_code = {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}
    ingest_codes = (400, 401, 403, 413, 415, 429, 503)
    task_name = _text(MAX_TEXT)
    label_map = {
        "type": "object",
        "maxProperties": MAX_LABELS,
        "propertyNames": {"pattern": f"^{LABEL_KEY.pattern}$"},
        "additionalProperties": {"type": "string", "maxLength": MAX_LABEL_VALUE, "pattern": f"^{_NO_CONTROL}*$"},
    }
    schemas = {
        "Heartbeat": {
            "type": "object",
            "required": ["execution_id"],
            "additionalProperties": True,
            "properties": {
                "execution_id": execution_id,
                "container_id": _nullable(container_id),
                "status": _nullable({"type": "string", "enum": list(REPORTED_STATUSES)}),
                "progress": _nullable(document_object),
                "timestamp": _nullable({"type": "number", "minimum": 0, "maximum": MAX_TIMESTAMP}),
                "task_name": _nullable(_text(MAX_TEXT)),
                "task_type": _nullable(_text(MAX_TEXT)),
                "interval_seconds": _nullable({"type": "number", "minimum": 1, "maximum": MAX_INTERVAL}),
                "max_runtime_seconds": _nullable({"type": "number", "minimum": 1, "maximum": MAX_RUNTIME}),
                "labels": _nullable(label_map),
                "traceparent": _nullable({"type": "string", "pattern": "^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"}),
                "task_schedule": {
                    "anyOf": [_ref("TaskDeclaration"), {"type": "null"}],
                    "description": "declares the task (task_name) on an execution's first heartbeat",
                },
            },
        },
        "TaskDeclaration": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "schedule": _nullable({"type": "string", "description": "a 5-field cron expression"}),
                "timezone": _nullable({"type": "string", "description": "an IANA time zone (default UTC)"}),
                "period_seconds": _nullable({"type": "number", "minimum": 1, "maximum": MAX_PERIOD_SECONDS}),
                "start_grace_seconds": _nullable({"type": "number", "minimum": 0, "maximum": MAX_GRACE_SECONDS}),
                "max_runtime_seconds": _nullable({"type": "number", "minimum": 1, "maximum": MAX_RUNTIME}),
                "failure_threshold": _nullable({"type": "integer", "minimum": 1, "maximum": MAX_FAILURE_THRESHOLD}),
                "labels": _nullable(label_map),
                "description": _nullable(_text(MAX_DESCRIPTION)),
                "runbook_url": _nullable(
                    {
                        "type": "string",
                        "maxLength": MAX_URL,
                        "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://",
                        "description": "an http:// or https:// link",
                    }
                ),
                "ping_uuid": _nullable({"type": "string", "format": "uuid"}),
                "ping_key": _nullable(
                    {
                        "type": "string",
                        "pattern": f"^{PING_KEY.pattern}$",
                        "description": "the Healthchecks ping key whose slug URLs reach this task",
                    }
                ),
                "min_runtime_seconds": _nullable(
                    {
                        "type": "number",
                        "minimum": 0,
                        "maximum": MAX_RUNTIME_SECONDS,
                        "description": "a successful run shorter than this is too short",
                    }
                ),
                "early_grace_seconds": _nullable(
                    {
                        "type": "number",
                        "minimum": 0,
                        "maximum": MAX_GRACE_SECONDS,
                        "description": "how early a scheduled run may start (default 60)",
                    }
                ),
                "max_concurrency": _nullable({"type": "integer", "minimum": 1, "maximum": MAX_CONCURRENCY}),
                "recovery_threshold": _nullable(
                    {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": MAX_FAILURE_THRESHOLD,
                        "description": "successes in a row that clear failing (default 1)",
                    }
                ),
                "depends_on": _nullable(
                    {
                        "type": "array",
                        "maxItems": MAX_UPSTREAMS,
                        "items": task_name,
                        "description": "upstream task names: while one is failing or missed, this "
                        "task's alerts hold back",
                    }
                ),
            },
        },
        "Pause": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "seconds": {"type": "number", "minimum": 1, "maximum": 366 * 86_400},
                "until": {"type": "number", "description": "unix seconds, in the future"},
            },
        },
        "Announcement": {
            "type": "object",
            "additionalProperties": True,
            "properties": {
                "task_name": _nullable(task_name),
                "task_type": _nullable(_text(MAX_TEXT)),
                "labels": _nullable(label_map),
                "interval_seconds": _nullable({"type": "number", "minimum": 1, "maximum": MAX_INTERVAL}),
                "max_runtime_seconds": _nullable({"type": "number", "minimum": 1, "maximum": MAX_RUNTIME}),
            },
        },
        "Task": {
            "type": "object",
            "required": ["task_name", "status"],
            "additionalProperties": True,
            "properties": {
                "task_name": {"type": "string"},
                "status": {"type": "string", "enum": list(TASK_STATUSES)},
                "declared_by": {"type": ["string", "null"], "enum": [*DECLARATION_SOURCES, None]},
                "consecutive_failures": {"type": "integer"},
                "running": {"type": "array", "items": {"type": "string"}},
                "last_executions": {"type": "array", "items": {"type": "object"}},
            },
        },
        "TaskList": {
            "type": "object",
            "required": ["tasks"],
            "properties": {"tasks": {"type": "array", "items": _ref("Task")}},
        },
        "Completion": {
            "type": "object",
            "required": ["execution_id", "success"],
            "additionalProperties": True,
            "properties": {
                "execution_id": execution_id,
                "success": {"type": "boolean"},
                "container_id": _nullable(container_id),
                "result_data": _nullable(document_object),
                "error_message": _nullable({"type": "string", "description": f"cut to {MAX_ERROR_MESSAGE} characters"}),
                "exit_code": _nullable(exit_code),
                "task_name": _nullable(_text(MAX_TEXT)),
            },
        },
        "ContainerEvent": {
            "type": "object",
            "required": ["execution_id", "event"],
            "additionalProperties": True,
            "properties": {
                "execution_id": execution_id,
                "event": {"type": "string", "enum": list(CONTAINER_EVENTS)},
                "container_id": _nullable(container_id),
                "container_name": _nullable(_text(MAX_CONTAINER_NAME)),
                "image": _nullable(_text(MAX_IMAGE)),
                "exit_code": _nullable(exit_code),
                "oom_killed": {"type": "boolean"},
                "task_name": _nullable(task_name),
                "task_type": _nullable(_text(MAX_TEXT)),
            },
        },
        "Accepted": {
            "type": "object",
            "required": ["status", "execution_id"],
            "properties": {
                "status": {"type": "string", "enum": ["ok"]},
                "execution_id": {"type": "string"},
                "execution_status": {"type": "string", "enum": list(STATUSES)},
                "interval_seconds": {"type": "number"},
                "ignored": {"type": "boolean"},
                "duplicate": {"type": "boolean"},
                "warnings": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "what of the event was cut or dropped to keep it",
                },
            },
        },
        "Forgotten": {
            "type": "object",
            "required": ["status", "execution_id", "forgotten"],
            "properties": {
                "status": {"type": "string", "enum": ["ok"]},
                "execution_id": {"type": "string"},
                "forgotten": {"type": "boolean"},
                "execution_status": {"type": "string", "enum": list(STATUSES)},
            },
        },
        "BatchAnswer": {
            "type": "object",
            "required": ["status", "accepted", "rejected", "results"],
            "properties": {
                "status": {"type": "string", "enum": ["ok"]},
                "accepted": {"type": "integer"},
                "rejected": {"type": "integer"},
                "results": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["status"],
                        "properties": {
                            "status": {"type": "string", "enum": ["ok", "error"]},
                            "code": {"type": "integer"},
                            "error": {"type": "string"},
                            "field": {"type": ["string", "null"]},
                        },
                    },
                },
            },
        },
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string"}, "field": {"type": "string"}},
        },
        "Execution": {
            "type": "object",
            "required": ["execution_id", "status", "trace_id"],
            "additionalProperties": True,
            "properties": {
                "execution_id": {"type": "string"},
                "status": {"type": "string", "enum": list(STATUSES)},
                "trace_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                "heartbeat_count": {"type": "integer"},
                "progress": {"type": "object"},
            },
        },
        "ExecutionList": {
            "type": "object",
            "required": ["executions", "next_after"],
            "properties": {
                "executions": {"type": "array", "items": _ref("Execution")},
                "next_after": {"type": ["string", "null"]},
            },
        },
        "Health": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
        "SentryAnswer": {"type": "object", "required": ["id"], "properties": {"id": {"type": ["string", "null"]}}},
        "SentryError": {"type": "object", "required": ["detail"], "properties": {"detail": {"type": "string"}}},
    }
    read_security: list[dict[str, list[str]]] = [{}, {"bearer": []}]
    paths = {
        "/api/v1/monitoring/heartbeat": _post("Record one heartbeat", _ref("Heartbeat"), "Accepted", *ingest_codes),
        "/api/v1/monitoring/heartbeats": _post(
            "Record many heartbeats; each item is checked and answered on its own",
            {"type": "array", "maxItems": settings.max_batch_items, "items": {}},
            "BatchAnswer",
            400,
            401,
            413,
            415,
            503,
        ),
        "/api/v1/monitoring/completion": _post(
            "Record a completion; repeats are duplicates", _ref("Completion"), "Accepted", *ingest_codes
        ),
        "/api/v1/monitoring/container-events": _post(
            "Record a Docker agent's report", _ref("ContainerEvent"), "Accepted", *ingest_codes
        ),
        "/api/v1/executions": {
            "get": {
                "summary": "List executions by id",
                "security": read_security,
                "parameters": [
                    {"name": "status", "in": "query", "schema": {"type": "string", "enum": list(STATUSES)}},
                    {"name": "task_name", "in": "query", "schema": {"type": "string"}},
                    {"name": "after", "in": "query", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                ],
                "responses": {**_ok("ExecutionList", "executions"), **_errors(400, 401, 503)},
            }
        },
        "/api/v1/executions/{execution_id}": {
            "get": {
                "summary": "One execution",
                "security": read_security,
                "parameters": [{"name": "execution_id", "in": "path", "required": True, "schema": execution_id}],
                "responses": {**_ok("Execution", "the execution"), **_errors(401, 404, 503)},
            },
            "put": {
                "summary": "Announce an execution before its container starts",
                "security": [{}, {"bearer": []}],
                "parameters": [{"name": "execution_id", "in": "path", "required": True, "schema": execution_id}],
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("Announcement")}}},
                "responses": {**_ok("Accepted", "announced"), **_errors(*ingest_codes)},
            },
            "delete": {
                "summary": "Forget an ended or lost execution now (its series leave /metrics; nothing is counted)",
                "security": [{}, {"bearer": []}],
                "parameters": [{"name": "execution_id", "in": "path", "required": True, "schema": execution_id}],
                "responses": {**_ok("Forgotten", "forgotten"), **_errors(401, 403, 404, 409, 503)},
            },
        },
        "/api/v1/tasks": {
            "get": {
                "summary": "Every task, declared or seen running",
                "security": read_security,
                "responses": {**_ok("TaskList", "the tasks"), **_errors(401, 503)},
            }
        },
        "/api/v1/tasks/{name}": {
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": task_name}],
            "get": {
                "summary": "One task",
                "security": read_security,
                "responses": {**_ok("Task", "the task"), **_errors(401, 404, 503)},
            },
            "put": {
                "summary": "Declare a task (idempotent)",
                "security": [{}, {"bearer": []}],
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("TaskDeclaration")}}},
                "responses": {**_ok("Task", "declared"), **_errors(400, 401, 403, 409, 413, 415, 429, 503)},
            },
            "delete": {
                "summary": "Withdraw the API's declaration; the task stays known from its runs",
                "security": [{}, {"bearer": []}],
                "responses": {**_ok("Task", "what is left of the task"), **_errors(400, 401, 403, 404, 409, 503)},
            },
        },
        "/api/v1/tasks/{name}/pause": {
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": task_name}],
            "post": {
                "summary": "Pause a task: nothing is expected, nothing alerts; with seconds or until the "
                "pause ends by itself, without either at /resume or the task's next run",
                "security": [{}, {"bearer": []}],
                "requestBody": {"required": False, "content": {"application/json": {"schema": _ref("Pause")}}},
                "responses": {**_ok("Task", "paused"), **_errors(400, 401, 403, 404, 413, 415, 503)},
            },
        },
        "/api/v1/tasks/{name}/resume": {
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": task_name}],
            "post": {
                "summary": "Resume a paused task now",
                "security": [{}, {"bearer": []}],
                "responses": {**_ok("Task", "resumed"), **_errors(401, 403, 404, 503)},
            },
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus text, or OpenMetrics when asked",
                "security": read_security,
                "responses": {
                    "200": {
                        "description": "the metrics",
                        "content": {
                            "text/plain": {"schema": {"type": "string"}},
                            "application/openmetrics-text": {"schema": {"type": "string"}},
                        },
                    },
                    **_errors(401, 503),
                },
            }
        },
        "/ping/{path}": {
            method: {
                "summary": "A Healthchecks ping: <uuid>[/start|/fail|/log|/<exit status>], or "
                "<ping key>/<slug>[/...]; ?rid= names the run, ?create=1 makes a slug's task",
                "parameters": [
                    {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"name": "rid", "in": "query", "schema": {"type": "string", "format": "uuid"}},
                    {"name": "create", "in": "query", "schema": {"type": "string", "enum": ["0", "1"]}},
                ],
                **(
                    {
                        "requestBody": {
                            "content": {
                                "text/plain": {
                                    "schema": {
                                        "type": "string",
                                        "description": f"the first {settings.ping_body_bytes} bytes are kept",
                                    }
                                }
                            }
                        }
                    }
                    if method == "post"
                    else {}
                ),
                "responses": {
                    code: {
                        "description": text,
                        "headers": {"Ping-Body-Limit": {"schema": {"type": "integer"}}},
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                    for code, text in (
                        ("200", "OK"),
                        ("201", "Created: ?create=1 made the task"),
                        ("400", "invalid url format, invalid uuid format"),
                        ("404", "not found"),
                        ("409", "conflict: rid names another task's run, or a run the ping did not start"),
                        ("429", "rate limit exceeded"),
                        ("503", "service unavailable"),
                    )
                },
            }
            for method in ("get", "head", "post")
        },
        "/api/{project_id}/envelope/": {
            "post": {
                "summary": "A Sentry SDK's envelope: check_in items are runs of tasks, every other item is dropped",
                "security": [{"sentry_auth": []}, {"sentry_key": []}],
                "parameters": [
                    {"name": "project_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}},
                    {
                        "name": "Content-Encoding",
                        "in": "header",
                        "schema": {"type": "string", "enum": ["identity", "gzip", "deflate", "br"]},
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        media: {"schema": {"type": "string", "format": "binary"}}
                        for media in ("application/x-sentry-envelope", "application/octet-stream")
                    },
                },
                "responses": {
                    **_sentry_answer("200", "accepted; its id is the envelope's event_id"),
                    **_sentry_errors(400, 401, 403, 404, 409, 413, 415, 429, 503),
                },
            }
        },
        "/api/{project_id}/cron/{monitor_slug}/{key}/": {
            method: {
                "summary": "A Sentry check-in by plain HTTP, with an optional monitor_config",
                "parameters": [
                    {"name": "project_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}},
                    {"name": "monitor_slug", "in": "path", "required": True, "schema": _text(128)},
                    {"name": "key", "in": "path", "required": True, "schema": {"type": "string"}},
                    {
                        "name": "status",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "enum": ["in_progress", "ok", "error"]},
                    },
                    {"name": "check_in_id", "in": "query", "schema": execution_id},
                ],
                **(
                    {
                        "requestBody": {
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {"monitor_config": {"type": ["object", "null"]}},
                                    }
                                }
                            }
                        }
                    }
                    if method == "post"
                    else {}
                ),
                "responses": _sentry_answer("202", "the check-in's id, to close it with")
                | _sentry_errors(400, 401, 403, 404, 409, 413, 415, 429, 503),
            }
            for method in ("get", "post")
        },
        **{
            path: {
                "get": {
                    "summary": summary,
                    "security": read_security,
                    "parameters": parameters,
                    "responses": {
                        code: {"description": text, "content": {"text/html": {"schema": {"type": "string"}}}}
                        for code, text in (
                            ("200", "the page"),
                            ("400", "a bad filter"),
                            ("401", "the metrics token, as a basic-auth password"),
                            ("404", "no such task or execution"),
                            ("503", "the store is unavailable"),
                        )
                    },
                }
            }
            for path, summary, parameters in (
                (
                    "/",
                    "Status page: the tasks and the executions",
                    [
                        {"name": "status", "in": "query", "schema": {"type": "string", "enum": ["", *STATUSES]}},
                        {"name": "task_name", "in": "query", "schema": {"type": "string"}},
                    ],
                ),
                (
                    "/tasks/{task_name}",
                    "Status page of one task",
                    [{"name": "task_name", "in": "path", "required": True, "schema": {"type": "string"}}],
                ),
                (
                    "/executions/{execution_id}",
                    "Status page of one execution",
                    [{"name": "execution_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                ),
            )
        },
        **{
            path: {
                "post": {
                    "summary": summary,
                    "security": read_security,
                    "parameters": [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}],
                    **(
                        {}
                        if not path.endswith("/pause")
                        else {
                            "requestBody": {
                                "required": False,
                                "content": {
                                    "application/x-www-form-urlencoded": {
                                        "schema": {
                                            "type": "object",
                                            "properties": {
                                                "seconds": {
                                                    "type": "string",
                                                    "pattern": "^([1-9][0-9]{0,6})?$",
                                                    "description": "how long the pause lasts; empty: until resumed",
                                                }
                                            },
                                        }
                                    }
                                },
                            }
                        }
                    ),
                    "responses": {
                        code: {"description": text, "content": {"text/html": {"schema": {"type": "string"}}}}
                        for code, text in (
                            ("303", "done: back to the page"),
                            ("400", "a bad number of seconds"),
                            ("401", "a fleet token, as a basic-auth password"),
                            ("403", "a form of another site"),
                            ("404", "no such task or execution"),
                            ("409", "the execution still runs"),
                            ("503", "the store is unavailable"),
                        )
                    },
                }
            }
            for path, name, summary in (
                ("/tasks/{task_name}/pause", "task_name", "The task page's form: pause the task (seconds, or none)"),
                ("/tasks/{task_name}/resume", "task_name", "The task page's form: resume the task"),
                (
                    "/executions/{execution_id}/forget",
                    "execution_id",
                    "The execution page's form: forget an ended or lost execution",
                ),
            )
        },
        "/runbooks": {
            "get": {
                "summary": "What to do for each alert: one anchor per alert, open to all",
                "responses": {
                    "200": {"description": "the runbooks", "content": {"text/html": {"schema": {"type": "string"}}}}
                },
            }
        },
        "/healthz": {"get": {"summary": "Alive", "responses": _ok("Health", "alive")}},
        "/readyz": {
            "get": {"summary": "Ready: the store takes writes", "responses": {**_ok("Health", "ready"), **_errors(503)}}
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Heartbeat Bridge",
            "version": __version__,
            "description": "Heartbeats and completions from task containers, as metrics and traces.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "sentry_auth": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Sentry-Auth",
                    "description": "Sentry sentry_key=<key>, ...",
                },
                "sentry_key": {"type": "apiKey", "in": "query", "name": "sentry_key"},
            },
        },
    }
