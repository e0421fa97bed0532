"""The embedded store: one SQLite file in WAL mode, shared by every gunicorn worker.

Each event runs in a ``BEGIN IMMEDIATE`` transaction, which SQLite serialises across
processes, so the read-decide-write of :meth:`SQLiteStore.apply` is a true
compare-and-set. Connections are per thread and per process (never inherited
across a fork); a failed connection is dropped so the next call reconnects.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from contextlib import contextmanager
from typing import Iterator, Sequence

from ..state import UNKNOWN_TASK, Execution, Outcome
from .base import (OTHER_TASK, CapacityError, Decide, Snapshot, Store, StoreUnavailable, decode_rows,
                   encode_row)

__all__ = ["SQLiteStore", "path_from_url"]

log = logging.getLogger(__name__)

DEFAULT_BUSY_TIMEOUT_SECONDS = 5.0
#: Less free space than this beside the file and the store is not ready: writes would fail.
MIN_FREE_BYTES = 1024 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS executions (
    execution_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    task_name TEXT,
    deadline_at REAL,
    expires_at REAL,
    version INTEGER NOT NULL,
    data TEXT NOT NULL,
    metric_row TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS executions_deadline ON executions(deadline_at)
    WHERE deadline_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS executions_expiry ON executions(expires_at)
    WHERE expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS executions_status ON executions(status, execution_id);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT NOT NULL,
    labels TEXT NOT NULL,
    value REAL NOT NULL,
    exemplar TEXT,
    PRIMARY KEY (name, labels)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS task_names (name TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta VALUES ('tracked', 0);
"""


def path_from_url(url: str) -> str:
    """Return the file path of ``sqlite:///relative`` or ``sqlite:////absolute`` URLs."""
    return url[len("sqlite:///"):]


def _encode(record: Execution) -> str:
    return json.dumps(record.to_dict(), ensure_ascii=False, separators=(",", ":"))


def _decode(data: str) -> Execution:
    return Execution.from_dict(json.loads(data))


