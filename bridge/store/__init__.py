"""Stores: where execution state lives. :func:`open_store` picks one from the URL."""

from __future__ import annotations

from typing import Protocol

from .base import (
    OTHER_TASK,
    CapacityError,
    Decide,
    DecideTask,
    Rendering,
    Snapshot,
    Store,
    StoreUnavailable,
    admitted,
)
from .group import GroupCommit
from .sqlite import SQLiteStore, path_from_url


class StoreSettings(Protocol):
    """What a store is opened with (the service's settings hold it): the store needs nothing
    else of the layers above it."""

    @property
    def store_url(self) -> str: ...
    @property
    def max_executions(self) -> int: ...
    @property
    def max_task_names(self) -> int: ...
    @property
    def dedup_seconds(self) -> float: ...
    @property
    def task_retention_seconds(self) -> float: ...
    @property
    def sqlite_synchronous(self) -> str: ...
    @property
    def sqlite_busy_timeout_seconds(self) -> float: ...


__all__ = [
    "OTHER_TASK",
    "CapacityError",
    "Decide",
    "DecideTask",
    "GroupCommit",
    "Rendering",
    "Snapshot",
    "Store",
    "StoreSettings",
    "StoreUnavailable",
    "admitted",
    "open_store",
]


def open_store(settings: StoreSettings, render: Rendering) -> Store:
    """Return the store named by ``settings.store_url``, keeping each execution's exposition
    text as ``render`` writes it. Raises :class:`StoreUnavailable`."""
    if not settings.store_url.startswith("sqlite:"):
        try:
            from .redis import RedisStore  # only scale-out deployments need the client loaded
        except ImportError as exc:
            raise StoreUnavailable(
                f"{settings.store_url.split(':', 1)[0]}: stores need the Redis client: "
                f"pip install 'heartbeat-bridge[redis]' ({exc})"
            ) from None

        return RedisStore(
            settings.store_url,
            render=render,
            max_executions=settings.max_executions,
            max_task_names=settings.max_task_names,
            dedup_seconds=settings.dedup_seconds,
            task_retention=settings.task_retention_seconds,
        )
    return SQLiteStore(
        path_from_url(settings.store_url),
        render=render,
        max_executions=settings.max_executions,
        max_task_names=settings.max_task_names,
        dedup_seconds=settings.dedup_seconds,
        task_retention=settings.task_retention_seconds,
        synchronous=settings.sqlite_synchronous,
        busy_timeout=settings.sqlite_busy_timeout_seconds,
    )
