"""The scale-out store: Redis, shared by many replicas.

Each batch of events (one, or those group-committed together) is an optimistic
transaction. First, in two round trips: read the records in one ``MGET``, let the rules
decide, and hand every write to one Lua script, which makes them only if each record is
still the one read (the same bytes, or still absent) and the new executions fit under
``BRIDGE_MAX_EXECUTIONS``. When it refuses, or a decision needs a task name this process
has not seen, the batch is decided again under ``WATCH``: the keys watched, read in one
``MGET``, the writes in one ``MULTI``/``EXEC`` that a concurrent change makes fail, to
be decided again on the new records. So each transition and each increment happens
exactly once across replicas. Under ``WATCH`` the limit is checked without watching the
whole fleet, so it may be passed by as many new executions as arrive at the same
instant. Expiry is one Lua script; the scrape reads ids from a sorted set and the
records with pipelined ``MGET`` in chunks, never blocking Redis for long.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import time
from typing import Callable, Iterator, Sequence

import redis
from redis.exceptions import NoScriptError, RedisError, WatchError

from ..core.executions import OTHER_TASK, RECORD_FIELDS, UNKNOWN_TASK, Execution, Outcome, TaskLabel, tombstone
from .base import (DEFAULT_DEDUP_SECONDS, DEFAULT_TASK_RETENTION_SECONDS, CapacityError, Decide, ReaperMark,
                   Snapshot, Store, StoreUnavailable, add_increments, decode_record, decode_rows, encode_record,
                   encode_row, mark_round)

__all__ = ["RedisStore"]

log = logging.getLogger(__name__)

KEY_PREFIX = "hb:"
MAX_ATTEMPTS = 50
CHUNK = 1000
SOCKET_TIMEOUT_SECONDS = 5.0

# KEYS: the expiry, id and deadline sorted sets, the rows hash, the hash of names' last use.
# ARGV: now, the key prefix, how many at most, the positions of status and task_name in a
# stored record, the tombstone window in milliseconds (0: none).
_EXPIRE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local status_at, task_at, window = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
for _, id in ipairs(ids) do
  local raw = redis.call('GET', ARGV[2] .. 'x:' .. id)
  if raw then
    local record = cjson.decode(raw)
    local status, task = record[status_at] or record.status, record[task_at] or record.task_name
    if type(status) == 'string' then
      redis.call('ZREM', ARGV[2] .. 'status:' .. status, id)
      if window > 0 and (status == 'completed' or status == 'failed') then
        redis.call('SET', ARGV[2] .. 't:' .. id, status, 'PX', window)
      end
    end
    if type(task) == 'string' then
      redis.call('ZREM', ARGV[2] .. 'task:' .. task, id)
      redis.call('HSET', KEYS[5], task, ARGV[1])
    end
  end
  redis.call('DEL', ARGV[2] .. 'x:' .. id)
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZREM', KEYS[3], id)
  redis.call('HDEL', KEYS[4], id)
end
return #ids
"""

# KEYS: the names set, the hash of names' last use, the counter and exemplar hashes.
# ARGV: the key prefix, the cut-off. Releases each name no tracked execution carries that
# was last used before the cut-off, with its task_* series. Returns the names released.
_RELEASE = """
local released = {}
local seen = redis.call('HGETALL', KEYS[2])
for i = 1, #seen, 2 do
  local name, at = seen[i], tonumber(seen[i + 1])
  if at <= tonumber(ARGV[2]) and redis.call('ZCARD', ARGV[1] .. 'task:' .. name) == 0 then
    redis.call('SREM', KEYS[1], name)
    redis.call('HDEL', KEYS[2], name)
    released[#released + 1] = name
  end
end
if #released > 0 then
  local gone = {}
  for _, name in ipairs(released) do gone[name] = true end
  for _, field in ipairs(redis.call('HKEYS', KEYS[3])) do
    local series = cjson.decode(field)
    if string.sub(series[1], 1, 5) == 'task_' and gone[series[2][1]] then
      redis.call('HDEL', KEYS[3], field)
      redis.call('HDEL', KEYS[4], field)
    end
  end
end
return released
"""





