"""The scale-out store: Redis (or Redis Cluster), shared by many replicas.

Every batch of events (one, or those group-committed together) is an optimistic
transaction with one write path. The records are read with one ``MGET``, the rules
decide (:mod:`bridge.store.batch`), and one Lua script writes everything only if what the
decisions read still holds: each record the same bytes (or still absent), the new
executions within ``BRIDGE_MAX_EXECUTIONS``, the task names still held (or still free and
within their limit). When it does not, the batch is read and decided again. So each
transition and each increment happens exactly once across replicas.

Every key starts with the hash tag ``{hb}``, and every script is given each key it
touches in ``KEYS``: all keys live in one hash slot, so the scripts run on Redis Cluster
and behind proxies that route by key. (A cluster then holds the bridge on one master:
the bridge wants one consistent store, not a sharded one.) Redis errors become
:class:`StoreUnavailable` in one place, :func:`_translated`.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import redis
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from ..core.executions import Execution, Outcome, tombstone
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
from .batch import Decided, TaskNames, decide_batch, decide_task_changes, decide_tasks
from .codec import decode_record, decode_task, encode_record, encode_task

__all__ = ["RedisStore"]

log = logging.getLogger(__name__)

KEY_PREFIX = "{hb}:"
#: The prefix of the keys before they shared a hash tag (schema 2 and earlier).
_UNTAGGED_PREFIX = "hb:"
MAX_ATTEMPTS = 50
CHUNK = 1000
SOCKET_TIMEOUT_SECONDS = 5.0
#: The version of the keys' layout: 2 added the filter indexes and the names' last use,
#: 3 the hash tag, 4 the ping uuid index.
_SCHEMA = 4
_SEPARATOR = "\x1f"

# The scripts' lists travel as one string each, their fields joined by the unit separator
# (\31), which JSON, execution ids and task names never hold: a few strings for redis-py
# to pack, not thousands. Commands go out once per batch, in chunks within Lua's stack.
_LUA_HELPERS = """
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
-- Exposition texts: each family's hash (by its position in KEYS) to its texts to write
-- (id, text, ...) and its ids to remove (where an execution has none now).
local function add_text(texts, at, id, text)
  local family = texts[at]
  if not family then
    family = {{}, {}}
    texts[at] = family
  end
  if text == '' then
    family[2][#family[2] + 1] = id
  else
    family[1][#family[1] + 1] = id
    family[1][#family[1] + 1] = text
  end
end
local function write_texts(texts)
  for at, family in pairs(texts) do
    send('HSET', KEYS[at], family[1])
    send('HDEL', KEYS[at], family[2])
  end
end
"""

# KEYS: 1 ids, 2 deadlines, 3 expiries (sorted sets), 4 kinds, 5 counters, 6 exemplars
# (hashes), 7 task names (set), 8 tasks (hash), 9 tasks' deadlines (sorted set), 10 declared
# task names (set), 11 ping uuids (hash: uuid -> task name), then each record's key in the
# order of ARGV[3], then the filter indexes the moves name and the exposition families' hashes
# the texts name.
# ARGV: 1 the limit on executions; 2 the limit on task names; 3 the records, five fields each:
# the bytes as read ('' when absent), the new bytes, the kind (metric task name and status; ''
# when unchanged), the deadline and the expiry (a score, or '' for none); 4 the counters,
# three fields each: hash field, amount, exemplar ('' for none); 5 the index moves, three
# fields each: '-' or '+', the index's position in KEYS, the execution id; 6 the task names
# the decisions found held; 7 those the batch adds; 8 the prefix of the record keys; 9 the
# tasks, seven fields each: the name, the bytes as read ('' when absent), the new bytes, the
# deadline ('' for none), '1' when declared by the file or the API, its ping uuid as read and
# as written ('' for none); 10 the exposition texts that changed, three fields each: the
# position in KEYS of the family's hash, the execution id, the text ('' where it has none
# now). A ping uuid another task holds is not taken from it.
# Returns 1 when written, 0 (having written nothing) when anything read has changed.
_WRITE = (
    _LUA_HELPERS
    + """
local records_at = 12
local r = split(ARGV[3])
local count = #r / 5
for _, name in ipairs(split(ARGV[6])) do
  if redis.call('SISMEMBER', KEYS[7], name) == 0 then return 0 end
end
local added = split(ARGV[7])
for _, name in ipairs(added) do
  if redis.call('SISMEMBER', KEYS[7], name) == 1 then return 0 end
end
if #added > 0 and redis.call('SCARD', KEYS[7]) + #added > tonumber(ARGV[2]) then return 0 end
local new = 0
for first = 1, count, 1000 do
  local last = math.min(first + 999, count)
  local current = redis.call('MGET', unpack(KEYS, records_at + first - 1, records_at + last - 1))
  for k, now in ipairs(current) do
    local read = r[5 * (first + k - 1) - 4]
    if read == '' then
      if now then return 0 end
      new = new + 1
    elseif now ~= read then
      return 0
    end
  end
end
if new > 0 and redis.call('ZCARD', KEYS[1]) + new > tonumber(ARGV[1]) then return 0 end
local t = split(ARGV[9])
for i = 1, #t, 7 do
  if (redis.call('HGET', KEYS[8], t[i]) or '') ~= t[i + 1] then return 0 end
end
local records, kinds, joined, index = {}, {}, {}, {{}, {}, {}, {}}
for j = 1, count do
  local i = 5 * j - 4
  local key = KEYS[records_at + j - 1]
  local id = string.sub(key, #ARGV[8] + 1)
  records[#records + 1] = key
  records[#records + 1] = r[i + 1]
  if r[i + 2] ~= '' then
    kinds[#kinds + 1] = id
    kinds[#kinds + 1] = r[i + 2]
  end
  if r[i] == '' then
    joined[#joined + 1] = 0
    joined[#joined + 1] = id
  end
  for s = 0, 1 do
    local score = r[i + 3 + s]
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
send('HSET', KEYS[4], kinds)
local texts, changed = {}, split(ARGV[10])
for i = 1, #changed, 3 do
  add_text(texts, tonumber(changed[i]), changed[i + 1], changed[i + 2])
end
write_texts(texts)
send('ZADD', KEYS[1], joined)
send('ZADD', KEYS[2], index[1])
send('ZREM', KEYS[2], index[2])
send('ZADD', KEYS[3], index[3])
send('ZREM', KEYS[3], index[4])
local moved = split(ARGV[5])
for i = 1, #moved, 3 do
  if moved[i] == '-' then
    redis.call('ZREM', KEYS[tonumber(moved[i + 1])], moved[i + 2])
  else
    redis.call('ZADD', KEYS[tonumber(moved[i + 1])], 0, moved[i + 2])
  end
end
send('SADD', KEYS[7], added)
for i = 1, #t, 7 do
  local old_uuid, new_uuid = t[i + 5], t[i + 6]
  if old_uuid ~= '' and old_uuid ~= new_uuid and redis.call('HGET', KEYS[11], old_uuid) == t[i] then
    redis.call('HDEL', KEYS[11], old_uuid)
  end
  if new_uuid ~= '' then redis.call('HSETNX', KEYS[11], new_uuid, t[i]) end
  redis.call('HSET', KEYS[8], t[i], t[i + 2])
  if t[i + 3] == '' then
    redis.call('ZREM', KEYS[9], t[i])
  else
    redis.call('ZADD', KEYS[9], t[i + 3], t[i])
  end
  if t[i + 4] == '1' then
    redis.call('SADD', KEYS[10], t[i])
  else
    redis.call('SREM', KEYS[10], t[i])
  end
end
local c = split(ARGV[4])
for i = 1, #c, 3 do
  redis.call('HINCRBYFLOAT', KEYS[5], c[i], c[i + 1])
  if c[i + 2] ~= '' then redis.call('HSET', KEYS[6], c[i], c[i + 2]) end
end
return 1
"""
)

# KEYS: 1 expiries, 2 ids, 3 deadlines (sorted sets), 4 kinds, 5 names' last use (hashes),
# then the exposition text of each family (hashes, ARGV[5] of them), then for each
# execution: its record key, its tombstone key, its status index, its task index ('' names
# no index: the key is then the record's own, unused).
# ARGV: 1 now; 2 the tombstone window in milliseconds (0: none); 3 per execution, three
# fields: the bytes as read, the status, the task name ('' for none); 4 the prefix of the
# record keys; 5 how many families the exposition has.
# Drops each execution still as read and still due; returns how many.
_EXPIRE = (
    _LUA_HELPERS
    + """
local e = split(ARGV[3])
local families = tonumber(ARGV[5])
local dropped = 0
for j = 1, #e / 3 do
  local at = 6 + families + 4 * (j - 1)
  local record, status, task = e[3 * j - 2], e[3 * j - 1], e[3 * j]
  local id = string.sub(KEYS[at], #ARGV[4] + 1)
  local due = redis.call('ZSCORE', KEYS[1], id)
  local current = redis.call('GET', KEYS[at]) or ''
  if current == record and due and tonumber(due) <= tonumber(ARGV[1]) then
    redis.call('DEL', KEYS[at])
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    redis.call('ZREM', KEYS[3], id)
    redis.call('HDEL', KEYS[4], id)
    for k = 6, 5 + families do redis.call('HDEL', KEYS[k], id) end
    redis.call('ZREM', KEYS[at + 2], id)
    if task ~= '' then
      redis.call('ZREM', KEYS[at + 3], id)
      redis.call('HSET', KEYS[5], task, ARGV[1])
    end
    if tonumber(ARGV[2]) > 0 and (status == 'completed' or status == 'failed') then
      redis.call('SET', KEYS[at + 1], status, 'PX', ARGV[2])
    end
    dropped = dropped + 1
  end
end
return dropped
"""
)

# KEYS: 1 names (set), 2 names' last use, 3 counters, 4 exemplars, 5 tasks (hashes), 6 tasks'
# deadlines (sorted set), 7 declared task names (set), 8 ping uuids (hash), then the execution
# index of each name in ARGV[2].
# ARGV: 1 the cut-off; 2 the names to release if still unused since before the cut-off (or
# never used) and not declared; 3 each one's ping uuid ('' for none), in the same order.
# Releases them with their task, ping uuid and task_* series; returns the names released.
_RELEASE = (
    _LUA_HELPERS
    + """
local released, gone = {}, {}
local uuids = split(ARGV[3])
for j, name in ipairs(split(ARGV[2])) do
  local at = tonumber(redis.call('HGET', KEYS[2], name))
  if (not at or at <= tonumber(ARGV[1])) and redis.call('ZCARD', KEYS[8 + j]) == 0
      and redis.call('SISMEMBER', KEYS[7], name) == 0 then
    local held = uuids[j] or ''
    if held ~= '' and redis.call('HGET', KEYS[8], held) == name then redis.call('HDEL', KEYS[8], held) end
    redis.call('SREM', KEYS[1], name)
    redis.call('HDEL', KEYS[2], name)
    redis.call('HDEL', KEYS[5], name)
    redis.call('ZREM', KEYS[6], name)
    released[#released + 1] = name
    gone[name] = true
  end
end
if #released > 0 then
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
)

# KEYS: 1 ids (sorted set), 2 kinds, then the exposition text of each family (hashes).
# ARGV: 1 the lexical bound to read from ('-' at first), 2 how many executions to read.
# Returns nothing past the last execution; else the last id read, the kinds read with how
# many executions each has (kind, count, ...), and each family's texts, joined.
_SCRAPE = """
local ids = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], '+', 'LIMIT', 0, tonumber(ARGV[2]))
if #ids == 0 then return {} end
local tally, kinds = {}, {}
for _, kind in ipairs(redis.call('HMGET', KEYS[2], unpack(ids))) do
  if kind then tally[kind] = (tally[kind] or 0) + 1 end
end
for kind, n in pairs(tally) do
  kinds[#kinds + 1] = kind
  kinds[#kinds + 1] = n
end
local answer = {ids[#ids], kinds}
for k = 3, #KEYS do
  local found = {}
  for _, text in ipairs(redis.call('HMGET', KEYS[k], unpack(ids))) do
    if text then found[#found + 1] = text end
  end
  answer[#answer + 1] = table.concat(found)
end
return answer
"""

# KEYS: 1 kinds, then the exposition text of each family (hashes, ARGV[1] of them), then each
# record's key. ARGV: 1 how many families; 2 the prefix of the record keys; 3 per record its
# bytes as read, its kind and a text per family. Writes the kind and texts of each record
# still as read (one written since has its own); returns how many.
_RENDER = (
    _LUA_HELPERS
    + """
local families = tonumber(ARGV[1])
local stride = 2 + families
local r = split(ARGV[3])
local kinds, texts, written = {}, {}, 0
for j = 1, #r / stride do
  local i = stride * (j - 1) + 1
  local key = KEYS[1 + families + j]
  if redis.call('GET', key) == r[i] then
    local id = string.sub(key, #ARGV[2] + 1)
    kinds[#kinds + 1] = id
    kinds[#kinds + 1] = r[i + 1]
    for k = 1, families do add_text(texts, 1 + k, id, r[i + 1 + k]) end
    written = written + 1
  end
end
send('HSET', KEYS[1], kinds)
write_texts(texts)
return written
"""
)

# KEYS: 1 a hash. ARGV: the fields as read (name, value or ''), then '|', then the fields
# to write (name, value). Writes only if every field read is unchanged; returns 1 or 0.
# KEYS: 1 a hash. ARGV: 1 a field, 2 its new value. Returns the value it replaced (nil for none).
_SWAP = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return old
"""

_HASH_CAS = """
local i = 1
while ARGV[i] ~= '|' do
  if (redis.call('HGET', KEYS[1], ARGV[i]) or '') ~= ARGV[i + 1] then return 0 end
  i = i + 2
end
for j = i + 1, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[j], ARGV[j + 1]) end
return 1
"""

_T = TypeVar("_T")


def _translated(method: Callable[..., _T]) -> Callable[..., _T]:
    """Make ``method`` raise :class:`StoreUnavailable` for any failure of Redis or its client."""

    @functools.wraps(method)
    def translated(*args: Any, **kwargs: Any) -> _T:
        try:
            return method(*args, **kwargs)
        except (RedisError, RedisClusterException) as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc

    return translated


def _score(value: float | None) -> str:
    return "" if value is None else repr(value)


@functools.lru_cache(maxsize=4096)  # label sets are few (task names are capped), used on every write
def _field(name: str, labels: tuple[str, ...]) -> str:
    return json.dumps([name, list(labels)], ensure_ascii=False, separators=(",", ":"))


@functools.lru_cache(maxsize=4096)  # kinds are few: task names are capped, statuses five
def _kind_of(task: str, status: str) -> str:
    return json.dumps([task, status], ensure_ascii=False, separators=(",", ":"))


def _kind(record: Execution) -> str:
    """Return what the scrape counts ``record`` under: its metric task name and status."""
    return _kind_of(record.metric_task_name, record.status)


def _joined(fields: list[str]) -> str:
    """Return ``fields`` joined by the separator, for a script to split: exposition texts
    hold no control character (the input rules let none in), but a record from before
    those rules may, and it must not split a text in two."""
    joined = _SEPARATOR.join(fields)
    if joined.count(_SEPARATOR) > max(len(fields) - 1, 0):
        joined = _SEPARATOR.join(field.replace(_SEPARATOR, " ") for field in fields)
    return joined


def _decoded_tasks(raw: dict[str, bytes | None]) -> dict[str, Task]:
    return {name: decode_task(data) for name, data in raw.items() if data is not None}


def _note_value(raw: bytes) -> float | str:
    """Return a note as written: a number when it reads as one."""
    text = raw.decode()
    try:
        return float(text)
    except ValueError:
        return text


class _Keys(list[str]):
    """The keys a script is given, in order; each named once."""

    def __init__(self, keys: list[str]):
        super().__init__(keys)
        self._positions: dict[str, int] = {}

    def position(self, key: str) -> int:
        """Return where ``key`` is in the list, as Lua counts (from 1), adding it at the end if new."""
        if key not in self._positions:
            self.append(key)
            self._positions[key] = len(self)
        return self._positions[key]


def _client(url: str) -> redis.Redis | redis.RedisCluster:
    """Return a client for ``url``: a cluster client when the server is part of a Redis Cluster."""
    options: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT_SECONDS,
        "socket_connect_timeout": SOCKET_TIMEOUT_SECONDS,
    }
    client = redis.Redis.from_url(url, **options)
    try:
        clustered = client.info("cluster").get("cluster_enabled") == 1
    except ResponseError:  # a proxy that does not pass INFO on: it routes by key itself
        clustered = False
    if not clustered:
        return client
    client.close()
    return redis.RedisCluster.from_url(url, **options)


class RedisStore(Store):
    """A :class:`Store` in one Redis database, or one Redis Cluster."""

    @_translated
    def __init__(
        self,
        url: str,
        *,
        render: Rendering,
        max_executions: int,
        max_task_names: int,
        dedup_seconds: float = DEFAULT_DEDUP_SECONDS,
        task_retention: float = DEFAULT_TASK_RETENTION_SECONDS,
        prefix: str = KEY_PREFIX,
    ):
        super().__init__(render, max_executions, max_task_names, dedup_seconds, task_retention)
        self._prefix = prefix
        # Typed loosely: redis-py's types cannot say that answers are bytes (decode_responses off).
        self._redis: Any = _client(url)
        self._records = prefix + "x:"  # the record keys: <prefix>x:<execution id>
        self._ids = prefix + "ids"
        self._deadlines = prefix + "deadline"
        self._expiry = prefix + "expiry"
        self._counters = prefix + "counters"
        self._exemplars = prefix + "exemplars"
        self._task_name_set = prefix + "tasks"  # the names held under the cap; the tasks: _task_records
        self._kinds = prefix + "kinds"  # execution id -> its metric task name and status
        # execution id -> its exposition text in one family, a hash per family
        self._texts = [f"{prefix}exposition:{k}" for k in range(render.families)]
        self._task_seen = prefix + "task_seen"
        self._reaper = prefix + "reaper"
        self._task_records = prefix + "task_records"
        self._task_deadlines = prefix + "task_deadlines"
        self._declared = prefix + "declared"
        self._ping_uuids = prefix + "ping_uuids"
        self._notes = prefix + "notes"
        self._write_script = self._redis.register_script(_WRITE)
        self._expire_script = self._redis.register_script(_EXPIRE)
        self._release_script = self._redis.register_script(_RELEASE)
        self._hash_cas = self._redis.register_script(_HASH_CAS)
        self._swap = self._redis.register_script(_SWAP)
        self._scrape_script = self._redis.register_script(_SCRAPE)
        self._render_script = self._redis.register_script(_RENDER)
        self._upgrade()
        self._render_again()

    def _key(self, execution_id: str) -> str:
        return self._records + execution_id

    def _tombstone(self, execution_id: str) -> str:
        return f"{self._prefix}t:{execution_id}"

    def _index(self, kind: str, value: str) -> str:
        """Return the key of the filter index of executions whose ``kind`` is ``value``."""
        return f"{self._prefix}{kind}:{value}"

    # -- the Store interface -------------------------------------------------------

    @_translated
    def apply_many(self, items: Sequence[tuple[str, Decide]], *, whole: bool = False) -> list[Outcome]:
        ids = list(dict.fromkeys(execution_id for execution_id, _ in items))
        for _attempt in range(MAX_ATTEMPTS):
            raw = dict(zip(ids, self._redis.mget([self._key(execution_id) for execution_id in ids])))
            stored = {execution_id: decode_record(data) for execution_id, data in raw.items() if data is not None}
            absent = [execution_id for execution_id in ids if raw[execution_id] is None]
            tombstones: dict[str, Execution] = {}
            if absent:  # an id that ended and left retention answers repeats as a duplicate
                statuses = self._redis.mget([self._tombstone(execution_id) for execution_id in absent])
                tombstones = {
                    execution_id: tombstone(execution_id, status.decode())
                    for execution_id, status in zip(absent, statuses)
                    if status
                }
            names = self._task_names()
            batch = decide_batch(
                items, stored, tombstones, names, lambda: self._redis.zcard(self._ids), self.max_executions, whole
            )
            raw_tasks: dict[str, bytes | None] = {}
            if batch.task_changes:
                raw_tasks = self._read_tasks([name for name, *_ in batch.task_changes])
                decide_task_changes(batch, _decoded_tasks(raw_tasks))
            if not batch.changed or self._write(batch, raw, stored, names, raw_tasks) == 1:
                return batch.results
            # another replica changed what the batch read: read and decide again
        raise StoreUnavailable(f"redis: a batch of {len(items)} kept changing under {MAX_ATTEMPTS} attempts")

    def _read_tasks(self, names: list[str]) -> dict[str, bytes | None]:
        """Return the stored bytes of each task in ``names`` (None for an unknown one)."""
        names = list(dict.fromkeys(names))
        return dict(zip(names, self._redis.hmget(self._task_records, names)))

    def _write(
        self,
        batch: Decided,
        raw: dict[str, bytes | None],
        stored: dict[str, Execution],
        names: TaskNames,
        raw_tasks: dict[str, bytes | None],
    ) -> int:
        """Hand the batch's writes to the write script: each record with the bytes it was
        decided on (``raw``, decoded as ``stored``). Returns the script's answer: 1 written,
        0 stale."""
        keys = _Keys(
            [
                self._ids,
                self._deadlines,
                self._expiry,
                self._kinds,
                self._counters,
                self._exemplars,
                self._task_name_set,
                self._task_records,
                self._task_deadlines,
                self._declared,
                self._ping_uuids,
            ]
        )
        records: list[str] = []
        for execution_id, record in batch.changed.items():
            keys.append(self._key(execution_id))
            read = raw[execution_id]
            before = stored.get(execution_id)
            kind = _kind(record)
            records += (
                "" if read is None else read.decode(),
                encode_record(record),
                "" if before is not None and _kind(before) == kind else kind,
                _score(record.deadline_at),
                _score(record.expires_at),
            )
        index_moves = self._index_moves(batch, stored, keys)
        texts = self._text_changes(batch, stored, keys)
        counters: list[str] = []
        for (name, labels), (amount, exemplar) in batch.increments.items():
            counters += (_field(name, labels), repr(amount), json.dumps(exemplar) if exemplar else "")
        tasks: list[str] = []
        for name, task in batch.tasks.items():
            read = raw_tasks.get(name)
            tasks += (
                name,
                "" if read is None else read.decode(),
                encode_task(task),
                _score(task.deadline_at),
                "1" if is_declared(task) else "0",
                (ping_uuid_of(decode_task(read)) or "") if read is not None else "",
                ping_uuid_of(task) or "",
            )
        return self._write_script(
            keys=keys,
            args=[
                self.max_executions,
                self.max_task_names,
                _SEPARATOR.join(records),
                _SEPARATOR.join(counters),
                _SEPARATOR.join(index_moves),
                _SEPARATOR.join(sorted(names.known)),
                _SEPARATOR.join(names.added),
                self._records,
                _SEPARATOR.join(tasks),
                _joined(texts),
            ],
        )

    def _index_moves(self, batch: Decided, stored: dict[str, Execution], keys: _Keys) -> list[str]:
        """Return the write script's fields for the filter indexes the batch's records leave and join."""
        moves: list[str] = []
        for execution_id, record in batch.changed.items():
            before = stored.get(execution_id)
            for kind, old, new in (
                ("status", before.status if before else None, record.status),
                ("task", before.task_name if before else None, record.task_name),
            ):
                if old == new:
                    continue
                for sign, value in (("-", old), ("+", new)):
                    if value is not None:
                        moves += (sign, str(keys.position(self._index(kind, value))), execution_id)
        return moves

    def _text_changes(self, batch: Decided, stored: dict[str, Execution], keys: _Keys) -> list[str]:
        """Return the write script's fields for the exposition texts the batch's records change:
        a heartbeat changes one or two, and Redis keeps the others as they are."""
        changes: list[str] = []
        for execution_id, record in batch.changed.items():
            # A new execution (or one back after it expired) has no text kept: stored has no record.
            for family, text in self.render.changes(stored.get(execution_id), record).items():
                changes += (str(keys.position(self._texts[family])), execution_id, text)
        return changes

    @_translated
    def apply_tasks(self, items: Sequence[tuple[str, DecideTask]], *, headroom: int = 0) -> list[TaskOutcome]:
        if not items:  # HMGET takes at least one field: an empty tasks file has nothing to apply
            return []
        for _attempt in range(MAX_ATTEMPTS):
            raw_tasks = self._read_tasks([name for name, _ in items])
            names = self._task_names(headroom)
            batch = decide_tasks(items, _decoded_tasks(raw_tasks), names)
            if not batch.tasks or self._write(batch, {}, {}, names, raw_tasks) == 1:
                return batch.results
        raise StoreUnavailable(f"redis: {len(items)} tasks kept changing under {MAX_ATTEMPTS} attempts")

    def _task_names(self, headroom: int = 0) -> TaskNames:
        """Return the task-name labels of one batch, as this store holds them."""
        return TaskNames(
            self.max_task_names - headroom,
            lambda name: self._holds_name(name, lambda known: bool(self._redis.sismember(self._task_name_set, known))),
            lambda: self._redis.scard(self._task_name_set),
        )

    @_translated
    def task_by_ping_uuid(self, ping_uuid: str) -> str | None:
        name = self._redis.hget(self._ping_uuids, ping_uuid)
        return name.decode() if name is not None else None

    @_translated
    def note(self, key: str, value: float | str) -> float | str | None:
        old = self._swap(keys=[self._notes], args=[key, value if isinstance(value, str) else repr(value)])
        return _note_value(old) if old is not None else None

    @_translated
    def get_task(self, name: str) -> Task | None:
        raw = self._redis.hget(self._task_records, name)
        return decode_task(raw) if raw is not None else None

    @_translated
    def tasks(self) -> list[Task]:
        return sorted(
            (decode_task(raw) for raw in self._redis.hvals(self._task_records)), key=lambda task: task.task_name
        )

    @_translated
    def due_tasks(self, now: float, limit: int) -> list[str]:
        return [
            name.decode() for name in self._redis.zrangebyscore(self._task_deadlines, "-inf", now, start=0, num=limit)
        ]

    @_translated
    def mark_reaped(self, now: float, outage_after: float, hold: float, clock_stepped: bool = False) -> ReaperMark:
        # Once per reaper round: the shared record read, the rule applied, and the result
        # written only if the record is still as read.
        for _attempt in range(MAX_ATTEMPTS):
            raw = {k.decode(): v.decode() for k, v in self._redis.hgetall(self._reaper).items()}
            written, mark = mark_round({k: float(v) for k, v in raw.items()}, now, outage_after, hold, clock_stepped)
            expected = [
                part for name in ("reaped_at", "hold_until", "rebased_at") for part in (name, raw.get(name, ""))
            ]
            update = [part for name, value in written.items() for part in (name, repr(value))]
            if self._hash_cas(keys=[self._reaper], args=[*expected, "|", *update]) == 1:
                return mark
        raise StoreUnavailable(f"redis: the reaper's record kept changing under {MAX_ATTEMPTS} attempts")

    @_translated
    def get(self, execution_id: str) -> Execution | None:
        raw = self._redis.get(self._key(execution_id))
        return decode_record(raw) if raw is not None else None

    @_translated
    def query(
        self, *, status: str | None = None, task_name: str | None = None, after: str | None = None, limit: int = 100
    ) -> list[Execution]:
        # A filter reads its index (ids by task, or by status), not every record; each
        # record read is checked again, since it may have changed between the two reads.
        index = (
            self._index("task", task_name)
            if task_name is not None
            else self._index("status", status)
            if status is not None
            else self._ids
        )
        found: list[Execution] = []
        start = f"({after}" if after else "-"
        while len(found) < limit:
            ids = self._redis.zrangebylex(index, start, "+", start=0, num=CHUNK)
            if not ids:
                break
            for raw in self._redis.mget([self._key(i.decode()) for i in ids]):
                if raw is None:
                    continue  # expired between the two reads
                record = decode_record(raw)
                if (status is None or record.status == status) and (task_name is None or record.task_name == task_name):
                    found.append(record)
                    if len(found) == limit:
                        break
            start = "(" + ids[-1].decode()
        return found

    @_translated
    def due(self, now: float, limit: int) -> list[str]:
        return [i.decode() for i in self._redis.zrangebyscore(self._deadlines, "-inf", now, start=0, num=limit)]

    @_translated
    def expire(self, now: float) -> int:
        dropped = 0
        while ids := [i.decode() for i in self._redis.zrangebyscore(self._expiry, "-inf", now, start=0, num=CHUNK)]:
            keys = [self._expiry, self._ids, self._deadlines, self._kinds, self._task_seen, *self._texts]
            fields: list[str] = []
            for execution_id, raw in zip(ids, self._redis.mget([self._key(i) for i in ids])):
                record = decode_record(raw) if raw is not None else None
                status = record.status if record is not None else ""
                task = (record.task_name or "") if record is not None else ""
                keys += (
                    self._key(execution_id),
                    self._tombstone(execution_id),
                    self._index("status", status),
                    self._index("task", task) if task else self._key(execution_id),
                )
                fields += ("" if raw is None else raw.decode(), status, task)
            batch = self._expire_script(
                keys=keys,
                args=[
                    repr(now),
                    int(self.dedup_seconds * 1000),
                    _SEPARATOR.join(fields),
                    self._records,
                    len(self._texts),
                ],
            )
            dropped += batch
            if len(ids) < CHUNK or not batch:
                break
        self._release(now - self.task_retention)
        return dropped

    def _release(self, cutoff: float) -> None:
        """Release the task names no tracked execution has carried since before ``cutoff``."""
        seen = self._redis.hgetall(self._task_seen)
        names = sorted(
            {name.decode() for name, at in seen.items() if float(at) <= cutoff}
            # names no execution has left yet: declared ones, or ones whose runs are tracked
            | {name.decode() for name in self._redis.smembers(self._task_name_set) - set(seen)}
        )
        if not names:
            return
        uuids = [
            (ping_uuid_of(decode_task(raw)) or "") if raw is not None else ""
            for raw in self._redis.hmget(self._task_records, names)
        ]
        released = self._release_script(
            keys=[
                self._task_name_set,
                self._task_seen,
                self._counters,
                self._exemplars,
                self._task_records,
                self._task_deadlines,
                self._declared,
                self._ping_uuids,
                *(self._index("task", name) for name in names),
            ],
            args=[repr(cutoff), _SEPARATOR.join(names), _SEPARATOR.join(uuids)],
        )
        for name in released:
            log.info("task name %r released: nothing tracked carried it for %.0fs", name.decode(), self.task_retention)

    def _render_again(self) -> None:
        """Give every execution the exposition text of this version's rendering, unless the
        store already holds it (the rendering's signature is kept beside the texts)."""
        signature = self._prefix + "exposition"
        if self._redis.get(signature) == self.render.signature.encode():
            return
        start = "-"
        while ids := self._redis.zrangebylex(self._ids, start, "+", start=0, num=CHUNK):
            keys = [self._kinds, *self._texts]
            fields: list[str] = []
            for execution_id, raw in zip(ids, self._redis.mget([self._key(i.decode()) for i in ids])):
                if raw is not None:
                    record = decode_record(raw)
                    keys.append(self._key(execution_id.decode()))
                    fields += (raw.decode(), _kind(record), *self.render(record))
            self._render_script(keys=keys, args=[len(self._texts), self._records, _joined(fields)])
            start = "(" + ids[-1].decode()
        self._redis.delete(self._prefix + "rows")  # what scrapes read before they only copied text
        self._redis.set(signature, self.render.signature)

    def _upgrade(self) -> None:
        """Bring a store written by an earlier version up to this layout (once)."""
        version = self._prefix + "schema"
        if int(self._redis.get(version) or 0) >= _SCHEMA:
            return
        if self._prefix == KEY_PREFIX and isinstance(self._redis, redis.Redis):
            self._add_hash_tag()
        if int(self._redis.get(version) or 1) < 2:
            self._build_indexes()
        for raw in self._redis.hvals(self._task_records):
            task = decode_task(raw)
            if (ping_uuid := ping_uuid_of(task)) is not None:
                self._redis.hsetnx(self._ping_uuids, ping_uuid, task.task_name)
        self._redis.set(version, _SCHEMA)

    def _add_hash_tag(self) -> None:
        """Rename the keys of a store from before the hash tag (on one Redis: no cluster had them)."""
        keys = list(self._redis.scan_iter(match=_UNTAGGED_PREFIX + "*", count=CHUNK))
        for key in keys:
            try:
                self._redis.rename(key, KEY_PREFIX + key.decode()[len(_UNTAGGED_PREFIX) :])
            except ResponseError:
                pass  # another replica renamed it first
        if keys:
            log.info("renamed %d keys from %s* to %s*", len(keys), _UNTAGGED_PREFIX, KEY_PREFIX)

    def _build_indexes(self) -> None:
        """Index the records of a store written before the filter indexes existed."""
        now = repr(time.time())
        for name in self._redis.smembers(self._task_name_set):  # a full retention from now
            self._redis.hsetnx(self._task_seen, name, now)
        start = "-"
        while ids := self._redis.zrangebylex(self._ids, start, "+", start=0, num=CHUNK):
            with self._redis.pipeline(transaction=False) as pipe:
                for raw in self._redis.mget([self._key(i.decode()) for i in ids]):
                    if raw is not None:
                        record = decode_record(raw)
                        pipe.zadd(self._index("status", record.status), {record.execution_id: 0})
                        if record.task_name is not None:
                            pipe.zadd(self._index("task", record.task_name), {record.execution_id: 0})
                pipe.execute()
            start = "(" + ids[-1].decode()

    @_translated
    def snapshot(self) -> Snapshot:
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._counters)
            pipe.hgetall(self._exemplars)
            pipe.smembers(self._task_name_set)
            pipe.hvals(self._task_records)
            pipe.hgetall(self._notes)
            counters, exemplars, tasks, task_records, notes = pipe.execute()
        # In chunks: never one command that holds Redis for the whole fleet. Each chunk comes
        # back as a few long strings, the texts each execution was written with.
        texts: list[list[bytes]] = [[] for _ in self._texts]
        kinds: dict[bytes, int] = {}
        start = b"-"
        while answer := self._scrape_script(keys=[self._ids, self._kinds, *self._texts], args=[start, CHUNK]):
            last, tallies, *joined = answer
            for kind, count in zip(tallies[::2], tallies[1::2]):
                kinds[kind] = kinds.get(kind, 0) + count
            for parts, text in zip(texts, joined):
                parts.append(text)
            start = b"(" + last

        def series(field: bytes) -> tuple[str, tuple[str, ...]]:
            name, labels = json.loads(field)
            return name, tuple(labels)

        return Snapshot(
            texts,
            {tuple(json.loads(kind)): count for kind, count in kinds.items()},
            {series(f): float(v) for f, v in counters.items()},
            sorted(t.decode() for t in tasks),
            {series(f): tuple(json.loads(v)) for f, v in exemplars.items()},
            sorted((decode_task(raw) for raw in task_records), key=lambda task: task.task_name),
            {key.decode(): _note_value(value) for key, value in notes.items()},
        )

    @_translated
    def count(self, name: str, labels: tuple[str, ...], amount: float = 1.0) -> None:
        self._redis.hincrbyfloat(self._counters, _field(name, labels), amount)

    @_translated
    def ping(self) -> None:
        self._redis.ping()

    def close(self) -> None:
        self._redis.close()
