"""The scale-out store: Redis, shared by many replicas.

Each batch of events (one, or those group-committed together) is an optimistic
transaction: ``WATCH`` the executions' keys, read them in one ``MGET``, let the rules
decide, then write the records, their indexes and the summed counter increments in one
``MULTI``/``EXEC``; a concurrent change makes ``EXEC`` fail and the batch is decided
again on the new records. So each transition and each increment happens exactly once
across replicas. ``BRIDGE_MAX_EXECUTIONS`` is checked without watching the whole fleet,
so it may be passed by as many new executions as arrive at the same instant. Expiry is one Lua script; the scrape reads ids from a sorted set and
the records with pipelined ``MGET`` in chunks, never blocking Redis for long.
"""

from __future__ import annotations

import functools
import json
import logging
from typing import Sequence

import redis
from redis.exceptions import RedisError, WatchError

from ..state import UNKNOWN_TASK, Execution, Outcome
from .base import (OTHER_TASK, CapacityError, Decide, Snapshot, Store, StoreUnavailable, decode_record,
                   decode_rows, encode_record, encode_row)

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


_MARK_REAPED = """
local previous = tonumber(redis.call('HGET', KEYS[1], 'reaped_at'))
local hold_until = tonumber(redis.call('HGET', KEYS[1], 'hold_until') or '0')
local now = tonumber(ARGV[1])
if previous and now - previous > tonumber(ARGV[2]) then
  hold_until = math.max(hold_until, now + tonumber(ARGV[3]))
end
redis.call('HSET', KEYS[1], 'reaped_at', tostring(math.max(now, previous or now)),
           'hold_until', tostring(hold_until))
return tostring(hold_until)
"""


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
        self._prefix = prefix
        self._ids = prefix + "ids"
        self._deadlines = prefix + "deadline"
        self._expiry = prefix + "expiry"
        self._counters = prefix + "counters"
        self._exemplars = prefix + "exemplars"
        self._tasks = prefix + "tasks"
        self._rows = prefix + "rows"
        self._expire_script = self._redis.register_script(_EXPIRE)
        self._mark_reaped_script = self._redis.register_script(_MARK_REAPED)
        self._reaper = prefix + "reaper"
        self.ping()

    def _key(self, execution_id: str) -> str:
        return f"{self._prefix}x:{execution_id}"

    # -- the Store interface -------------------------------------------------------

    def apply_many(self, items: Sequence[tuple[str, Decide]]) -> list[Outcome | CapacityError]:
        # One optimistic transaction for the batch: watch every key, read them in one MGET,
        # decide in order, write everything in one MULTI/EXEC; a concurrent change to any of
        # them makes EXEC fail and the whole batch is decided again.
        keys = list(dict.fromkeys(self._key(execution_id) for execution_id, _ in items))
        try:
            with self._redis.pipeline() as pipe:
                for _attempt in range(MAX_ATTEMPTS):
                    try:
                        return self._try_batch(pipe, keys, items)
                    except WatchError:
                        continue  # another replica changed one first: decide again
        except RedisError as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc
        raise StoreUnavailable(f"redis: a batch of {len(items)} kept changing under {MAX_ATTEMPTS} attempts")

    def _try_batch(self, pipe, keys: list[str], items: Sequence[tuple[str, Decide]]) -> list[Outcome | CapacityError]:
        pipe.watch(*keys)
        prefix = len(self._key(""))
        records = {key[prefix:]: decode_record(raw) for key, raw in zip(keys, pipe.mget(keys)) if raw is not None}
        new_names: list[str] = []
        label = lambda name: self._task_label(pipe, name, new_names)
        changed: dict[str, Execution] = {}
        increments: dict[tuple[str, tuple[str, ...]], list] = {}
        results: list[Outcome | CapacityError] = []
        tracked: int | None = None
        for execution_id, decide in items:
            current = records.get(execution_id)
            names_before = len(new_names)
            outcome = decide(current, label)
            record = outcome.record
            if record is None:
                results.append(outcome)
                continue
            if current is None:
                # Not watched: every insert would conflict with every other.
                # The limit may be passed by the inserts in flight at once.
                tracked = pipe.zcard(self._ids) if tracked is None else tracked
                if tracked >= self.max_executions:
                    del new_names[names_before:]  # a refused execution leaves nothing behind
                    results.append(CapacityError(f"tracking {tracked} executions, the limit"))
                    continue
                tracked += 1
            record.version = 1 if current is None else current.version + 1
            records[execution_id] = changed[execution_id] = record
            for inc in outcome.increments:
                total = increments.setdefault((inc.name, inc.labels), [0.0, None])
                total[0] += inc.amount
                total[1] = inc.exemplar or total[1]
            results.append(outcome)
        if not changed:
            pipe.unwatch()
            return results
        pipe.multi()
        for record in changed.values():
            self._write(pipe, record)
        if new_names:
            pipe.sadd(self._tasks, *new_names)
        for (name, labels), (amount, exemplar) in increments.items():
            field = _field(name, labels)
            pipe.hincrbyfloat(self._counters, field, amount)
            if exemplar:
                pipe.hset(self._exemplars, field, json.dumps(exemplar))
        pipe.execute()
        return results

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

    def mark_reaped(self, now: float, outage_after: float, hold: float) -> float:
        try:
            return float(self._mark_reaped_script(keys=[self._reaper], args=[repr(now), outage_after, hold]))
        except RedisError as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc

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
                                            args=[now, self._prefix + "x:", CHUNK])
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
