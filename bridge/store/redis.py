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
from typing import Callable, Iterator, Sequence

import redis
from redis.exceptions import NoScriptError, RedisError, WatchError

from ..state import UNKNOWN_TASK, Execution, Outcome, TaskLabel
from .base import (OTHER_TASK, CapacityError, Decide, ReaperMark, Snapshot, Store, StoreUnavailable,
                   add_increments, decode_record, decode_rows, encode_record, encode_row, mark_round)

__all__ = ["RedisStore"]

log = logging.getLogger(__name__)

KEY_PREFIX = "hb:"
MAX_ATTEMPTS = 50
CHUNK = 1000
SOCKET_TIMEOUT_SECONDS = 5.0

_EXPIRE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  redis.call('DEL', ARGV[2] .. id)
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZREM', KEYS[3], id)
  redis.call('HDEL', KEYS[4], id)
end
return #ids
"""




# KEYS: the id, deadline and expiry sorted sets, the rows, counter and exemplar hashes.
# ARGV: the prefix of the record keys; the limit on executions; the records, six fields
# each: id, the bytes as read ('' when absent), the new bytes, the row, the deadline and
# the expiry (a score, or '' for none); the counters, three fields each: hash
# field, amount, exemplar ('' for none). The fields of a list are joined by the unit
# separator (\31), which JSON and execution ids never hold: two strings for redis-py to
# pack, not hundreds, and none for the script to parse as JSON. Commands go out once
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
local c = split(ARGV[4])
for i = 1, #c, 3 do
  redis.call('HINCRBYFLOAT', KEYS[5], c[i], c[i + 1])
  if c[i + 2] ~= '' then redis.call('HSET', KEYS[6], c[i], c[i + 2]) end
end
return 1
"""

_SEPARATOR = "\x1f"


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
                 prefix: str = KEY_PREFIX):
        super().__init__(max_executions, max_task_names)
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
        self._expire_script = self._redis.register_script(_EXPIRE)
        self._write_script = self._redis.register_script(_WRITE)
        self._known_names: set[str] = set()
        self._reaper = prefix + "reaper"
        self.ping()

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
            try:
                batch = self._decide({execution_id: decode_record(raw) for execution_id, raw in stored.items()},
                                     items, self._known_label)
            except _NeedsWatch:
                return None
            if not batch.changed:
                return batch.results
            records: list[str] = []
            for execution_id, record in batch.changed.items():
                read = stored.get(execution_id)
                records += (execution_id, "" if read is None else read.decode(), encode_record(record),
                            encode_row(record), _score(record.deadline_at), _score(record.expires_at))
            counters: list[str] = []
            for (name, labels), (amount, exemplar) in batch.increments.items():
                counters += (_field(name, labels), repr(amount), json.dumps(exemplar) if exemplar else "")
            written = self._call_write_script(
                connection, (self._ids, self._deadlines, self._expiry, self._rows, self._counters, self._exemplars),
                (self._records, self.max_executions, _SEPARATOR.join(records), _SEPARATOR.join(counters)))
        return batch.results if written == 1 else None

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
        new_names: list[str] = []
        # The count of executions (ZCARD) is not watched: every insert would conflict with
        # every other. So here the limit may be passed by the inserts in flight at once.
        batch = self._decide(records, items, lambda name: self._task_label(pipe, name, new_names),
                             new_names, lambda: pipe.zcard(self._ids))
        if not batch.changed:
            pipe.unwatch()
            return batch.results
        pipe.multi()
        for record in batch.changed.values():
            self._write(pipe, record)
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
        if name is None:
            return UNKNOWN_TASK
        if name not in self._known_names:
            if not self._redis.sismember(self._tasks, name):
                raise _NeedsWatch(name)
            self._known_names.add(name)  # names are never removed: safe to remember
        return name

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

    def _write(self, pipe, record: Execution) -> None:
        execution_id = record.execution_id
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
        found: list[Execution] = []
        start = f"({after}" if after else "-"
        try:
            while len(found) < limit:
                ids = self._redis.zrangebylex(self._ids, start, "+", start=0, num=CHUNK)
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
                batch = self._expire_script(keys=[self._expiry, self._ids, self._deadlines, self._rows],
                                            args=[now, self._records, CHUNK])
                dropped += batch
                if batch < CHUNK:
                    return dropped
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