# KEYS: the id, deadline and expiry sorted sets, the rows, counter and exemplar hashes, the
# names set. ARGV: the prefix of the record keys; the limit on executions; the records, six
# fields each: id, the bytes as read ('' when absent), the new bytes, the row, the deadline
# and the expiry (a score, or '' for none); the counters, three fields each: hash
# field, amount, exemplar ('' for none); the filter indexes to leave and join, three fields
# each ('-' or '+', the index key after the prefix, the id); the prefix; the task names the
# new executions are counted under, which must still be in the names set. The fields of a
# list are joined by the unit separator (\31), which JSON, execution ids and task names
# never hold: a few strings for redis-py to pack, not hundreds, and none for the script to
# parse as JSON. Commands go out once
# per batch, not once per record, in chunks within Lua's stack.
# Returns 1 when written, 0 when a record changed since it was read, -1 when the new
# executions do not fit: then nothing is written.
_WRITE = """
local function split(text)
  local fields, n, start = {}, 0, 1
  if text == '' then return fields end
  while true do
    local stop = string.find(text, '\\31', start, true)
    n = n + 1
    if not stop then
      fields[n] = string.sub(text, start)
      return fields
    end
    fields[n] = string.sub(text, start, stop - 1)
    start = stop + 1
  end
end
local function send(command, key, args)
  for first = 1, #args, 1000 do
    local last = math.min(first + 999, #args)
    if key then
      redis.call(command, key, unpack(args, first, last))
    else
      redis.call(command, unpack(args, first, last))
    end
  end
end
for _, name in ipairs(split(ARGV[7])) do
  if redis.call('SISMEMBER', KEYS[7], name) == 0 then return 0 end
end
local r = split(ARGV[3])
local keys = {}
for i = 1, #r, 6 do keys[#keys + 1] = ARGV[1] .. r[i] end
local new = 0
for first = 1, #keys, 1000 do
  local current = redis.call('MGET', unpack(keys, first, math.min(first + 999, #keys)))
  for k, now in ipairs(current) do
    local read = r[6 * (first + k - 1) - 4]
    if read == '' then
      if now then return 0 end
      new = new + 1
    elseif now ~= read then
      return 0
    end
  end
end
if new > 0 and redis.call('ZCARD', KEYS[1]) + new > tonumber(ARGV[2]) then
  return -1
end
local records, rows, added, index = {}, {}, {}, {{}, {}, {}, {}}
for j = 1, #keys do
  local i = 6 * j - 5
  local id = r[i]
  records[#records + 1] = keys[j]
  records[#records + 1] = r[i + 2]
  rows[#rows + 1] = id
  rows[#rows + 1] = r[i + 3]
  if r[i + 1] == '' then
    added[#added + 1] = 0
    added[#added + 1] = id
  end
  for s = 0, 1 do
    local score = r[i + 4 + s]
    if score == '' then
      local removed = index[2 * s + 2]
      removed[#removed + 1] = id
    else
      local scored = index[2 * s + 1]
      scored[#scored + 1] = score
      scored[#scored + 1] = id
    end
  end
end
send('MSET', nil, records)
send('HSET', KEYS[4], rows)
send('ZADD', KEYS[1], added)
send('ZADD', KEYS[2], index[1])
send('ZREM', KEYS[2], index[2])
send('ZADD', KEYS[3], index[3])
send('ZREM', KEYS[3], index[4])
local moved = split(ARGV[5])
for i = 1, #moved, 3 do
  if moved[i] == '-' then
    redis.call('ZREM', ARGV[6] .. moved[i + 1], moved[i + 2])
  else
    redis.call('ZADD', ARGV[6] .. moved[i + 1], 0, moved[i + 2])
  end
end
local c = split(ARGV[4])
for i = 1, #c, 3 do
  redis.call('HINCRBYFLOAT', KEYS[5], c[i], c[i + 1])
  if c[i + 2] ~= '' then redis.call('HSET', KEYS[6], c[i], c[i + 2]) end
end
return 1
"""

_SEPARATOR = "\x1f"
#: The version of the keys' layout: 2 added the filter indexes and the names' last use.
_SCHEMA = 2
#: Where the expiry script finds a stored record's status and task name (Lua counts from 1).
_STATUS_AT = RECORD_FIELDS.index("status") + 1
_TASK_AT = RECORD_FIELDS.index("task_name") + 1


