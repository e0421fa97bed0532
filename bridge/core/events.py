"""The validated events a task, its launcher or the Docker agent report about an execution."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .declarations import TaskDeclaration

__all__ = [
    "CONTAINER_EVENTS",
    "REPORTED_STATUSES",
    "Announcement",
    "Completion",
    "ContainerEvent",
    "Heartbeat",
    "RunReport",
]

#: The statuses a heartbeat may report.
REPORTED_STATUSES = ("running", "completed", "failed")
CONTAINER_EVENTS = ("start", "die", "oom")


# Not frozen, unlike the other events: every heartbeat makes one, and a frozen dataclass sets
# each field through object.__setattr__, which made its construction take three times as long.
# Nothing changes a heartbeat after it is parsed.
@dataclass(slots=True)
class Heartbeat:
    """A validated heartbeat: the seed's fields plus the optional extensions."""

    execution_id: str
    container_id: str | None = None
    status: str = "running"
    progress: dict[str, Any] | None = None
    timestamp: float | None = None
    task_name: str | None = None
    task_type: str | None = None
    interval_seconds: float | None = None
    max_runtime_seconds: float | None = None
    labels: dict[str, Any] | None = None
    traceparent: str | None = None
    #: the task's declaration, which an execution's first heartbeat may carry
    task_schedule: TaskDeclaration | None = None
    #: the protocol that reported it when that names tasks, not executions (a ping, a check-in)
    protocol: str | None = None


@dataclass(frozen=True)
class Completion:
    """A validated completion; ``warnings`` say what of it was cut or dropped to keep it."""

    execution_id: str
    success: bool
    container_id: str | None = None
    result_data: dict[str, Any] | None = None
    error_message: str | None = None
    exit_code: int | None = None
    task_name: str | None = None
    warnings: tuple[str, ...] = ()
    #: as :attr:`Heartbeat.protocol`
    protocol: str | None = None


@dataclass(frozen=True)
class ContainerEvent:
    """A validated report from the Docker agent: a task container started, died or ran out of memory."""

    execution_id: str
    event: str
    container_id: str | None = None
    container_name: str | None = None
    image: str | None = None
    exit_code: int | None = None
    oom_killed: bool = False
    #: from the container's labels, or the task's config file mounted into it
    task_name: str | None = None
    task_type: str | None = None


@dataclass(frozen=True)
class Announcement:
    """A launcher's word that an execution of a task is about to start in a container."""

    execution_id: str
    task_name: str | None = None
    task_type: str | None = None
    labels: dict[str, Any] | None = None
    interval_seconds: float | None = None
    max_runtime_seconds: float | None = None


@dataclass(frozen=True)
class RunReport:
    """A run of a task, reported by a protocol that names tasks rather than executions
    (Healthchecks pings, Sentry check-ins).

    ``run_id`` is the client's id of the run (a ping's ``rid``, a check-in's id); without
    one, a start opens a run the bridge names ``<protocol>.<random hex>`` unless one so named
    is running (then the start restarts it), and an end or a log line belongs to the task's
    newest such run that is still running (an end with none is a run of its own).
    ``run_field`` names where the client gave the run id, for refusals.
    """

    task_name: str
    phase: str
    protocol: str
    run_id: str | None = None
    #: the log line, or the failure's error message
    message: str | None = None
    exit_code: int | None = None
    result_data: dict[str, Any] | None = None
    run_field: str = "run_id"
    #: what of the report was cut to keep it (a long message)
    warnings: tuple[str, ...] = ()
