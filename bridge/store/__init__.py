"""Stores: where execution state lives. :func:`open_store` picks one from the URL."""

from __future__ import annotations

from ..config import Settings
from .base import OTHER_TASK, CapacityError, ExecutionRow, Snapshot, Store, StoreUnavailable
from .group import GroupCommit
from .sqlite import SQLiteStore, path_from_url

__all__ = ["CapacityError", "ExecutionRow", "GroupCommit", "OTHER_TASK", "Snapshot", "Store",
           "StoreUnavailable", "open_store"]


def open_store(settings: Settings) -> Store:
    """Return the store named by ``settings.store_url``. Raises :class:`StoreUnavailable`."""
    if not settings.store_url.startswith("sqlite:"):
        from .redis import RedisStore  # only scale-out deployments need the client loaded

        return RedisStore(settings.store_url, max_executions=settings.max_executions,
                          max_task_names=settings.max_task_names, dedup_seconds=settings.dedup_seconds,
                          task_retention=settings.task_retention_seconds)
    return SQLiteStore(path_from_url(settings.store_url),
                       max_executions=settings.max_executions,
                       max_task_names=settings.max_task_names,
                       dedup_seconds=settings.dedup_seconds,
                       task_retention=settings.task_retention_seconds,
                       synchronous=settings.sqlite_synchronous,
                       busy_timeout=settings.sqlite_busy_timeout_seconds)
