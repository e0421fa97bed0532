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

import os
from dataclasses import dataclass

import yaml

from ..core import inputs
from ..core.declarations import DeclarationError, TaskDeclaration, parse_declaration
from ..core.errors import InvalidInput

__all__ = ["TasksFile", "parse_tasks"]


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
        raw_name = entry.get("name") if isinstance(entry, dict) else None
        try:
            name = inputs.task_name(raw_name, "name", required=True)
        except InvalidInput as exc:
            raise DeclarationError(
                f"of declaration {position}: {exc.message}", "name", raw_name if isinstance(raw_name, str) else None
            ) from None
        assert name is not None
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


_MISSING = _Stamp(0, 0, -1, 0)


class TasksFile:
    """The tasks file at ``path``: read once at start, and again whenever it changes.

    A change is read once the file has held still from one look to the next. An editor or
    ``echo > tasks.yml`` truncates the file before writing it, and a look in between would
    otherwise read no tasks and withdraw every declaration.
    """

    def __init__(self, path: str):
        self.path = path
        self._stamp: _Stamp | None = None  # the version applied, or said to be wrong
        self._changing: _Stamp | None = None  # a new version seen at the last look, not yet read

    def _current_stamp(self) -> _Stamp:
        try:
            status = os.stat(self.path)
        except OSError:
            return _MISSING
        return _Stamp(status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)

    def _read_bytes(self) -> bytes:
        try:
            with open(self.path, "rb") as file:
                return file.read()
        except OSError as exc:
            raise DeclarationError(f"cannot be read: {exc.strerror}", "file") from None

    def read(self) -> dict[str, TaskDeclaration]:
        """Return the file's declarations. Raises :class:`DeclarationError` for a file that
        cannot be read, is not UTF-8, or does not check (its ``field`` is ``file`` for the first two)."""
        stamp = self._current_stamp()
        raw = self._read_bytes()
        declarations = _parse(raw)
        self._stamp = stamp
        return declarations

    def forget(self) -> None:
        """Forget that the file was read: the next look reads it again."""
        self._stamp = None

    def read_if_changed(self) -> dict[str, TaskDeclaration] | None:
        """Return the declarations when the file changed since it was last read and has held
        still since the look before (or was never read), else None.

        Raises :class:`DeclarationError` once for each change that leaves the file unreadable
        or wrong: the caller keeps the declarations it applied before.
        """
        stamp = self._current_stamp()
        if stamp == self._stamp:
            return None
        if self._stamp is not None and stamp != self._changing:
            self._changing = stamp
            return None
        read: bytes | DeclarationError
        try:
            read = self._read_bytes()
        except DeclarationError as exc:
            read = exc
        after = self._current_stamp()
        if after != stamp:  # written to while it was read
            self._changing = after
            return None
        self._stamp = stamp  # a bad file is said once, not at every look
        if isinstance(read, DeclarationError):
            raise read
        return _parse(read)


def _parse(raw: bytes) -> dict[str, TaskDeclaration]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DeclarationError(f"is not UTF-8 text (byte {exc.start})", "file") from None
    return parse_tasks(text)
