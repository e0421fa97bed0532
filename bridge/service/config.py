"""Settings from ``BRIDGE_*`` environment variables, parsed strictly at start.

A bad value stops the start with a message that names the variable; the README's
configuration table lists every variable defined here.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from ..core import inputs
from ..core.declarations import DeclarationError
from ..core.errors import ConfigError, InvalidInput
from ..core.executions import (
    DEFAULT_INTERVAL_SECONDS,
    DEFAULT_LOST_AFTER_INTERVALS,
    DEFAULT_RETENTION_SECONDS,
    DEFAULT_STARTUP_GRACE_SECONDS,
)
from ..store.base import DEFAULT_DEDUP_SECONDS, DEFAULT_TASK_RETENTION_SECONDS
from ..store.sqlite import DEFAULT_BUSY_TIMEOUT_SECONDS

__all__ = [
    "VARIABLES",
    "ConfigError",
    "Settings",
    "check_tasks_file",
    "describe",
    "load_settings",
    "parse_bind",
    "unknown_variables",
]

log = logging.getLogger(__name__)

DEFAULT_STORE_URL = "sqlite:///data/bridge.db"
DEFAULT_BIND = "127.0.0.1:8000"
#: How long a client has to send a whole request (its head and a buffered body).
DEFAULT_READ_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class Settings:
    """Validated configuration; every field maps to one ``BRIDGE_*`` variable."""

    store_url: str = DEFAULT_STORE_URL
    bind: str = DEFAULT_BIND
    workers: int = 2
    threads: int = 8
    default_interval_seconds: float = DEFAULT_INTERVAL_SECONDS
    lost_after_intervals: float = DEFAULT_LOST_AFTER_INTERVALS
    reaper_interval_seconds: float = 5.0
    retention_seconds: float = DEFAULT_RETENTION_SECONDS
    dedup_seconds: float = DEFAULT_DEDUP_SECONDS
    task_retention_seconds: float = DEFAULT_TASK_RETENTION_SECONDS
    startup_grace_seconds: float = DEFAULT_STARTUP_GRACE_SECONDS
    max_executions: int = 100_000
    max_task_names: int = 200
    max_body_bytes: int = 65_536
    max_batch_items: int = 1000
    max_batch_body_bytes: int = 4_194_304
    max_field_bytes: int = inputs.DEFAULT_MAX_FIELD_BYTES
    sqlite_synchronous: str = "NORMAL"
    sqlite_busy_timeout_seconds: float = DEFAULT_BUSY_TIMEOUT_SECONDS
    request_read_timeout_seconds: float = DEFAULT_READ_TIMEOUT_SECONDS
    log_level: str = "INFO"
    auth_tokens: tuple[str, ...] = ()
    metrics_token: str | None = None
    execution_token_secret: str | None = None
    tasks_file: str | None = None
    metric_labels: tuple[str, ...] = ()
    trace_url: str | None = None
    external_url: str | None = None
    ping_keys: tuple[str, ...] = ()
    ping_body_bytes: int = 10_000
    sentry_keys: tuple[str, ...] = ()
    alertmanager_url: str | None = None


def _integer(low: int, high: int) -> Callable[[str, str], int]:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
        if not low <= value <= high:
            raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
        return value

    return parse


def _number(low: float, high: float) -> Callable[[str, str], float]:
    def parse(name: str, raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {raw!r}") from None
        if not low <= value <= high:  # also rejects nan
            raise ConfigError(f"{name} must be between {low:g} and {high:g}, got {raw.strip()}")
        return value

    return parse


def _choice(*allowed: str) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = raw.strip().upper()
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {raw!r}")
        return value

    return parse


def _store_url(name: str, raw: str) -> str:
    value = raw.strip()
    path = value[len("sqlite:///") :] if value.startswith("sqlite:///") else ""
    if path and path != ":memory:":
        return value
    if value.startswith(("redis://", "rediss://", "unix://")) and len(value.split("://", 1)[1]) > 0:
        return value
    raise ConfigError(
        f"{name} must be sqlite:///relative/path, sqlite:////absolute/path or redis://host:port/db, got {raw!r}"
    )


def parse_bind(name: str, raw: str) -> str:
    """Return ``raw`` as a ``HOST:PORT`` address. Raises :class:`ConfigError` naming ``name``."""
    value = raw.strip()
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{name} must be HOST:PORT, got {raw!r}")
    return value


MIN_SECRET_LENGTH = 16


def _secret(name: str, raw: str) -> str:
    value = raw.strip()
    if len(value) < MIN_SECRET_LENGTH or any(c.isspace() for c in value):
        raise ConfigError(f"{name} must be at least {MIN_SECRET_LENGTH} characters without spaces")
    return value


def _tokens(name: str, raw: str) -> tuple[str, ...]:
    return tuple(_secret(name, token) for token in raw.split(",") if token.strip())


def _token_file(name: str, raw: str) -> tuple[str, ...]:
    try:
        with open(raw.strip(), encoding="utf-8") as tokens:
            lines = [line.strip() for line in tokens if line.strip() and not line.startswith("#")]
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {raw.strip()!r}: {exc.strerror}") from None
    return tuple(_secret(name, line) for line in lines)


def _tasks_file(name: str, raw: str) -> str:
    # Only its name here: every worker parses the settings, and a worker that boots after a bad
    # rewrite must still boot. The file is checked once, at start (check_tasks_file), and
    # after that each change is applied or reported by the reaper.
    return raw.strip()


def check_tasks_file(settings: Settings) -> int:
    """Read and check ``BRIDGE_TASKS_FILE`` strictly, as the start does; returns how many tasks
    it declares (0 without one). Raises :class:`ConfigError` naming the task and field."""
    if settings.tasks_file is None:
        return 0
    from .tasks_file import TasksFile  # the YAML reader loads only where a file is declared

    try:
        declared = len(TasksFile(settings.tasks_file).read())
    except DeclarationError as exc:
        raise ConfigError(f"BRIDGE_TASKS_FILE: {settings.tasks_file}: {exc}") from None
    if declared > settings.max_task_names:
        raise ConfigError(
            f"BRIDGE_TASKS_FILE declares {declared} tasks, more than BRIDGE_MAX_TASK_NAMES ({settings.max_task_names})"
        )
    return declared


def _checked(name: str, rule: Callable[[str, str], object], raw: str) -> tuple[str, ...]:
    """Return the comma-separated values of ``raw``, each checked by an input rule."""
    values = tuple(dict.fromkeys(value.strip() for value in raw.split(",") if value.strip()))
    for value in values:
        try:
            rule(value, name)
        except InvalidInput as exc:
            raise ConfigError(f"{exc.message} (got {value[:40]!r})") from None
    return values


def _label_keys(name: str, raw: str) -> tuple[str, ...]:
    return _checked(name, inputs.label_key, raw)


def _ping_keys(name: str, raw: str) -> tuple[str, ...]:
    return _checked(name, inputs.ping_key, raw)


_PUBLIC_KEY = re.compile(r"[0-9a-zA-Z]{8,64}")
_PROJECT = re.compile(r"[0-9]{1,20}")


def _public_keys(name: str, raw: str) -> tuple[str, ...]:
    keys = tuple(dict.fromkeys(key.strip() for key in raw.split(",") if key.strip()))
    for key in keys:
        public, _, project = key.partition("@")
        if not _PUBLIC_KEY.fullmatch(public) or (project and not _PROJECT.fullmatch(project)):
            raise ConfigError(
                f"{name}: {key[:40]!r} is not a Sentry public key (8 to 64 letters and digits), "
                "optionally bound to a project as <key>@<project id>"
            )
    return keys


def _url(name: str, raw: str) -> str:
    url = raw.strip().rstrip("/")
    try:
        inputs.url(url, name)
    except InvalidInput:
        raise ConfigError(f"{name}: {raw[:80]!r} is not an http:// or https:// URL") from None
    return url


def _trace_url(name: str, raw: str) -> str:
    url = _url(name, raw)
    if "{trace_id}" not in url:
        raise ConfigError(f"{name}: {raw[:80]!r} has no {{trace_id}} for the trace's id to go in")
    return url


def describe(settings: Settings) -> str:
    """Return one line saying what the bridge runs with: its store (without credentials),
    processes, authentication and exported labels; no secret appears in it."""
    store = re.sub(r"//[^/@]*@", "//***@", settings.store_url)
    auth = ", ".join(
        part
        for part, on in (
            ("ingest tokens", bool(settings.auth_tokens)),
            ("execution tokens", settings.execution_token_secret is not None),
            ("metrics token", settings.metrics_token is not None),
        )
        if on
    )
    return (
        f"store {store}, {settings.workers} workers x {settings.threads} threads, "
        f"auth {'on (' + auth + ')' if auth else 'off'}"
        f"{', tasks file ' + settings.tasks_file if settings.tasks_file else ''}"
    )


_DAY = 86_400.0

#: variable name -> (Settings field, parser, one line for the README table)
VARIABLES: dict[str, tuple[str, Callable[[str, str], object], str]] = {
    "BRIDGE_STORE_URL": (
        "store_url",
        _store_url,
        "Where state lives: `sqlite:///relative/path`, `sqlite:////absolute/path` or `redis://host:port/db`.",
    ),
    "BRIDGE_BIND": ("bind", parse_bind, "Address `heartbeat-bridge serve` listens on (`--bind` wins)."),
    "BRIDGE_WORKERS": ("workers", _integer(1, 64), "gunicorn worker processes."),
    "BRIDGE_THREADS": ("threads", _integer(1, 256), "Request threads per worker (gunicorn gthread)."),
    "BRIDGE_DEFAULT_INTERVAL_SECONDS": (
        "default_interval_seconds",
        _number(1, _DAY),
        "Heartbeat interval assumed until one is sent or learned.",
    ),
    "BRIDGE_LOST_AFTER_INTERVALS": (
        "lost_after_intervals",
        _number(1, 100),
        "Silent intervals after which a running execution is `lost`.",
    ),
    "BRIDGE_REAPER_INTERVAL_SECONDS": (
        "reaper_interval_seconds",
        _number(0.05, 3600),
        "How often each worker looks for overdue and expired executions.",
    ),
    "BRIDGE_RETENTION_SECONDS": (
        "retention_seconds",
        _number(0, 90 * _DAY),
        "How long finished or lost executions stay visible.",
    ),
    "BRIDGE_DEDUP_SECONDS": (
        "dedup_seconds",
        _number(0, 90 * _DAY),
        "How long the ids of finished executions are remembered after their retention, so that a late repeat (a retried completion, a replayed container death) is a duplicate, not a new execution.",
    ),
    "BRIDGE_TASK_RETENTION_SECONDS": (
        "task_retention_seconds",
        _number(0, 366 * _DAY),
        "How long a task name keeps its slot (and its counters) after its last execution left; then a new name may take it.",
    ),
    "BRIDGE_STARTUP_GRACE_SECONDS": (
        "startup_grace_seconds",
        _number(1, _DAY),
        "How long a container the agent saw start may stay silent before it is `lost`.",
    ),
    "BRIDGE_MAX_EXECUTIONS": (
        "max_executions",
        _integer(1, 10_000_000),
        "Executions tracked at most; new ones beyond get 429.",
    ),
    "BRIDGE_MAX_TASK_NAMES": (
        "max_task_names",
        _integer(1, 100_000),
        "Distinct `task_name` label values; later names become `_other`.",
    ),
    "BRIDGE_MAX_BODY_BYTES": (
        "max_body_bytes",
        _integer(1024, 64 * 1024 * 1024),
        "Largest request body; larger gets 413.",
    ),
    "BRIDGE_MAX_BATCH_ITEMS": (
        "max_batch_items",
        _integer(1, 100_000),
        "Most heartbeats in one `POST .../heartbeats`; more gets 413.",
    ),
    "BRIDGE_MAX_BATCH_BODY_BYTES": (
        "max_batch_body_bytes",
        _integer(1024, 256 * 1024 * 1024),
        "Largest batch request body; larger gets 413.",
    ),
    "BRIDGE_MAX_FIELD_BYTES": (
        "max_field_bytes",
        _integer(256, 16 * 1024 * 1024),
        "Largest `progress` or `result_data` as JSON; larger gets 413.",
    ),
    "BRIDGE_SQLITE_SYNCHRONOUS": (
        "sqlite_synchronous",
        _choice("NORMAL", "FULL"),
        "SQLite `synchronous`: NORMAL survives a crash of the service, FULL also a power cut.",
    ),
    "BRIDGE_SQLITE_BUSY_TIMEOUT_SECONDS": (
        "sqlite_busy_timeout_seconds",
        _number(0.01, 600),
        "How long a write waits for the store's write lock before answering 503.",
    ),
    "BRIDGE_REQUEST_READ_TIMEOUT_SECONDS": (
        "request_read_timeout_seconds",
        _number(0.1, 600),
        "How long a client may take to send a whole request (head and body) before it gets 408 and its connection is closed; a stalled client holds no request thread meanwhile.",
    ),
    "BRIDGE_AUTH_TOKENS": (
        "auth_tokens",
        _tokens,
        "Bearer tokens (comma-separated, 16+ characters) the ingest API accepts for any execution; unset: no token needed.",
    ),
    "BRIDGE_AUTH_TOKENS_FILE": (
        "auth_tokens",
        _token_file,
        "A file of such tokens, one per line (added to `BRIDGE_AUTH_TOKENS`).",
    ),
    "BRIDGE_METRICS_TOKEN": (
        "metrics_token",
        _secret,
        "Bearer token `/metrics` and the query API require; unset: open.",
    ),
    "BRIDGE_EXECUTION_TOKEN_SECRET": (
        "execution_token_secret",
        _secret,
        "Secret of per-execution tokens, `HMAC-SHA256(secret, execution_id)`: such a token reports for its own execution only.",
    ),
    "BRIDGE_LOG_LEVEL": (
        "log_level",
        _choice("DEBUG", "INFO", "WARNING", "ERROR"),
        "Log level of the `bridge` loggers.",
    ),
    "BRIDGE_TASKS_FILE": (
        "tasks_file",
        _tasks_file,
        "A YAML file of task declarations (`tasks: [{name: ..., schedule: ...}]`), checked at start (a bad one stops it) and re-read when it changes (a bad rewrite keeps the declarations in force: `bridge_tasks_file_reload_success` 0).",
    ),
    "BRIDGE_PING_KEYS": (
        "ping_keys",
        _ping_keys,
        "Ping keys of the Healthchecks slug URLs `/ping/<ping_key>/<slug>` (comma-separated); unset: only `/ping/<uuid>` URLs.",
    ),
    "BRIDGE_PING_BODY_BYTES": (
        "ping_body_bytes",
        _integer(0, 1_048_576),
        "How much of a ping's body is kept as its log line or error message (`Ping-Body-Limit`).",
    ),
    "BRIDGE_SENTRY_KEYS": (
        "sentry_keys",
        _public_keys,
        "Public keys (of the DSN) Sentry check-ins must carry, comma-separated, each optionally bound to one project as `<key>@<project id>`; unset: any key, any project.",
    ),
    "BRIDGE_TRACE_URL": (
        "trace_url",
        _trace_url,
        "A trace viewer's URL with `{trace_id}` in it (`https://tempo.example/trace/{trace_id}`): the status pages link each execution's trace there.",
    ),
    "BRIDGE_EXTERNAL_URL": (
        "external_url",
        _url,
        "The bridge's URL as people reach it (`https://bridge.example`): `heartbeat-bridge rules` links each execution alert to its status page there.",
    ),
    "BRIDGE_ALERTMANAGER_URL": (
        "alertmanager_url",
        _url,
        "Alertmanager's URL (`http://alertmanager:9093`): the status pages list the alerts firing or silenced for each task and execution, read from its v2 API.",
    ),
    "BRIDGE_METRIC_LABELS": (
        "metric_labels",
        _label_keys,
        "Keys of task and execution `labels` exported as `label_<key>` on `task_info` and `task_execution_info` (comma-separated).",
    ),
}


#: Whether this process (or the one it was forked from) has said which variables are unknown.
_unknown_reported = False


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """Return one warning per ``BRIDGE_*`` name of ``environ`` that is no setting, with the
    closest setting's name when one is close."""
    warnings = []
    for name in sorted(environ):
        if name.startswith("BRIDGE_") and name not in VARIABLES:
            close = difflib.get_close_matches(name, VARIABLES, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            warnings.append(f"ignoring unknown variable {name}{hint}")
    return warnings


def load_settings(
    environ: Mapping[str, str] | None = None, *, warn_unknown: bool = True, **overrides: object
) -> Settings:
    """Parse the ``BRIDGE_*`` variables of ``environ`` (default ``os.environ``).

    Returns the validated :class:`Settings`, with ``overrides`` (field names) applied last.
    Raises :class:`ConfigError` naming the first variable whose value is invalid.
    Unknown ``BRIDGE_*`` names are logged, not fatal: orchestrators such as Kubernetes
    inject variables like ``BRIDGE_PORT`` for a service named ``bridge``. They are logged
    once per process tree: not again in a forked worker, nor at all with ``warn_unknown``
    False, where the caller says it reports them (:func:`unknown_variables`).
    """
    global _unknown_reported
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name, (field, parse, _doc) in VARIABLES.items():
        raw = environ.get(name)
        if raw is not None and raw.strip() != "":
            value = parse(name, raw)
            # Two variables feed the token list; the others set their field alone.
            values[field] = values.get(field, ()) + value if field == "auth_tokens" else value
    if warn_unknown and not _unknown_reported:
        for warning in unknown_variables(environ):
            log.warning("%s", warning)
    _unknown_reported = True
    known = {f.name for f in fields(Settings)}
    unknown = set(overrides) - known
    if unknown:
        raise TypeError(f"unknown settings: {sorted(unknown)}")
    values.update(overrides)
    return Settings(**values)