def _tombstones(absent: list[str], statuses: list[bytes | None]) -> dict[str, Execution]:
    """Return the tombstone records of the ``absent`` ids whose tombstone key held a status."""
    return {execution_id: tombstone(execution_id, status.decode())
            for execution_id, status in zip(absent, statuses) if status}


def _index_moves(before: Execution | None, after: Execution) -> list[str]:
    """Return the filter-index changes of a record going from ``before`` to ``after``:
    three fields each, '-' or '+', the index key after the prefix, the execution id."""
    moves: list[str] = []
    for kind, old, new in (("status:", before.status if before else None, after.status),
                           ("task:", before.task_name if before else None, after.task_name)):
        if old != new:
            if old is not None:
                moves += ("-", kind + old, after.execution_id)
            if new is not None:
                moves += ("+", kind + new, after.execution_id)
    return moves


def _score(value: float | None) -> str:
    return "" if value is None else repr(value)


class _Decided:
    """A batch's decisions: one result per item, the records to write, the summed increments."""

    def __init__(self) -> None:
        self.results: list[Outcome | CapacityError] = []
        self.changed: dict[str, Execution] = {}
        self.increments: dict[tuple[str, tuple[str, ...]], list] = {}


class _NeedsWatch(Exception):
    """A decision needs a task name this process has not seen: decide the batch under WATCH."""


@functools.lru_cache(maxsize=4096)  # label sets are few (task names are capped), used on every write
def _field(name: str, labels: tuple[str, ...]) -> str:
    return json.dumps([name, list(labels)], ensure_ascii=False, separators=(",", ":"))


