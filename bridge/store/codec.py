"""How a store writes a record: a compact JSON array."""

from __future__ import annotations

from ..core import jsoncodec
from ..core.executions import Execution
from ..core.tasks import Task

__all__ = ["decode_record", "decode_task", "encode_record", "encode_task"]


def encode_record(record: Execution) -> str:
    """Return ``record`` as stored: the JSON array of its values (see ``Execution.to_values``)."""
    return jsoncodec.dumps(record.to_values())


def decode_record(data: str | bytes) -> Execution:
    """Return the record :func:`encode_record` stored; also reads the JSON objects of earlier versions."""
    values = jsoncodec.loads(data)
    return Execution.from_values(values) if isinstance(values, list) else Execution.from_dict(values)


def encode_task(task: Task) -> str:
    """Return ``task`` as stored: the JSON array of its values (see ``Task.to_values``)."""
    return jsoncodec.dumps(task.to_values())


def decode_task(data: str | bytes) -> Task:
    """Return the task :func:`encode_task` stored."""
    return Task.from_values(jsoncodec.loads(data))
