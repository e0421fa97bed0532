"""The embedded store: one SQLite file in WAL mode, shared by every gunicorn worker.

Events are applied in batches (see :mod:`bridge.store.group`). A batch is decided against
a plain read, then written in a ``BEGIN IMMEDIATE`` transaction in which each update names
the version it read (else the batch is rolled back and decided again under the lock), so
the read-decide-write is a true compare-and-set while the write lock is held for the
writes alone. Writers first take an ``flock`` on ``<database>-writer`` beside the file,
retried every 50 µs at first, where SQLite's own busy handler sleeps a millisecond or more.
Connections are per thread and per process (never inherited across a fork); a failed
connection is dropped so the next call reconnects. A scrape also reads with connections of
its own (``SCRAPE_READERS``, one per core), a range of rows each, on threads of their own.
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
import sqlite3
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

from ..core.executions import FINAL_STATUSES, Execution, Outcome, tombstone
from ..core.tasks import Task, TaskOutcome, is_declared, ping_uuid_of
from .base import (
    DEFAULT_DEDUP_SECONDS,
    DEFAULT_TASK_RETENTION_SECONDS,
    Decide,
    DecideTask,
    ReaperMark,
    Rendering,
    Snapshot,
    Store,
    StoreUnavailable,
    mark_round,
)
from .batch import TaskNames, decide_batch, decide_task_changes, decide_tasks
from .codec import decode_record, decode_task, encode_record, encode_task

__all__ = ["SQLiteStore", "path_from_url"]

log = logging.getLogger(__name__)

DEFAULT_BUSY_TIMEOUT_SECONDS = 5.0
#: Waits between tries for the writer lock: far shorter than SQLite's own (1 ms and up),
#: since a batch holds the lock for well under a millisecond.
_FIRST_PAUSE_SECONDS = 0.00005
_LONGEST_PAUSE_SECONDS = 0.002
#: Bumped with every change to the schema or its migrations: a file noted with another
#: version (or another rendering) is brought up to date when it is opened.
SCHEMA_VERSION = 5
#: SQLite's primary result code for a write to a database it opened read-only.
_SQLITE_READONLY = 8
#: Less free space than this beside the file and the store is not ready: writes would fail.
MIN_FREE_BYTES = 1024 * 1024
#: Connections that read a scrape's texts at once, each a range of the rows: SQLite reads the
#: pages and joins the texts with the GIL released, so a large scrape can use every core.
SCRAPE_READERS = max(1, min(4, len(os.sched_getaffinity(0))))
#: How long a scrape waits for the writers' lock, under which its readers start at one moment,
#: before it reads alone: a writer that hangs must not take the scrape down with the writes.
_SCRAPE_LOCK_PATIENCE_SECONDS = 0.1
#: After a write, each process copies the write-ahead log into the database at most this often.
CHECKPOINT_INTERVAL_SECONDS = 0.05

# Held by each checkpoint and each close of the checkpoints' connection, and across a fork: a
# child must not inherit SQLite's locks from either caught halfway (a master that loaded the app
# and wrote before forking workers; a store closed, its thread still closing, as a test forks).
_CHECKPOINTING = threading.Lock()
os.register_at_fork(
    before=_CHECKPOINTING.acquire, after_in_parent=_CHECKPOINTING.release, after_in_child=_CHECKPOINTING.release
)

# A table with rowids: a record and its exposition texts (about 1.5 KiB) fit in a page's share
# of a row, where a WITHOUT ROWID table spills each past 1 KiB into a page of its own.
_EXECUTIONS = """
CREATE TABLE IF NOT EXISTS executions (
    execution_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    task_name TEXT,
    deadline_at REAL,
    expires_at REAL,
    version INTEGER NOT NULL,
    data TEXT NOT NULL,
    metric_task TEXT
);
"""

_SCHEMA = (
    _EXECUTIONS
    + """
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
CREATE INDEX IF NOT EXISTS executions_task ON executions(task_name, execution_id)
    WHERE task_name IS NOT NULL;
