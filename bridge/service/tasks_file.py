"""``BRIDGE_TASKS_FILE``: task declarations in YAML, checked strictly, re-read when it changes.

    tasks:
      - name: nightly-crawl
        schedule: "0 2 * * *"
        timezone: Europe/Berlin
        start_grace_seconds: 900
        labels: {team: crawling}
      - name: hourly-etl
        period_seconds: 3600
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import yaml

from ..core.declarations import DeclarationError, TaskDeclaration, parse_declaration
from ..core.executions import OTHER_TASK

__all__ = ["TasksFile", "parse_tasks"]

log = logging.getLogger(__name__)

MAX_TASK_NAME = 128


def parse_tasks(text: str) -> dict[str, TaskDeclaration]:
    """Return the declarations in the YAML ``text``, by task name, in the file's order.

    Raises :class:`DeclarationError` naming the task (when it has a name) and the field:
    YAML that does not parse, a document that is not ``tasks: [...]``, an entry without a
    valid name, a name given twice, or any field :func:`parse_declaration` refuses.
    """
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DeclarationError(f"is not valid YAML: {exc}", "file") from None
    if document is None:
        return {}
    if not isinstance(document, dict) or set(document) - {"tasks"}:
        raise DeclarationError("the file must hold one key, tasks: a list of declarations", "tasks")
    entries = document.get("tasks") or []
    if not isinstance(entries, list):
        raise DeclarationError("must be a list of declarations", "tasks")
    declarations: dict[str, TaskDeclaration] = {}
    for position, entry in enumerate(entries, 1):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_TASK_NAME or name == OTHER_TASK \
                or any(ord(c) < 32 or ord(c) == 127 for c in name):
            raise DeclarationError(f"declaration {position} needs a name: text of at most {MAX_TASK_NAME} "
                                   f"characters (not {OTHER_TASK})", "name", name if isinstance(name, str) else None)
        if name in declarations:
            raise DeclarationError("is declared twice", "name", name)
        declarations[name] = parse_declaration({k: v for k, v in entry.items() if k != "name"}, name)
    return declarations


@dataclass(frozen=True)
class _Stamp:
    device: int
    inode: int
    size: int
    modified: int


class TasksFile:
    """The tasks file at ``path``: read once at start, and again whenever it changes."""

    def __init__(self, path: str):
        self.path = path
        self._stamp: _Stamp | None = None

    def _current_stamp(self) -> _Stamp | None:
        try:
            status = os.stat(self.path)
        except OSError:
            return None
        return _Stamp(status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)

    def read(self) -> dict[str, TaskDeclaration]:
        """Return the file's declarations. Raises :class:`OSError` or :class:`DeclarationError`."""
        stamp = self._current_stamp()
        with open(self.path, encoding="utf-8") as file:
            declarations = parse_tasks(file.read())
        self._stamp = stamp
        return declarations

    def forget(self) -> None:
        """Forget that the file was read: the next look reads it again."""
        self._stamp = None

    def read_if_changed(self) -> dict[str, TaskDeclaration] | None:
        """Return the declarations when the file changed since it was last read, else None.

        A file that cannot be read or checked now is logged and left for the next look:
        the declarations already applied stay.
        """
        stamp = self._current_stamp()
        if stamp is None or stamp == self._stamp:
            return None
        try:
            return self.read()
        except (OSError, DeclarationError) as exc:
            log.error("BRIDGE_TASKS_FILE %s: %s; the declarations read before stay", self.path, exc)
            self._stamp = stamp  # said once, not at every look
            return None
