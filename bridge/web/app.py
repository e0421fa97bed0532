"""The Flask application factory; gunicorn runs ``bridge.web:create_app()``."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from flask import Flask

from ..service.alertmanager import AlertmanagerView
from ..service.config import load_settings
from ..service.monitor import Monitor, rules_from
from ..service.reaper import Reaper
from ..service.tasks_file import TasksFile
from ..store import open_store
from ..telemetry.metrics import ExecutionRenderer, Exposition
from . import errors, executions, fastpath, ingest, ops, pages, pings, sentry, tasks
from .auth import Authorizer
from .extension import EXTENSION_KEY, Bridge
from .jsonprovider import FastJSONProvider
from .validation import Limits

__all__ = ["create_app"]


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Return a configured app; starts no threads (gunicorn's hooks start the reaper).

    ``test_config`` may hold ``SETTINGS`` (a :class:`~bridge.service.config.Settings`, else read
    from the environment), ``CLOCK`` (a time function; also the monotonic clock unless
    ``MONOTONIC`` is given), ``TRACER_PROVIDER`` (from
    :func:`bridge.telemetry.tracing.new_provider`) and Flask keys such as ``TESTING``.
    Raises :class:`~bridge.core.errors.ConfigError` for a bad ``BRIDGE_*`` value.
    """
    test_config = dict(test_config or {})
    settings = test_config.pop("SETTINGS", None) or load_settings()
    clock = test_config.pop("CLOCK", time.time)
    # A test's clock is the only one: moved by hand, it must not read as a clock step.
    monotonic = test_config.pop("MONOTONIC", time.monotonic if clock is time.time else clock)
    tracer_provider = test_config.pop("TRACER_PROVIDER", None)
    _configure_logging(settings.log_level)

    app = Flask(__name__)
    # "//" in a path is a client's mistake (a base URL ending in "/"): a 404 that names the
    # path says so, where werkzeug's default answers a 308 redirect some clients drop.
    app.url_map.merge_slashes = False
    app.json = FastJSONProvider(app)
    # The largest body any endpoint takes; each endpoint enforces its own limit.
    app.config.update(MAX_CONTENT_LENGTH=max(settings.max_body_bytes, settings.max_batch_body_bytes))
    app.config.update(test_config)

    store = open_store(settings, ExecutionRenderer(settings.metric_labels))
    monitor = Monitor(store, rules_from(settings), clock, monotonic=monotonic)
    if settings.tasks_file is not None:
        monitor.tasks_file = TasksFile(settings.tasks_file)
    if tracer_provider is not None:
        from ..telemetry.tracing import ExecutionSpans

        monitor.spans = ExecutionSpans(tracer_provider, on_error=lambda: monitor.telemetry_error("build"))
    app.extensions[EXTENSION_KEY] = Bridge(
        settings=settings,
        monitor=monitor,
        exposition=Exposition(store, clock, settings.metric_labels),
        reaper=Reaper(monitor, settings.reaper_interval_seconds),
        limits=Limits(max_field_bytes=settings.max_field_bytes),
        authorizer=Authorizer(settings),
        tracer_provider=tracer_provider,
        alertmanager=AlertmanagerView(settings.alertmanager_url) if settings.alertmanager_url else None,
    )

    errors.init_app(app)
    app.register_blueprint(ingest.bp)
    app.register_blueprint(executions.bp)
    app.register_blueprint(ops.bp)
    app.register_blueprint(tasks.bp)
    app.register_blueprint(pings.bp)
    app.register_blueprint(sentry.bp)
    app.register_blueprint(pages.bp)
    fastpath.init_app(app)
    return app


def _configure_logging(level: str) -> None:
    logger = logging.getLogger("bridge")
    logger.setLevel(level)
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