class SQLiteStore(Store):
    """A :class:`Store` in one SQLite file."""

    def __init__(self, path: str, *, max_executions: int, max_task_names: int,
                 synchronous: str = "NORMAL",
                 busy_timeout: float = DEFAULT_BUSY_TIMEOUT_SECONDS):
        super().__init__(max_executions, max_task_names)
        self.path = path
        self._synchronous = synchronous
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        self._pid = os.getpid()
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            conn = self._connection()
            conn.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")
            self._migrate(conn)
        except (OSError, sqlite3.Error) as exc:
            self._drop_connection()
            raise StoreUnavailable(f"cannot open the store at {path}: {exc}") from exc

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        """Bring a store written by an earlier version up to this schema."""
        counters = {row[1] for row in conn.execute("PRAGMA table_info(counters)")}
        if "exemplar" not in counters:
            conn.execute("ALTER TABLE counters ADD COLUMN exemplar TEXT")
        executions = {row[1] for row in conn.execute("PRAGMA table_info(executions)")}
        if "metric_row" not in executions:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ALTER TABLE executions ADD COLUMN metric_row TEXT")
            for execution_id, data in conn.execute("SELECT execution_id, data FROM executions").fetchall():
                conn.execute("UPDATE executions SET metric_row = ? WHERE execution_id = ?",
                             (encode_row(_decode(data)), execution_id))
            conn.execute("COMMIT")

    # -- connections -------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._pid != os.getpid():  # forked: the parent's connections are not ours
            self._local = threading.local()
            self._pid = os.getpid()
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(f"PRAGMA synchronous={self._synchronous}")
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"cannot open {self.path}: {exc}") from exc
            self._local.conn = conn
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:
                pass

    @contextmanager
    def _transaction(self, mode: str = "IMMEDIATE") -> Iterator[sqlite3.Connection]:
        conn = self._connection()
        try:
            conn.execute(f"BEGIN {mode}")
        except sqlite3.Error as exc:
            self._drop_connection()
            raise StoreUnavailable(f"sqlite: {exc}") from exc
        try:
            yield conn
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            self._rollback(conn)
            raise StoreUnavailable(f"sqlite: {exc}") from exc
        except BaseException:
            self._rollback(conn)
            raise

    def _rollback(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            self._drop_connection()

    def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        try:
            return self._connection().execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            self._drop_connection()
            raise StoreUnavailable(f"sqlite: {exc}") from exc

    # -- the Store interface -------------------------------------------------------

    def apply(self, execution_id: str, decide: Decide) -> Outcome:
        with self._transaction() as conn:
            return self._apply(conn, execution_id, decide)

    def apply_many(self, items: Sequence[tuple[str, Decide]]) -> list[Outcome | CapacityError]:
        # One transaction for the batch; a savepoint per item, so that a refused item
        # (capacity) takes back only its own writes.
        results: list[Outcome | CapacityError] = []
        with self._transaction() as conn:
            for execution_id, decide in items:
                conn.execute("SAVEPOINT item")
                try:
                    results.append(self._apply(conn, execution_id, decide))
                except CapacityError as exc:
                    conn.execute("ROLLBACK TO item")
                    results.append(exc)
                conn.execute("RELEASE item")
        return results

    def _apply(self, conn: sqlite3.Connection, execution_id: str, decide: Decide) -> Outcome:
        row = conn.execute("SELECT data FROM executions WHERE execution_id = ?",
                           (execution_id,)).fetchone()
        current = _decode(row[0]) if row else None
        outcome = decide(current, lambda name: self._task_label(conn, name))
        record = outcome.record
        if record is None:
            return outcome
        if current is None:
            self._insert(conn, record)
        else:
            self._compare_and_set(conn, record, current.version)
        for inc in outcome.increments:
            self._increment(conn, inc.name, inc.labels, inc.amount, inc.exemplar)
        return outcome

    def _insert(self, conn: sqlite3.Connection, record: Execution) -> None:
        tracked = conn.execute("SELECT value FROM meta WHERE key = 'tracked'").fetchone()[0]
        if tracked >= self.max_executions:
            raise CapacityError(f"tracking {tracked} executions, the limit")
        record.version = 1
        conn.execute(
            "INSERT INTO executions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (record.execution_id, record.status, record.task_name, record.deadline_at,
             record.expires_at, record.version, _encode(record), encode_row(record)))
        conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'tracked'")

    def _compare_and_set(self, conn: sqlite3.Connection, record: Execution, expected: int) -> None:
        record.version = expected + 1
        changed = conn.execute(
            "UPDATE executions SET status = ?, task_name = ?, deadline_at = ?, expires_at = ?,"
            " version = ?, data = ?, metric_row = ? WHERE execution_id = ? AND version = ?",
            (record.status, record.task_name, record.deadline_at, record.expires_at,
             record.version, _encode(record), encode_row(record), record.execution_id, expected)).rowcount
        if changed != 1:  # impossible under BEGIN IMMEDIATE; a broken invariant, not a race
            raise RuntimeError(f"compare-and-set lost on {record.execution_id}")

    @staticmethod
    def _increment(conn: sqlite3.Connection, name: str, labels: tuple[str, ...],
                   amount: float, exemplar: tuple[str, float] | None = None) -> None:
        conn.execute(
            "INSERT INTO counters VALUES (?, ?, ?, ?) ON CONFLICT (name, labels)"
            " DO UPDATE SET value = value + excluded.value,"
            " exemplar = coalesce(excluded.exemplar, exemplar)",
            (name, json.dumps(labels, ensure_ascii=False), amount,
             json.dumps(exemplar) if exemplar else None))

    def _task_label(self, conn: sqlite3.Connection, name: str | None) -> str:
        if name is None:
            return UNKNOWN_TASK
        if conn.execute("SELECT 1 FROM task_names WHERE name = ?", (name,)).fetchone():
            return name
        known = conn.execute("SELECT count(*) FROM task_names").fetchone()[0]
        if known >= self.max_task_names:
            return OTHER_TASK
        conn.execute("INSERT INTO task_names VALUES (?)", (name,))
        return name

    def mark_reaped(self, now: float, outage_after: float, hold: float) -> float:
        with self._transaction() as conn:
            meta = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('reaped_at', 'hold_until')"))
            hold_until = meta.get("hold_until", 0.0)
            previous = meta.get("reaped_at")
            if previous is not None and now - previous > outage_after:
                hold_until = max(hold_until, now + hold)
                log.warning("no reaper round for %.0fs: holding deadlines until %.0f", now - previous, hold_until)
            conn.executemany("INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                             [("reaped_at", max(now, previous or now)), ("hold_until", hold_until)])
        return hold_until

    def get(self, execution_id: str) -> Execution | None:
        rows = self._read("SELECT data FROM executions WHERE execution_id = ?", (execution_id,))
        return _decode(rows[0][0]) if rows else None

    def query(self, *, status: str | None = None, task_name: str | None = None,
              after: str | None = None, limit: int = 100) -> list[Execution]:
        rows = self._read(
            "SELECT data FROM executions WHERE (?1 IS NULL OR status = ?1)"
            " AND (?2 IS NULL OR task_name = ?2) AND (?3 IS NULL OR execution_id > ?3)"
            " ORDER BY execution_id LIMIT ?4",
            (status, task_name, after, limit))
        return [_decode(data) for (data,) in rows]

    def due(self, now: float, limit: int) -> list[str]:
        rows = self._read("SELECT execution_id FROM executions WHERE deadline_at <= ?"
                          " ORDER BY deadline_at LIMIT ?", (now, limit))
        return [execution_id for (execution_id,) in rows]

    def expire(self, now: float) -> int:
        # Look without the write lock first: most reaper rounds find nothing.
        if not self._read("SELECT 1 FROM executions WHERE expires_at <= ? LIMIT 1", (now,)):
            return 0
        with self._transaction() as conn:
            dropped = conn.execute("DELETE FROM executions WHERE expires_at <= ?", (now,)).rowcount
            conn.execute("UPDATE meta SET value = value - ? WHERE key = 'tracked'", (dropped,))
        return dropped

    def snapshot(self) -> Snapshot:
        with self._transaction("DEFERRED") as conn:
            rows = decode_rows([row for (row,) in conn.execute("SELECT metric_row FROM executions")])
            counters, exemplars = {}, {}
            for name, labels, value, exemplar in conn.execute(
                    "SELECT name, labels, value, exemplar FROM counters"):
                key = (name, tuple(json.loads(labels)))
                counters[key] = value
                if exemplar:
                    exemplars[key] = tuple(json.loads(exemplar))
            task_names = [name for (name,) in conn.execute("SELECT name FROM task_names")]
        return Snapshot(rows, counters, task_names, exemplars)

    def count(self, name: str, labels: tuple[str, ...], amount: float = 1.0) -> None:
        with self._transaction() as conn:
            self._increment(conn, name, labels, amount)

    def ping(self) -> None:
        # A real write, and room to grow: a store that can only be read is not ready.
        with self._transaction() as conn:
            conn.execute("INSERT INTO meta VALUES ('ping', 0) ON CONFLICT (key)"
                         " DO UPDATE SET value = value + 1")
        try:
            space = os.statvfs(os.path.dirname(os.path.abspath(self.path)))
        except OSError as exc:
            raise StoreUnavailable(f"sqlite: cannot see the disk of {self.path}: {exc}") from exc
        if space.f_bavail * space.f_frsize < MIN_FREE_BYTES:
            raise StoreUnavailable(f"sqlite: the disk holding {self.path} is full")

    def close(self) -> None:
        self._drop_connection()