class RedisStore(Store):
    """A :class:`Store` in one Redis database."""

    def __init__(self, url: str, *, max_executions: int, max_task_names: int,
                 dedup_seconds: float = DEFAULT_DEDUP_SECONDS, task_retention: float = DEFAULT_TASK_RETENTION_SECONDS,
                 prefix: str = KEY_PREFIX):
        super().__init__(max_executions, max_task_names, dedup_seconds, task_retention)
        self._prefix = prefix
        self._redis = redis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT_SECONDS,
                                           socket_connect_timeout=SOCKET_TIMEOUT_SECONDS)
        self._records = prefix + "x:"  # the record keys: <prefix>x:<execution id>
        self._ids = prefix + "ids"
        self._deadlines = prefix + "deadline"
        self._expiry = prefix + "expiry"
        self._counters = prefix + "counters"
        self._exemplars = prefix + "exemplars"
        self._tasks = prefix + "tasks"
        self._rows = prefix + "rows"
        self._task_seen = prefix + "task_seen"
        self._expire_script = self._redis.register_script(_EXPIRE)
        self._release_script = self._redis.register_script(_RELEASE)
        self._write_script = self._redis.register_script(_WRITE)
        self._reaper = prefix + "reaper"
        self.ping()
        self._build_indexes()

    def _key(self, execution_id: str) -> str:
        return self._records + execution_id

    # -- the Store interface -------------------------------------------------------

    def apply_many(self, items: Sequence[tuple[str, Decide]]) -> list[Outcome | CapacityError]:
        keys = list(dict.fromkeys(self._key(execution_id) for execution_id, _ in items))
        try:
            results = self._try_script(keys, items)
            if results is not None:
                return results
            with self._redis.pipeline() as pipe:
                for _attempt in range(MAX_ATTEMPTS):
                    try:
                        return self._try_watched(pipe, keys, items)
                    except WatchError:
                        continue  # another replica changed one first: decide again
        except RedisError as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc
        raise StoreUnavailable(f"redis: a batch of {len(items)} kept changing under {MAX_ATTEMPTS} attempts")

    def _try_script(self, keys: list[str], items: Sequence[tuple[str, Decide]]) -> list[Outcome | CapacityError] | None:
        """Return the results of the batch decided on one read and written by one script call.

        Returns None, having written nothing, when the batch must be decided under WATCH.
        """
        with self._connection() as connection:
            connection.send_command("MGET", *keys)
            prefix = len(self._records)
            stored = {key[prefix:]: raw for key, raw in zip(keys, connection.read_response()) if raw is not None}
            before = {execution_id: decode_record(raw) for execution_id, raw in stored.items()}
            absent = [key[prefix:] for key in keys if key[prefix:] not in stored]
            tombstones: dict[str, Execution] = {}
            if absent:  # an id that ended and left retention answers repeats as a duplicate
                connection.send_command("MGET", *(self._tombstone(execution_id) for execution_id in absent))
                tombstones = _tombstones(absent, connection.read_response())
            try:
                batch = self._decide({**before, **tombstones}, items, self._known_label)
            except _NeedsWatch:
                return None
            if not batch.changed:
                return batch.results
            records: list[str] = []
            moves: list[str] = []
            new_names: set[str] = set()
            for execution_id, record in batch.changed.items():
                read = stored.get(execution_id)
                records += (execution_id, "" if read is None else read.decode(), encode_record(record),
                            encode_row(record), _score(record.deadline_at), _score(record.expires_at))
                moves += _index_moves(before.get(execution_id), record)
                if read is None and record.metric_task_name not in (UNKNOWN_TASK, OTHER_TASK):
                    new_names.add(record.metric_task_name)
            counters: list[str] = []
            for (name, labels), (amount, exemplar) in batch.increments.items():
                counters += (_field(name, labels), repr(amount), json.dumps(exemplar) if exemplar else "")
            written = self._call_write_script(
                connection, (self._ids, self._deadlines, self._expiry, self._rows, self._counters, self._exemplars,
                             self._tasks),
                (self._records, self.max_executions, _SEPARATOR.join(records), _SEPARATOR.join(counters),
                 _SEPARATOR.join(moves), self._prefix, _SEPARATOR.join(new_names)))
        return batch.results if written == 1 else None

    def _tombstone(self, execution_id: str) -> str:
        return f"{self._prefix}t:{execution_id}"

    @contextlib.contextmanager
    def _connection(self) -> Iterator[redis.Connection]:
        """Yield a connection of the pool, for commands sent and read one by one.

        A command through the client passes layers (retries, response callbacks, timing
        hooks) that cost this process about 35 µs per command here; the commit path, two
        commands per batch, skips them. The pool still checks the connection before
        lending it, so one dropped meanwhile is opened again; and a connection that fails
        between a command and its reply closes itself (redis-py), so none goes back to the
        pool with a reply unread. Each command here is read right after it is sent.
        """
        pool = self._redis.connection_pool
        connection = pool.get_connection()
        try:
            yield connection
        finally:
            pool.release(connection)

    def _call_write_script(self, connection: redis.Connection, keys: tuple, args: tuple) -> int:
        """Return the write script's reply (1, 0 or -1); loads the script if Redis lacks it."""
        connection.send_command("EVALSHA", self._write_script.sha, len(keys), *keys, *args)
        try:
            return connection.read_response()
        except NoScriptError:  # Redis restarted, or its scripts were flushed
            connection.send_command("SCRIPT", "LOAD", _WRITE)
            connection.read_response()
            connection.send_command("EVALSHA", self._write_script.sha, len(keys), *keys, *args)
            return connection.read_response()

    def _try_watched(self, pipe, keys: list[str], items: Sequence[tuple[str, Decide]]) -> list[Outcome | CapacityError]:
        pipe.watch(*keys)
        prefix = len(self._records)
        records = {key[prefix:]: decode_record(raw) for key, raw in zip(keys, pipe.mget(keys)) if raw is not None}
        before = dict(records)
        absent = [key[prefix:] for key in keys if key[prefix:] not in records]
        if absent:  # tombstones are written with the record's removal, which WATCH sees
            records.update(_tombstones(absent, pipe.mget([self._tombstone(e) for e in absent])))
        new_names: list[str] = []
        # The count of executions (ZCARD) is not watched: every insert would conflict with
        # every other. So here the limit may be passed by the inserts in flight at once.
        batch = self._decide(records, items, lambda name: self._task_label(pipe, name, new_names),
                             new_names, lambda: pipe.zcard(self._ids))
        if not batch.changed:
            pipe.unwatch()
            return batch.results
        pipe.multi()
        for execution_id, record in batch.changed.items():
            self._write(pipe, record, before.get(execution_id))
        if new_names:
            pipe.sadd(self._tasks, *new_names)
        for (name, labels), (amount, exemplar) in batch.increments.items():
            field = _field(name, labels)
            pipe.hincrbyfloat(self._counters, field, amount)
            if exemplar:
                pipe.hset(self._exemplars, field, json.dumps(exemplar))
        pipe.execute()
        return batch.results

    def _decide(self, records: dict[str, Execution], items: Sequence[tuple[str, Decide]], label: TaskLabel,
                new_names: list[str] | None = None, count_tracked: Callable[[], int] | None = None) -> _Decided:
        """Decide each item in order on ``records``; return the results and what to write.

        With ``count_tracked``, a new execution beyond the limit is refused here (and
        the task names its decision added to ``new_names`` are taken back).
        """
        batch = _Decided()
        tracked: int | None = None
        for execution_id, decide in items:
            current = records.get(execution_id)
            names_before = len(new_names) if new_names is not None else 0
            outcome = decide(current, label)
            record = outcome.record
            if record is None:
                batch.results.append(outcome)
                continue
            if current is None and count_tracked is not None:
                tracked = count_tracked() if tracked is None else tracked
                if tracked >= self.max_executions:
                    del new_names[names_before:]  # a refused execution leaves nothing behind
                    batch.results.append(CapacityError(f"tracking {tracked} executions, the limit"))
                    continue
                tracked += 1
            record.version = 1 if current is None else current.version + 1
            records[execution_id] = batch.changed[execution_id] = record
            add_increments(batch.increments, outcome)
            batch.results.append(outcome)
        return batch

    def _known_label(self, name: str | None) -> str:
        """Return the label of a task name already in the store. Raises :class:`_NeedsWatch`."""
        label = self._label_if_known(name, lambda known: bool(self._redis.sismember(self._tasks, known)))
        if label is None:
            raise _NeedsWatch(name)
        return label

    def _task_label(self, pipe, name: str | None, new_names: list[str]) -> str:
        if name is None:
            return UNKNOWN_TASK
        if name in new_names or pipe.sismember(self._tasks, name):
            return name
        pipe.watch(self._tasks)  # the set's size decides: a concurrent addition must retry us
        if pipe.scard(self._tasks) + len(new_names) >= self.max_task_names:
            return OTHER_TASK
        new_names.append(name)
        return name

    def _write(self, pipe, record: Execution, before: Execution | None) -> None:
        execution_id = record.execution_id
        self._write_indexes(pipe, _index_moves(before, record))
        pipe.set(self._key(execution_id), encode_record(record))
        pipe.hset(self._rows, execution_id, encode_row(record))
        pipe.zadd(self._ids, {execution_id: 0})
        if record.deadline_at is None:
            pipe.zrem(self._deadlines, execution_id)
        else:
            pipe.zadd(self._deadlines, {execution_id: record.deadline_at})
        if record.expires_at is None:
            pipe.zrem(self._expiry, execution_id)
        else:
            pipe.zadd(self._expiry, {execution_id: record.expires_at})

    def _write_indexes(self, pipe, moves: list[str]) -> None:
        for first in range(0, len(moves), 3):
            sign, index, member = moves[first:first + 3]
            if sign == "-":
                pipe.zrem(self._prefix + index, member)
            else:
                pipe.zadd(self._prefix + index, {member: 0})

    def mark_reaped(self, now: float, outage_after: float, hold: float,
                    clock_stepped: bool = False) -> ReaperMark:
        # Once per reaper round: a WATCH transaction over one hash, so that the rule itself
        # is the one the SQLite store applies.
        try:
            with self._redis.pipeline() as pipe:
                for _attempt in range(MAX_ATTEMPTS):
                    try:
                        pipe.watch(self._reaper)
                        recorded = {k.decode(): float(v) for k, v in pipe.hgetall(self._reaper).items()}
                        written, mark = mark_round(recorded, now, outage_after, hold, clock_stepped)
                        pipe.multi()
                        pipe.hset(self._reaper, mapping={k: repr(v) for k, v in written.items()})
                        pipe.execute()
                        return mark
                    except WatchError:
                        continue
        except RedisError as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc
        raise StoreUnavailable(f"redis: the reaper's record kept changing under {MAX_ATTEMPTS} attempts")

    def get(self, execution_id: str) -> Execution | None:
        try:
            raw = self._redis.get(self._key(execution_id))
        except RedisError as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc
        return decode_record(raw) if raw is not None else None

    def query(self, *, status: str | None = None, task_name: str | None = None,
              after: str | None = None, limit: int = 100) -> list[Execution]:
        # A filter reads its index (ids by task, or by status), not every record; each
        # record read is checked again, since it may have changed between the two reads.
        index = (self._prefix + "task:" + task_name if task_name is not None
                 else self._prefix + "status:" + status if status is not None else self._ids)
        found: list[Execution] = []
        start = f"({after}" if after else "-"
        try:
            while len(found) < limit:
                ids = self._redis.zrangebylex(index, start, "+", start=0, num=CHUNK)
                if not ids:
                    break
                for raw in self._redis.mget([self._key(i.decode()) for i in ids]):
                    if raw is None:
                        continue  # expired between the two reads
                    record = decode_record(raw)
                    if (status is None or record.status == status) and \
                            (task_name is None or record.task_name == task_name):
                        found.append(record)
                        if len(found) == limit:
                            break
                start = "(" + ids[-1].decode()
        except RedisError as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc
        return found

    def due(self, now: float, limit: int) -> list[str]:
        try:
            ids = self._redis.zrangebyscore(self._deadlines, "-inf", now, start=0, num=limit)
        except RedisError as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc
        return [i.decode() for i in ids]

    def expire(self, now: float) -> int:
        dropped = 0
        try:
            while True:
                batch = self._expire_script(
                    keys=[self._expiry, self._ids, self._deadlines, self._rows, self._task_seen],
                    args=[repr(now), self._prefix, CHUNK, _STATUS_AT, _TASK_AT, int(self.dedup_seconds * 1000)])
                dropped += batch
                if batch < CHUNK:
                    break
            released = self._release_script(keys=[self._tasks, self._task_seen, self._counters, self._exemplars],
                                            args=[self._prefix, repr(now - self.task_retention)])
        except RedisError as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc
        for name in released:
            log.info("task name %r released: nothing tracked carried it for %.0fs", name.decode(),
                     self.task_retention)
        return dropped

    def _build_indexes(self) -> None:
        """Index the records of a store written before the filter indexes existed (once)."""
        version = self._prefix + "schema"
        try:
            if int(self._redis.get(version) or 1) >= _SCHEMA:
                return
            now = repr(time.time())
            for name in self._redis.smembers(self._tasks):  # a full retention from now
                self._redis.hsetnx(self._task_seen, name, now)
            start = "-"
            while ids := self._redis.zrangebylex(self._ids, start, "+", start=0, num=CHUNK):
                with self._redis.pipeline(transaction=False) as pipe:
                    for raw in self._redis.mget([self._key(i.decode()) for i in ids]):
                        if raw is not None:
                            record = decode_record(raw)
                            self._write_indexes(pipe, _index_moves(None, record))
                    pipe.execute()
                start = "(" + ids[-1].decode()
            self._redis.set(version, _SCHEMA)
        except RedisError as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc

    def snapshot(self) -> Snapshot:
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(self._counters)
                pipe.hgetall(self._exemplars)
                pipe.smembers(self._tasks)
                counters, exemplars, tasks = pipe.execute()
            # HSCAN in chunks: never one command that holds Redis for the whole fleet
            encoded = [value.decode() for _, value in self._redis.hscan_iter(self._rows, count=CHUNK)]
        except RedisError as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc
        decode = lambda field: (lambda pair: (pair[0], tuple(pair[1])))(json.loads(field))
        return Snapshot(
            decode_rows(encoded),
            {decode(f): float(v) for f, v in counters.items()},
            sorted(t.decode() for t in tasks),
            {decode(f): tuple(json.loads(v)) for f, v in exemplars.items()})

    def count(self, name: str, labels: tuple[str, ...], amount: float = 1.0) -> None:
        try:
            self._redis.hincrbyfloat(self._counters, _field(name, labels), amount)
        except RedisError as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc

    def ping(self) -> None:
        try:
            self._redis.ping()
        except RedisError as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc

    def close(self) -> None:
        self._redis.close()
