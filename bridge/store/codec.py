"""How a store writes a record: a compact JSON array, and the row the scrape reads beside it."""

from __future__ import annotations

from collections.abc import Sequence

from ..core import jsoncodec
from ..core.executions import Execution
from ..core.tasks import Task
from .base import ExecutionRow

__all__ = ["decode_record", "decode_rows", "decode_task", "encode_record", "encode_row", "encode_task"]


def encode_record(record: Execution) -> str:
    """Return ``record`` as stored: the JSON array of its values (see ``Execution.to_values``)."""
    return jsoncodec.dumps(record.to_values())


def decode_record(data: str | bytes) -> Execution:
    """Return the record :func:`encode_record` stored; also reads the JSON objects of earlier versions."""
    values = jsoncodec.loads(data)
    return Execution.from_values(values) if isinstance(values, list) else Execution.from_dict(values)


def encode_row(record: Execution) -> str:
    """Return the compact JSON array of ``record``'s :class:`ExecutionRow`."""
    return jsoncodec.dumps([record.execution_id, record.status, record.metric_task_name, record.container_id,
                            record.task_type, record.trace_id, record.container_name, record.image,
                            record.started_at, record.last_heartbeat_at, record.ended_at,
                            record.interval_seconds, record.progress_ratio, record.max_runtime_seconds,
                            record.labels])


def decode_rows(encoded: Sequence[str]) -> list[ExecutionRow]:
    """Return the rows of many :func:`encode_row` strings, parsed in one call."""
    # A row's numbers are times, ratios and intervals, never long integers.
    return [ExecutionRow(*values)
            for values in jsoncodec.loads("[" + ",".join(encoded) + "]", long_integers=False)]


def encode_task(task: Task) -> str:
    """Return ``task`` as stored: the JSON array of its values (see ``Task.to_values``)."""
    return jsoncodec.dumps(task.to_values())


def decode_task(data: str | bytes) -> Task:
    """Return the task :func:`encode_task` stored."""
    return Task.from_values(jsoncodec.loads(data))