CREATE TABLE IF NOT EXISTS task_names (name TEXT PRIMARY KEY, last_seen REAL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ended (execution_id TEXT PRIMARY KEY, status TEXT NOT NULL, until REAL NOT NULL)
    WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ended_until ON ended(until);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tasks (
    task_name TEXT PRIMARY KEY,
    deadline_at REAL,
    declared INTEGER NOT NULL,
    version INTEGER NOT NULL,
    data TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tasks_deadline ON tasks(deadline_at) WHERE deadline_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS ping_uuids (uuid TEXT PRIMARY KEY, task_name TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ping_uuids_task ON ping_uuids(task_name);
CREATE TABLE IF NOT EXISTS notes (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
INSERT OR IGNORE INTO meta VALUES ('tracked', 0);
"""
)


def path_from_url(url: str) -> str:
    """Return the file path of ``sqlite:///relative`` or ``sqlite:////absolute`` URLs."""
    return url[len("sqlite:///") :]


# Task names no tracked execution carries, last seen before the cut-off, declared by neither
# the tasks file nor the API.
_RELEASABLE = (
    "SELECT name FROM task_names WHERE coalesce(last_seen, 0) <= ? AND NOT EXISTS"
    " (SELECT 1 FROM executions WHERE executions.task_name = task_names.name) AND NOT EXISTS"
    " (SELECT 1 FROM tasks WHERE tasks.task_name = task_names.name AND tasks.declared)"
)
_INSERT_TASK = "INSERT INTO tasks VALUES (?, ?, ?, ?, ?)"
_UPDATE_TASK = (
    "UPDATE tasks SET deadline_at = ?, declared = ?, version = ?, data = ? WHERE task_name = ? AND version = ?"
)

#: A row as sqlite3 reads it, or the parameters of one statement.
_Row = tuple[Any, ...]

#: Ids per ``IN (...)`` read, well below SQLite's smallest limit on bound variables (999).
_READ_CHUNK = 500


class _Statements:
    """The statements that write an execution with its exposition text: a column per family."""

    def __init__(self, families: int):
        self.columns = [f"exposition_{k}" for k in range(families)]
        texts = "".join(f", {column} = ?" for column in self.columns)
        self.insert = (
            f"INSERT INTO executions (execution_id, status, task_name, deadline_at, expires_at, version,"
            f" data, metric_task, {', '.join(self.columns)}) VALUES ({', '.join('?' * (8 + families))})"
        )
        self.update = (
            "UPDATE executions SET status = ?, task_name = ?, deadline_at = ?, expires_at = ?,"
            f" version = ?, data = ?, metric_task = ?{texts} WHERE execution_id = ? AND version = ?"
        )
        self._moves: dict[tuple[int, ...], str] = {}
        self.render = ", ".join(f"{column} = ?" for column in self.columns)
        self.texts = (
            "SELECT "
            + ", ".join(f"CAST(group_concat({column}, '') AS BLOB)" for column in self.columns)
            + " FROM executions WHERE rowid BETWEEN ? AND ?"
        )

    def move(self, families: tuple[int, ...]) -> str:
        """Return the update of an execution whose heartbeat moved its deadline and changed the
        texts of ``families`` (indexes into the columns) alone. The status, expiry and task
        indexes are left alone, and the texts that did not change are not sent again, so the
        commit writes fewer pages and each row binds a text or two instead of eight."""
        statement = self._moves.get(families)
        if statement is None:
            texts = "".join(f", {self.columns[family]} = ?" for family in families)
            statement = self._moves[families] = (
                f"UPDATE executions SET deadline_at = ?, version = ?, data = ?{texts}"
                " WHERE execution_id = ? AND version = ?"
            )
        return statement


_INCREMENT = (
    "INSERT INTO counters VALUES (?, ?, ?, ?) ON CONFLICT (name, labels)"
    " DO UPDATE SET value = value + excluded.value, exemplar = coalesce(excluded.exemplar, exemplar)"
)


def _in(ids: list[str]) -> Iterator[tuple[list[str], str]]:
    """Yield chunks of ``ids`` with the ``IN (...)`` placeholders of each."""
    for first in range(0, len(ids), _READ_CHUNK):
        chunk = ids[first : first + _READ_CHUNK]
        yield chunk, ",".join("?" * len(chunk))


def _any_row(conn: sqlite3.Connection, query: str, ids: list[str]) -> bool:
    """Return True when ``query``, its ``{}`` filled with the placeholders of a chunk of
    ``ids``, finds a row for any chunk."""
    return any(conn.execute(query.format(marks), chunk).fetchone() for chunk, marks in _in(ids))


class _ScrapeReaders:
    """The connections beside a scraping thread's own that read the other ranges of a scrape,
    each on a thread of its own; one scrape at a time uses them."""

    def __init__(self, connections: list[sqlite3.Connection], identity: tuple[int, int] | None):
        self.connections = connections
        #: the database file they have open
        self.identity = identity
        self.pool = ThreadPoolExecutor(len(connections), thread_name_prefix="bridge-scrape")
        self.in_use = threading.Lock()

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        for conn in self.connections:
            try:
                conn.close()
            except sqlite3.Error:
                pass


def _connect(
    path: str, busy_timeout: float, synchronous: str, *, create: bool = False, any_thread: bool = False
) -> sqlite3.Connection:
    """Return a new connection to the store at ``path`` (creating the file with ``create``;
    usable from any thread with ``any_thread``). Raises :class:`StoreUnavailable`."""
    uri = f"file:{quote(os.path.abspath(path))}?mode={'rwc' if create else 'rw'}"
    try:
        conn = sqlite3.connect(
            uri, uri=True, timeout=busy_timeout, isolation_level=None, check_same_thread=not any_thread
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer's work
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"cannot open {path}: {exc}") from exc
    return conn


class _Checkpointer:
    """Copies the write-ahead log into the database on a thread of its own, after writes.

    SQLite's automatic checkpoint runs in the commit that crosses its threshold, while that
    writer still holds the writers' lock, so every other writer waited through the copy and
    its fsync. A passive checkpoint here takes no writer's lock and waits for no reader.
    """

    def __init__(self, open_connection: Callable[[], sqlite3.Connection]):
        self._open = open_connection
        self._written = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="bridge-checkpoint", daemon=True)
        self._thread.start()

    def written(self) -> None:
        """Say that a transaction was committed: a checkpoint follows soon."""
        self._written.set()

    def stop(self, wait: bool = True) -> None:
        """Stop the thread, after the checkpoint it may be running (waiting for that with ``wait``)."""
        self._stopping = True
        self._written.set()
        if wait and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        while True:
            self._written.wait()
            if self._stopping:
                break
            self._written.clear()
            with _CHECKPOINTING:
                try:
                    conn = conn or self._open()
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except Exception as exc:  # the next write asks again; this thread must go on
                    log.debug("sqlite: checkpoint failed: %s", exc)
                    if conn is not None:
                        conn.close()
                    conn = None
            time.sleep(CHECKPOINT_INTERVAL_SECONDS)
        if conn is not None:
            with _CHECKPOINTING:
                conn.close()


def _texts_of(conn: sqlite3.Connection, sql: str, low: int, high: int) -> tuple[bytes | None, ...]:
    return conn.execute(sql, (low, high)).fetchone()


def _identity(path: str) -> tuple[int, int] | None:
    """Return the (device, inode) of the file at ``path``, None when there is none.

    Raises :class:`StoreUnavailable` when it cannot be looked at.
    """
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreUnavailable(f"sqlite: cannot look at {path}: {exc}") from exc
    return status.st_dev, status.st_ino


def _unavailable(exc: sqlite3.Error) -> StoreUnavailable:
    """Return the error a caller answers 503 to, for any failure of SQLite itself."""
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
        log.error("sqlite: %s: the database file is damaged; restore it from a backup", exc)
    return StoreUnavailable(f"sqlite: {exc}")


class _Stale(Exception):
    """What a batch was decided on changed before it was written: it is decided again, locked."""


class _Batch:
    """One transaction's events, decided against one read of their records.

    Decided ``locked`` inside the write transaction, or beforehand against a plain read,
    to be written only if everything the decisions relied on still holds (checked by
    :meth:`still_holds` and by the versions each update names). The write lock is then
    held for the writes alone, not for the decisions.
    """

    def __init__(
        self,
        store: SQLiteStore,
        conn: sqlite3.Connection,
        items: Sequence[tuple[str, Decide]],
        *,
        locked: bool,
        whole: bool = False,
    ):
        self.store = store
        self.stored: dict[str, Execution] = {}
        tombstones: dict[str, Execution] = {}
        for chunk, marks in _in(list(dict.fromkeys(execution_id for execution_id, _ in items))):
            for execution_id, data in conn.execute(
                f"SELECT execution_id, data FROM executions WHERE execution_id IN ({marks})", chunk
            ):
                self.stored[execution_id] = decode_record(data)
        absent = [execution_id for execution_id, _ in items if execution_id not in self.stored]
        for chunk, marks in _in(list(dict.fromkeys(absent))):
            for execution_id, status in conn.execute(
                f"SELECT execution_id, status FROM ended WHERE execution_id IN ({marks})", chunk
            ):
                tombstones[execution_id] = tombstone(execution_id, status)

        def in_store(name: str) -> bool:
            return conn.execute("SELECT 1 FROM task_names WHERE name = ?", (name,)).fetchone() is not None

        # Under the lock the store itself answers; before it, what this process remembers may.
        self.names = TaskNames(
            store.max_task_names,
            in_store if locked else lambda name: store._holds_name(name, in_store),
            lambda: conn.execute("SELECT count(*) FROM task_names").fetchone()[0],
        )
        self.tracked: int | None = None

        def tracked() -> int:
            self.tracked = conn.execute("SELECT value FROM meta WHERE key = 'tracked'").fetchone()[0]
            return self.tracked

        self.decided = decide_batch(items, self.stored, tombstones, self.names, tracked, store.max_executions, whole)
        self.stored_tasks: dict[str, Task] = {}
        if self.decided.task_changes:
            self.stored_tasks = _read_tasks(conn, [name for name, *_ in self.decided.task_changes])
            decide_task_changes(self.decided, self.stored_tasks)
        self._encode()

    @property
    def results(self) -> list[Outcome]:
        return self.decided.results

    def still_holds(self, conn: sqlite3.Connection) -> bool:
        """Return True when, inside the write transaction, what the decisions read of the
        store other than the records themselves is unchanged: the new executions still
        absent and within the limit, the task names held still held, the new ones still
        free and within theirs. (The updates check their own records: each names the
        version it read.)"""
        new, names = self.decided.new, self.names
        if _any_row(conn, "SELECT 1 FROM executions WHERE execution_id IN ({}) LIMIT 1", new):
            return False
        if any(
            conn.execute(f"SELECT count(*) FROM task_names WHERE name IN ({marks})", chunk).fetchone()[0] != len(chunk)
            for chunk, marks in _in(sorted(names.known))
        ):
            return False  # a name released since (see expire())
        if names.added and (
            _any_row(conn, "SELECT 1 FROM task_names WHERE name IN ({}) LIMIT 1", names.added)
            or conn.execute("SELECT count(*) FROM task_names").fetchone()[0] + len(names.added) > names.limit
        ):
            return False
        if new and (
            conn.execute("SELECT value FROM meta WHERE key = 'tracked'").fetchone()[0] + len(new)
            > self.store.max_executions
        ):
            return False
        new_tasks = [name for name in self.decided.tasks if name not in self.stored_tasks]
        return not _any_row(conn, "SELECT 1 FROM tasks WHERE task_name IN ({}) LIMIT 1", new_tasks)

    def _encode(self) -> None:
        """Encode the writes, before taking the write lock when the batch was decided before it."""
        self.inserts: list[_Row] = []
        self.updates: list[_Row] = []
        #: the updates of deadline moves, by the families whose texts they change
        self.deadline_moves: dict[tuple[int, ...], list[_Row]] = {}
        render = self.store.render
        for execution_id, record in self.decided.changed.items():
            stored = self.stored.get(execution_id)
            if stored is not None and (
                stored.status == record.status
                and stored.task_name == record.task_name
                and stored.metric_task_name == record.metric_task_name
                and stored.expires_at == record.expires_at
            ):
                changes = render.changes(stored, record)
                self.deadline_moves.setdefault(tuple(changes), []).append(
                    (
                        record.deadline_at,
                        record.version,
                        encode_record(record),
                        *[text or None for text in changes.values()],
                        execution_id,
                        stored.version,
                    )
                )
                continue
            texts = [text or None for text in render(record)]
            # the columns of the insert after the id, and of the update before its condition
            written = (
                record.status,
                record.task_name,
                record.deadline_at,
                record.expires_at,
                record.version,
                encode_record(record),
                record.metric_task_name,
                *texts,
            )
            if stored is None:
                self.inserts.append((execution_id, *written))
            else:
                self.updates.append((*written, execution_id, stored.version))
        self.increments = [
            (name, _labels_key(labels), amount, json.dumps(exemplar) if exemplar else None)
            for (name, labels), (amount, exemplar) in self.decided.increments.items()
        ]
        self.task_writes = _task_writes(self.decided.tasks, self.stored_tasks)

    def write(self, conn: sqlite3.Connection) -> bool:
        """Write each changed record once, each new task name, and add to each counter once.

        Returns False, having written part of the batch, when an update finds its record
        at another version than the one read: the caller must roll back.
        """
        statements = self.store.statements
        updates = [(statements.update, self.updates)]
        updates += [(statements.move(families), rows) for families, rows in self.deadline_moves.items()]
        for statement, rows in updates:
            if rows and conn.executemany(statement, rows).rowcount != len(rows):
                return False
        if self.inserts:
            conn.executemany(statements.insert, self.inserts)
            conn.execute("UPDATE meta SET value = value + ? WHERE key = 'tracked'", (len(self.inserts),))
        if self.names.added:
            conn.executemany("INSERT INTO task_names (name) VALUES (?)", [(name,) for name in self.names.added])
        if self.increments:
            conn.executemany(_INCREMENT, self.increments)
        return _write_tasks(conn, *self.task_writes)


def _read_tasks(conn: sqlite3.Connection, names: Sequence[str]) -> dict[str, Task]:
    """Return the stored tasks among ``names``."""
    found: dict[str, Task] = {}
    for chunk, marks in _in(list(dict.fromkeys(names))):
        for name, data in conn.execute(f"SELECT task_name, data FROM tasks WHERE task_name IN ({marks})", chunk):
            found[name] = decode_task(data)
    return found


def _task_writes(changed: dict[str, Task], stored: dict[str, Task]) -> tuple[list[_Row], list[_Row], list[_Row]]:
    """Return the rows to insert, to update (each naming the version read), and each changed
    task's ping uuid, for ``changed``."""
    inserts, updates = [], []
    uuids = [(name, ping_uuid_of(task)) for name, task in changed.items()]
    for name, task in changed.items():
        if name in stored:
            updates.append(
                (task.deadline_at, int(is_declared(task)), task.version, encode_task(task), name, stored[name].version)
            )
        else:
            inserts.append((name, task.deadline_at, int(is_declared(task)), task.version, encode_task(task)))
    return inserts, updates, uuids


def _write_tasks(conn: sqlite3.Connection, inserts: list[_Row], updates: list[_Row], uuids: list[_Row]) -> bool:
    """Write the tasks and their ping uuids; returns False when an update found its task at
    another version."""
    if updates and conn.executemany(_UPDATE_TASK, updates).rowcount != len(updates):
        return False
    if inserts:
        conn.executemany(_INSERT_TASK, inserts)
    for name, ping_uuid in uuids:
        _index_ping_uuid(conn, name, ping_uuid)
    return True


def _index_ping_uuid(conn: sqlite3.Connection, name: str, ping_uuid: str | None) -> None:
    """Point ``ping_uuid`` at task ``name`` unless another task holds it: a uuid is never
    taken from its holder (the declaring door refuses that first; this keeps a race from it)."""
    conn.execute("DELETE FROM ping_uuids WHERE task_name = ? AND uuid IS NOT ?", (name, ping_uuid))
    if ping_uuid is not None:
        conn.execute("INSERT OR IGNORE INTO ping_uuids VALUES (?, ?)", (ping_uuid, name))


@functools.lru_cache(maxsize=4096)  # label sets are few (task names are capped), used on every write
def _labels_key(labels: tuple[str, ...]) -> str:
    # The stored form since the first version: the default separators, not compact JSON.
    return json.dumps(labels, ensure_ascii=False)


class SQLiteStore(Store):
    """A :class:`Store` in one SQLite file."""

    def __init__(
        self,
        path: str,
        *,
        render: Rendering,
        max_executions: int,
        max_task_names: int,
        dedup_seconds: float = DEFAULT_DEDUP_SECONDS,
        task_retention: float = DEFAULT_TASK_RETENTION_SECONDS,
        synchronous: str = "NORMAL",
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT_SECONDS,
    ):
        super().__init__(render, max_executions, max_task_names, dedup_seconds, task_retention)
        self.statements = _Statements(render.families)
        # noted once the file is brought up to date: its schema, and every execution's texts
        self._signature = zlib.crc32(f"{SCHEMA_VERSION}:{render.signature}".encode())
        self.path = path
        self._synchronous = synchronous
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        self._pid = os.getpid()
        self._readers: _ScrapeReaders | None = None
        self._checkpointer: _Checkpointer | None = None
        self._helpers_made = threading.Lock()
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            conn = self._connection(create=True)
            # A store already brought up to date opens without a write, so that a worker
            # starting while the file takes none (read-only, or a full disk) still serves
            # reads and answers writes 503, as its peers do.
            if not self._up_to_date(conn):
                conn.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")
                self._migrate(conn)
                self._render_again(conn)
        except (OSError, sqlite3.Error) as exc:
            self._drop_connection()
            raise StoreUnavailable(f"cannot open the store at {path}: {exc}") from exc

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        """Bring a store written by an earlier version up to this schema."""
        if "last_seen" not in {row[1] for row in conn.execute("PRAGMA table_info(task_names)")}:
            conn.execute("ALTER TABLE task_names ADD COLUMN last_seen REAL")
            # Names from before: their slot is kept a full retention from now.
            conn.execute("UPDATE task_names SET last_seen = ?", (time.time(),))
        counters = {row[1] for row in conn.execute("PRAGMA table_info(counters)")}
        if "exemplar" not in counters:
            conn.execute("ALTER TABLE counters ADD COLUMN exemplar TEXT")
        if conn.execute("SELECT 1 FROM meta WHERE key = 'ping_uuids_indexed'").fetchone() is None:
            conn.execute("BEGIN IMMEDIATE")
            for name, data in conn.execute("SELECT task_name, data FROM tasks ORDER BY task_name").fetchall():
                _index_ping_uuid(conn, name, ping_uuid_of(decode_task(data)))
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('ping_uuids_indexed', 1)")
            conn.execute("COMMIT")

    def _up_to_date(self, conn: sqlite3.Connection) -> bool:
        """Return True when the file holds this version's schema (:data:`SCHEMA_VERSION`) and
        exposition texts: both are noted last, once everything before them is done."""
        try:
            return (
                conn.execute("SELECT 1 FROM meta WHERE key = 'exposition' AND value = ?", (self._signature,)).fetchone()
                is not None
            )
        except sqlite3.OperationalError:  # no meta table: a new file
            return False

    def _render_again(self, conn: sqlite3.Connection) -> None:
        """Give every execution the exposition text of this version's rendering, unless the
        store already holds it (the rendering's signature is noted in ``meta``)."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            if self._up_to_date(conn):  # another process did it first
                conn.execute("COMMIT")
                return
            (table,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'executions'").fetchone()
            if "WITHOUT ROWID" in table.upper():  # as written before scrapes copied text
                conn.execute("ALTER TABLE executions RENAME TO executions_before")
                conn.execute(_EXECUTIONS)
                conn.execute(
                    "INSERT INTO executions (execution_id, status, task_name, deadline_at, expires_at,"
                    " version, data) SELECT execution_id, status, task_name, deadline_at, expires_at,"
                    " version, data FROM executions_before"
                )
                conn.execute("DROP TABLE executions_before")  # and its indexes: made again below
            columns = {row[1] for row in conn.execute("PRAGMA table_info(executions)")}
            for column in self.statements.columns:
                if column not in columns:
                    conn.execute(f"ALTER TABLE executions ADD COLUMN {column} TEXT")
            for statement in _SCHEMA.split(";"):  # the indexes of a table made again
                if statement.strip().startswith("CREATE INDEX IF NOT EXISTS executions_"):
                    conn.execute(statement)
            conn.execute("CREATE INDEX IF NOT EXISTS executions_kind ON executions(metric_task, status)")
            statement = f"UPDATE executions SET metric_task = ?, {self.statements.render} WHERE execution_id = ?"
            for execution_id, data in conn.execute("SELECT execution_id, data FROM executions").fetchall():
                record = decode_record(data)
                conn.execute(
                    statement, (record.metric_task_name, *(text or None for text in self.render(record)), execution_id)
                )
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('exposition', ?)", (self._signature,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # -- connections -------------------------------------------------------------

    def _connection(self, create: bool = False) -> sqlite3.Connection:
        """Return this thread's connection, opened on first use.

        Only the store's constructor creates the file: a connection opened later, after the
        file vanished, must fail rather than start an empty database beside the real one.
        Raises :class:`StoreUnavailable`.
        """
        if self._pid != os.getpid():  # forked: the parent's connections are not ours
            self._local = threading.local()
            self._readers = self._checkpointer = None
            self._pid = os.getpid()
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._open(create)
            self._local.conn = conn
            self._local.files = (_identity(self.path), _identity(self.path + "-wal"))
        return conn

    def _open(self, create: bool = False, any_thread: bool = False) -> sqlite3.Connection:
        return _connect(self.path, self._busy_timeout, self._synchronous, create=create, any_thread=any_thread)

    def _checkpoint_soon(self) -> None:
        """Have this process's checkpointer (started on the first write) copy the log soon."""
        checkpointer = self._checkpointer
        if checkpointer is None:
            with self._helpers_made:
                if self._checkpointer is None:
                    # It holds no reference to the store: a store nobody holds any more stops it.
                    opener = functools.partial(
                        _connect, self.path, self._busy_timeout, self._synchronous, any_thread=True
                    )
                    self._checkpointer = _Checkpointer(opener)
                    weakref.finalize(self, self._checkpointer.stop, wait=False)
                checkpointer = self._checkpointer
        checkpointer.written()

    def _take_readers(self) -> _ScrapeReaders | None:
        """Return the scrape readers of this process, taken for this scrape; None when there
        is one reader (one core), or another scrape has them.

        They are opened on first use, and again when this thread's connection was opened on
        another file than theirs (the file was replaced). Raises :class:`StoreUnavailable`.
        """
        if SCRAPE_READERS < 2:
            return None
        with self._helpers_made:
            readers = self._readers
            if readers is not None and readers.identity != self._local.files[0]:
                if not readers.in_use.acquire(blocking=False):
                    return None
                self._readers = None
                readers.close()
                readers = None
            if readers is None:
                readers = _ScrapeReaders(
                    [self._open(any_thread=True) for _ in range(SCRAPE_READERS - 1)], self._local.files[0]
                )
                self._readers = readers
        return readers if readers.in_use.acquire(blocking=False) else None

    def _give_back(self, readers: _ScrapeReaders) -> None:
        """End the readers' transactions (an open one would hold the log from every
        checkpoint) and let the next scrape take them; drop them when one cannot end it."""
        broken = False
        for conn in readers.connections:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    broken = True
        if broken:
            with self._helpers_made:
                if self._readers is readers:
                    self._readers = None
            readers.close()
        readers.in_use.release()

    def _exposition(self, conn: sqlite3.Connection, readers: _ScrapeReaders | None) -> list[list[bytes]]:
        """Return each family's texts, as parts to send one after the other, read in ``conn``'s
        transaction (not yet begun to read) and, a range of rows each, in the ``readers``'.

        The readers' transactions start under the writers' lock, right after ``conn``'s, so
        every part shows the same moment; when the lock is not free soon, ``conn`` reads every
        range alone. Raises :class:`sqlite3.Error`, and :class:`StoreUnavailable` when the
        lock file cannot be opened.
        """
        bounds = "SELECT min(rowid), max(rowid) FROM executions"
        if readers is None or not self._lock_writer(_SCRAPE_LOCK_PATIENCE_SECONDS):
            low, high = conn.execute(bounds).fetchone()
            found = [] if low is None else [_texts_of(conn, self.statements.texts, low, high)]
        else:
            try:
                low, high = conn.execute(bounds).fetchone()
                for reader in readers.connections:
                    reader.execute("BEGIN")
                    reader.execute("SELECT 1 FROM meta LIMIT 1").fetchall()
            finally:
                fcntl.flock(self._local.writer_fd, fcntl.LOCK_UN)
            found = []
            if low is not None:
                ranges = len(readers.connections) + 1
                step = -(-(high - low + 1) // ranges)
                firsts = [low + step * k for k in range(ranges)]
                pending: list[Future[tuple[bytes | None, ...]]] = [
                    readers.pool.submit(_texts_of, reader, self.statements.texts, first, first + step - 1)
                    for reader, first in zip(readers.connections, firsts[1:])
                ]
                try:
                    found.append(_texts_of(conn, self.statements.texts, firsts[0], firsts[0] + step - 1))
                finally:
                    wait(pending)  # a reader still at work must not see its transaction end
                found.extend(future.result() for future in pending)
        exposition: list[list[bytes]] = [[] for _ in self.statements.columns]
        for texts in found:
            for parts, text in zip(exposition, texts):
                if text:
                    parts.append(text)
        return exposition

    def _check_files(self) -> None:
        """Make sure the files under the path are still the ones this connection has open.

        A database (or its write-ahead log) removed or replaced under a running bridge
        leaves each open connection writing to the unlinked file, acknowledging writes
        that no restart will find. Called after every commit and before every read, so
        nothing is acknowledged or served from a file that is gone. Raises
        :class:`StoreUnavailable` (and drops the connection, so the next call opens the
        file now at the path, if there is one).
        """
        database, log_file = self._local.files
        now = _identity(self.path), _identity(self.path + "-wal")
        if now[0] != database or (log_file is not None and now[1] != log_file):
            self._drop_connection()
            raise StoreUnavailable(
                f"sqlite: {self.path} was removed or replaced under the running bridge; "
                "put it back, or restart the bridge to start a new one"
            )
        if log_file is None:
            self._local.files = (database, now[1])

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:
                pass

    def _check_room(self) -> None:
        """Raise :class:`StoreUnavailable` when the disk holding the file has less than
        :data:`MIN_FREE_BYTES` free. A write could still land in room the write-ahead log
        already has, but its checkpoint could not, and the log would only grow: a full disk
        takes no write at all, so that every write is refused alike until there is room."""
        try:
            space = os.statvfs(os.path.dirname(os.path.abspath(self.path)))
        except OSError as exc:
            raise StoreUnavailable(f"sqlite: cannot see the disk of {self.path}: {exc}") from exc
        if space.f_bavail * space.f_frsize < MIN_FREE_BYTES:
            raise StoreUnavailable(f"sqlite: the disk holding {self.path} is full")

    @contextmanager
    def _transaction(self, mode: str = "IMMEDIATE") -> Iterator[sqlite3.Connection]:
        conn = self._connection()
        writer = mode == "IMMEDIATE"
        if writer:
            self._check_room()
            self._lock_writer()
        try:
            try:
                conn.execute(f"BEGIN {mode}")
            except sqlite3.Error as exc:
                self._drop_connection()
                raise StoreUnavailable(f"sqlite: {exc}") from exc
            try:
                yield conn
                conn.execute("COMMIT")
            except sqlite3.DatabaseError as exc:  # also a corrupt file: "disk image is malformed"
                self._rollback(conn)
                if getattr(exc, "sqlite_errorcode", 0) & 0xFF == _SQLITE_READONLY:
                    # A connection opened while the file took no writes stays read-only:
                    # the next call opens one that may write again.
                    self._drop_connection()
                raise _unavailable(exc) from exc
            except BaseException:
                self._rollback(conn)
                raise
            self._check_files()  # committed: to the file a restart will find, or answered 503
        finally:
            if writer:
                fcntl.flock(self._local.writer_fd, fcntl.LOCK_UN)
        if writer:
            self._checkpoint_soon()

    def _lock_writer(self, patience: float | None = None) -> bool:
        """Wait for this thread's turn to write, across every thread and process, for the busy
        timeout or ``patience`` seconds. Returns True, or False when ``patience`` ran out.

        Raises :class:`StoreUnavailable` when the lock file cannot be opened, or when the
        lock stays taken for the busy timeout (a writer that hangs).
        """
        fd = getattr(self._local, "writer_fd", None)
        if fd is None:
            try:  # one open file per thread: flock excludes other open files, not other threads
                fd = os.open(self.path + "-writer", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise StoreUnavailable(f"sqlite: cannot open the writer lock of {self.path}: {exc}") from exc
            self._local.writer_fd = fd
        deadline: float | None = None
        pause = _FIRST_PAUSE_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                pass
            now = time.monotonic()
            if deadline is None:
                deadline = now + (self._busy_timeout if patience is None else patience)
            elif now >= deadline:
                if patience is not None:
                    return False
                raise StoreUnavailable(
                    f"sqlite: {self.path} stayed locked by another writer for {self._busy_timeout:g}s"
                )
            time.sleep(pause)
            pause = min(pause * 2, _LONGEST_PAUSE_SECONDS)

    def _rollback(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            self._drop_connection()

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[_Row]:
        conn = self._connection()
        self._check_files()
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            self._drop_connection()
            raise _unavailable(exc) from exc

    # -- the Store interface -------------------------------------------------------

    def apply_many(self, items: Sequence[tuple[str, Decide]], *, whole: bool = False) -> list[Outcome]:
        # One transaction for the batch: the records read once, the decisions made in order
        # in memory (before taking the write lock when that is safe), then each changed
        # record written once and each counter added to once.
        try:
            guess = _Batch(self, self._connection(), items, locked=False, whole=whole)
        except sqlite3.DatabaseError as exc:
            self._drop_connection()
            raise _unavailable(exc) from exc
        if not guess.decided.changed:
            return guess.results
        try:
            with self._transaction() as conn:
                if not guess.still_holds(conn) or not guess.write(conn):
                    raise _Stale
            return guess.results
        except _Stale:
            pass  # another writer got there first: decide again, under the lock
        with self._transaction() as conn:
            batch = _Batch(self, conn, items, locked=True, whole=whole)
            if not batch.write(conn):
                # impossible under the write lock: a broken invariant, not a race
                raise RuntimeError("compare-and-set lost on an execution")
            return batch.results

    def apply_tasks(self, items: Sequence[tuple[str, DecideTask]], *, headroom: int = 0) -> list[TaskOutcome]:
        # Declarations and missed slots are few: decided under the write lock.
        with self._transaction() as conn:
            stored = _read_tasks(conn, [name for name, _ in items])

            def in_store(name: str) -> bool:
                return conn.execute("SELECT 1 FROM task_names WHERE name = ?", (name,)).fetchone() is not None

            names = TaskNames(
                self.max_task_names - headroom,
                in_store,
                lambda: conn.execute("SELECT count(*) FROM task_names").fetchone()[0],
            )
            decided = decide_tasks(items, stored, names)
            if names.added:
                conn.executemany("INSERT INTO task_names (name) VALUES (?)", [(name,) for name in names.added])
            conn.executemany(
                _INCREMENT,
                [
                    (name, _labels_key(labels), amount, None)
                    for (name, labels), (amount, _) in decided.increments.items()
                ],
            )
            if not _write_tasks(conn, *_task_writes(decided.tasks, stored)):
                raise RuntimeError("compare-and-set lost on a task")  # impossible under the write lock
        return decided.results

    def task_by_ping_uuid(self, ping_uuid: str) -> str | None:
        rows = self._read("SELECT task_name FROM ping_uuids WHERE uuid = ?", (ping_uuid,))
        return rows[0][0] if rows else None

    def note(self, key: str, value: float | str) -> float | str | None:
        with self._transaction() as conn:
            row = conn.execute("SELECT value FROM notes WHERE key = ?", (key,)).fetchone()
            conn.execute(
                "INSERT INTO notes VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value)
            )
        return row[0] if row else None

    def get_task(self, name: str) -> Task | None:
        rows = self._read("SELECT data FROM tasks WHERE task_name = ?", (name,))
        return decode_task(rows[0][0]) if rows else None

    def tasks(self) -> list[Task]:
        return [decode_task(data) for (data,) in self._read("SELECT data FROM tasks ORDER BY task_name")]

    def due_tasks(self, now: float, limit: int) -> list[str]:
        rows = self._read(
            "SELECT task_name FROM tasks WHERE deadline_at <= ? ORDER BY deadline_at LIMIT ?", (now, limit)
        )
        return [name for (name,) in rows]

    def mark_reaped(self, now: float, outage_after: float, hold: float, clock_stepped: bool = False) -> ReaperMark:
        with self._transaction() as conn:
            recorded = dict(
                conn.execute("SELECT key, value FROM meta WHERE key IN ('reaped_at', 'hold_until', 'rebased_at')")
            )
            written, mark = mark_round(recorded, now, outage_after, hold, clock_stepped)
            conn.executemany(
                "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                list(written.items()),
            )
        return mark

    def get(self, execution_id: str) -> Execution | None:
        rows = self._read("SELECT data FROM executions WHERE execution_id = ?", (execution_id,))
        return decode_record(rows[0][0]) if rows else None

    def query(
        self, *, status: str | None = None, task_name: str | None = None, after: str | None = None, limit: int = 100
    ) -> list[Execution]:
        rows = self._read(
            "SELECT data FROM executions WHERE (?1 IS NULL OR status = ?1)"
            " AND (?2 IS NULL OR task_name = ?2) AND (?3 IS NULL OR execution_id > ?3)"
            " ORDER BY execution_id LIMIT ?4",
            (status, task_name, after, limit),
        )
        return [decode_record(data) for (data,) in rows]

    def due(self, now: float, limit: int) -> list[str]:
        rows = self._read(
            "SELECT execution_id FROM executions WHERE deadline_at <= ? ORDER BY deadline_at LIMIT ?", (now, limit)
        )
        return [execution_id for (execution_id,) in rows]

    def expire(self, now: float) -> int:
        # Look without the write lock first: most reaper rounds find nothing to do.
        expired = bool(self._read("SELECT 1 FROM executions WHERE expires_at <= ? LIMIT 1", (now,)))
        forgotten = bool(self._read("SELECT 1 FROM ended WHERE until <= ? LIMIT 1", (now,)))
        released = self._read(_RELEASABLE, (now - self.task_retention,))
        if not (expired or forgotten or released):
            return 0
        with self._transaction() as conn:
            ended = conn.execute(
                "SELECT execution_id, status, task_name FROM executions WHERE expires_at <= ?", (now,)
            ).fetchall()
            conn.execute("DELETE FROM executions WHERE expires_at <= ?", (now,))
            conn.execute("UPDATE meta SET value = value - ? WHERE key = 'tracked'", (len(ended),))
            if self.dedup_seconds > 0:
                conn.executemany(
                    "INSERT OR REPLACE INTO ended VALUES (?, ?, ?)",
                    [
                        (execution_id, status, now + self.dedup_seconds)
                        for execution_id, status, _ in ended
                        if status in FINAL_STATUSES
                    ],
                )
            conn.executemany(
                "UPDATE task_names SET last_seen = ? WHERE name = ?",
                [(now, name) for name in {name for _, _, name in ended if name is not None}],
            )
            conn.execute("DELETE FROM ended WHERE until <= ?", (now,))
            for (name,) in conn.execute(_RELEASABLE, (now - self.task_retention,)).fetchall():
                conn.execute("DELETE FROM task_names WHERE name = ?", (name,))
                conn.execute("DELETE FROM tasks WHERE task_name = ?", (name,))
                conn.execute("DELETE FROM ping_uuids WHERE task_name = ?", (name,))
                # Its series go with it: names that come and go must not grow the counters.
                conn.execute(
                    "DELETE FROM counters WHERE name LIKE 'task\\_%' ESCAPE '\\' AND json_extract(labels, '$[0]') = ?",
                    (name,),
                )
                log.info("task name %r released: nothing tracked carried it for %.0fs", name, self.task_retention)
        return len(ended)

    def snapshot(self) -> Snapshot:
        self._connection()
        readers = self._take_readers()
        try:
            return self._snapshot(readers)
        finally:
            if readers is not None:
                self._give_back(readers)

    def _snapshot(self, readers: _ScrapeReaders | None) -> Snapshot:
        with self._transaction("DEFERRED") as conn:
            # SQLite joins each family's texts itself: Python sees a few long strings, not a
            # row per execution.
            exposition = self._exposition(conn, readers)
            executions = {
                (task, status): count
                for task, status, count in conn.execute(
                    "SELECT metric_task, status, count(*) FROM executions GROUP BY metric_task, status"
                )
            }
            counters, exemplars = {}, {}
            for name, labels, value, exemplar in conn.execute("SELECT name, labels, value, exemplar FROM counters"):
                key = (name, tuple(json.loads(labels)))
                counters[key] = value
                if exemplar:
                    exemplars[key] = tuple(json.loads(exemplar))
            task_names = [name for (name,) in conn.execute("SELECT name FROM task_names")]
            tasks = [decode_task(data) for (data,) in conn.execute("SELECT data FROM tasks ORDER BY task_name")]
            notes = dict(conn.execute("SELECT key, value FROM notes"))
        return Snapshot(exposition, executions, counters, task_names, exemplars, tasks, notes)

    def count(self, name: str, labels: tuple[str, ...], amount: float = 1.0) -> None:
        with self._transaction() as conn:
            conn.execute(_INCREMENT, (name, _labels_key(labels), amount, None))

    def ping(self) -> None:
        # A real write (which also needs room to grow): a store that can only be read is not ready.
        with self._transaction() as conn:
            conn.execute("INSERT INTO meta VALUES ('ping', 0) ON CONFLICT (key) DO UPDATE SET value = value + 1")

    def close(self) -> None:
        self._drop_connection()
        with self._helpers_made:
            readers, self._readers = self._readers, None
            checkpointer, self._checkpointer = self._checkpointer, None
        if self._pid == os.getpid():
            if readers is not None:
                readers.close()
            if checkpointer is not None:
                checkpointer.stop()
        fd = getattr(self._local, "writer_fd", None)
        self._local.writer_fd = None
        if fd is not None:
            os.close(fd)
