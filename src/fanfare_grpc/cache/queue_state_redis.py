"""Redis live queue state: shared by every replica of a deployment.

Each call is one round trip: one Lua script (atomic), or one multi-key ``DEL`` for
``drop``. A queue's keys are ``<prefix>:q:{<org>:<mode>:<queue id>}:<part>``, one
Redis Cluster slot per queue, and every script receives all of them in ``KEYS``:

- ``waiting``: ZSET consumer → score, QUEUED consumers only (rank = ``ZRANK``);
- ``entries``: HASH consumer → entry as JSON (see ``_encode_new``);
- ``devices``: HASH device hash → consumer holding it with a QUEUED/ADMITTED entry;
- ``admitted``: ZSET consumer → ``handoff_expires_at``, ADMITTED consumers only,
  ``+inf`` once redeemed (never expires, still counted as admitted);
- ``seq``: the queue's counter (``1 + n`` scores of arrivals after opening);
- ``counts``: HASH, how many entries ended ``completed``, ``denied``, ``left``, ``expired``,
  and how many consumers were skipped because their entry was ``missing``;
- ``admissions``: ZSET token id → admission time, trimmed to the last hour on admit;
- ``meta``: HASH, the state's marker: ``epoch``, ``started_at`` and ``lost_at`` (set
  when the state before it was found lost), see ``queue_state``'s module doc.

Redis Lua gotchas this layout avoids: a Lua number returned to the client is truncated
to an integer, and ``cjson.encode`` writes numbers with only 14 significant digits
(a Unix time with microseconds has 16). So every time is a string end to end: in the
JSON, in ``ARGV`` and in replies, written in Python with ``repr`` (shortest exact form)
and read with ``float``; Lua only compares them after ``tonumber`` (exact, IEEE double).
Absent fields are left out of the JSON: ``cjson.decode`` turns ``null`` into a sentinel
that is not ``nil``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any, cast

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from fanfare_grpc.domain.queue_state import (
    MAX_ADMISSIONS_PER_CALL,
    AdmissionBatch,
    EnterOutcome,
    EnterResult,
    EntryRecord,
    EntryStatus,
    EntryView,
    MarkerCheck,
    QueueCounters,
    QueueRef,
    RedeemOutcome,
    RedeemResult,
    StateMarker,
    Transition,
    Views,
)

# Same history as the in-process store: ``counters`` windows of at most an hour.
ADMISSION_HISTORY_SECONDS = 3600.0

_PARTS = ("waiting", "entries", "devices", "admitted", "seq", "counts", "admissions", "meta")
_ACTIVE = (EntryStatus.QUEUED, EntryStatus.ADMITTED)

# Shared by every script: key names (KEYS in ``_PARTS`` order) and helpers.
_PRELUDE = """
local waiting_key, entries_key, devices_key = KEYS[1], KEYS[2], KEYS[3]
local admitted_key, seq_key, counts_key, admissions_key = KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local meta_key = KEYS[8]

-- The marker as {epoch, started_at, lost_at, 1 if this call declared the state lost}
-- (false for what is absent). With check_now ~= '' a missing marker is written first:
-- lost if no other key of the queue exists, adopted otherwise.
local function marker(check_now, check_epoch)
  local found = redis.call('HMGET', meta_key, 'epoch', 'started_at', 'lost_at')
  if found[1] or check_now == nil or check_now == '' then
    return {found[1], found[2], found[3], 0}
  end
  local held = redis.call('EXISTS', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7])
  if held == 0 then
    redis.call('HSET', meta_key, 'epoch', check_epoch, 'started_at', check_now, 'lost_at', check_now)
    return {check_epoch, check_now, check_now, 1}
  end
  redis.call('HSET', meta_key, 'epoch', check_epoch, 'started_at', check_now)
  return {check_epoch, check_now, false, 0}
end

local function save(consumer, entry)
  local raw = cjson.encode(entry)
  redis.call('HSET', entries_key, consumer, raw)
  return raw
end

-- QUEUED or ADMITTED -> a terminal status: out of both sets, device released.
local function finish(consumer, entry, status, now)
  redis.call('ZREM', waiting_key, consumer)
  redis.call('ZREM', admitted_key, consumer)
  if redis.call('HGET', devices_key, entry.device_hash) == consumer then
    redis.call('HDEL', devices_key, entry.device_hash)
  end
  redis.call('HINCRBY', counts_key, status, 1)
  entry.status = status
  entry.ended_at = now
  return save(consumer, entry)
end
"""

# ARGV: consumer, entry JSON, device hash, score ('' = next number), max size ('' = none),
# check time and epoch ('' = no check). -> {marker (4 items), outcome, entry JSON, rank}
_ENTER = """
local consumer, raw, device, score, max_size = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local out = marker(ARGV[6], ARGV[7])
local function answer(outcome, entry, rank)
  out[5], out[6], out[7] = outcome, entry or false, rank or false
  return out
end
local existing = redis.call('HGET', entries_key, consumer)
if existing then
  if cjson.decode(existing).status ~= 'left' then
    return answer('already_entered', existing, redis.call('ZRANK', waiting_key, consumer))
  end
  -- back of the line: leaving and entering again must not redraw a pre-queue position
  score = ''
end
local holder = redis.call('HGET', devices_key, device)
if holder and holder ~= consumer then
  local other = redis.call('HGET', entries_key, holder)
  if other then
    local status = cjson.decode(other).status
    if status == 'queued' or status == 'admitted' then
      return answer('device_taken')
    end
  end
end
if max_size ~= '' and redis.call('ZCARD', waiting_key) >= tonumber(max_size) then
  return answer('full')
end
if score == '' then
  score = 1 + redis.call('INCR', seq_key)
end
redis.call('ZADD', waiting_key, score, consumer)
redis.call('HSET', entries_key, consumer, raw)
redis.call('HSET', devices_key, device, consumer)
return answer('entered', raw, redis.call('ZRANK', waiting_key, consumer))
"""

# ARGV: check time and epoch ('' = no check), consumer ids.
# -> {marker (4 items), then entry JSON or nil, rank or nil per consumer}
_VIEWS = """
local out = marker(ARGV[1], ARGV[2])
for i = 3, #ARGV do
  out[#out + 1] = redis.call('HGET', entries_key, ARGV[i])
  out[#out + 1] = redis.call('ZRANK', waiting_key, ARGV[i])
end
return out
"""

# ARGV: epoch, started_at. -> marker (4 items)
_START = """
if redis.call('HSETNX', meta_key, 'epoch', ARGV[1]) == 1 then
  redis.call('HSET', meta_key, 'started_at', ARGV[2])
end
return marker()
"""

# ARGV: consumer, new status, now, '1' if a redeemed entry may not move, statuses it
# may come from... -> nil, or {1 if this call changed it else 0, entry JSON}
_TRANSITION = """
local consumer, target, now, unredeemed_only = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local raw = redis.call('HGET', entries_key, consumer)
if not raw then
  return false
end
local entry = cjson.decode(raw)
if unredeemed_only == '1' and entry.redeemed_at then
  return {0, raw}
end
for i = 5, #ARGV do
  if entry.status == ARGV[i] then
    return {1, finish(consumer, entry, target, now)}
  end
end
return {0, raw}
"""

# ARGV: now, handoff_expires_at, history start, most consumers to pop, token ids (one
# per admission, at most this many are admitted).
# -> {skipped, waiting after, consumer, entry JSON, ...}
# Redis serves nobody else while it runs, so callers send at most
# MAX_ADMISSIONS_PER_CALL token ids (a few milliseconds; also far below the ~8000
# values Lua's ``unpack`` takes), and the writes are one command per key. A popped
# consumer whose entry is gone is skipped (no token used) and counted in 'missing';
# skipped ones count against the pop limit too, so a line whose entries were all
# evicted costs one script at most that many pops, not the whole line.
_ADMIT = """
local now, expires_at, max_pops = ARGV[1], ARGV[2], tonumber(ARGV[4])
local wanted = #ARGV - 4
local out = {0, 0}
local fields, deadlines, history = {}, {}, {}
local admitted, popped_total = 0, 0
while admitted < wanted and popped_total < max_pops do
  local popped = redis.call(
    'ZPOPMIN', waiting_key, math.min(wanted - admitted, max_pops - popped_total))
  if #popped == 0 then
    break
  end
  local consumers = {}
  for i = 1, #popped, 2 do
    consumers[#consumers + 1] = popped[i]
  end
  popped_total = popped_total + #consumers
  local raws = redis.call('HMGET', entries_key, unpack(consumers))
  for i, consumer in ipairs(consumers) do
    local raw = raws[i]
    if raw then
      admitted = admitted + 1
      local token_id = ARGV[4 + admitted]
      local entry = cjson.decode(raw)
      entry.status = 'admitted'
      entry.admitted_at = now
      entry.handoff_token_id = token_id
      entry.handoff_expires_at = expires_at
      local encoded = cjson.encode(entry)
      fields[#fields + 1] = consumer
      fields[#fields + 1] = encoded
      deadlines[#deadlines + 1] = expires_at
      deadlines[#deadlines + 1] = consumer
      history[#history + 1] = now
      history[#history + 1] = token_id
      out[#out + 1] = consumer
      out[#out + 1] = encoded
    else
      out[1] = out[1] + 1
    end
  end
end
if admitted > 0 then
  redis.call('HSET', entries_key, unpack(fields))
  redis.call('ZADD', admitted_key, unpack(deadlines))
  redis.call('ZADD', admissions_key, unpack(history))
  redis.call('ZREMRANGEBYSCORE', admissions_key, '-inf', ARGV[3])
end
if out[1] > 0 then
  redis.call('HINCRBY', counts_key, 'missing', out[1])
end
out[2] = redis.call('ZCARD', waiting_key)
return out
"""

# ARGV: now, limit. -> {consumer, entry JSON, ...}
_EXPIRE = """
local now = ARGV[1]
local due = redis.call('ZRANGEBYSCORE', admitted_key, '-inf', now, 'LIMIT', 0, ARGV[2])
local out = {}
local missing = 0
for _, consumer in ipairs(due) do
  local raw = redis.call('HGET', entries_key, consumer)
  if raw then
    out[#out + 1] = consumer
    out[#out + 1] = finish(consumer, cjson.decode(raw), 'expired', now)
  else
    -- its entry is gone: drop it (it would stay due forever) and count it
    redis.call('ZREM', admitted_key, consumer)
    missing = missing + 1
  end
end
if missing > 0 then
  redis.call('HINCRBY', counts_key, 'missing', missing)
end
return out
"""

# ARGV: consumer, token id, now, redemption key ('' for none).
# -> {outcome, entry JSON or nil, 1 if replayed}
_REDEEM = """
local consumer, token_id, now, redemption_key = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local raw = redis.call('HGET', entries_key, consumer)
if not raw then
  return {'invalid', false}
end
local entry = cjson.decode(raw)
local status = entry.status
if entry.handoff_token_id ~= token_id or status == 'denied' or status == 'left' then
  return {'invalid', raw}
end
if entry.redeemed_at then
  if redemption_key ~= '' and entry.redeemed_with == redemption_key then
    return {'ok', raw, 1}
  end
  return {'already_used', raw}
end
if status == 'expired' then
  return {'expired', raw}
end
if status ~= 'admitted' then
  return {'invalid', raw}
end
if tonumber(entry.handoff_expires_at) <= tonumber(now) then
  return {'expired', raw}
end
entry.redeemed_at = now
if redemption_key ~= '' then
  entry.redeemed_with = redemption_key
end
redis.call('ZADD', admitted_key, '+inf', consumer)
return {'ok', save(consumer, entry)}
"""

# ARGV: '(' .. window start, check time and epoch ('' = no check).
# -> {waiting, admitted, completed, recent, head entered_at, denied, left, expired,
# missing, marker (4 items)}
_COUNTERS = """
local checked = marker(ARGV[2], ARGV[3])
local head = redis.call('ZRANGE', waiting_key, 0, 0)
local head_entered_at = false
local head_raw = head[1] and redis.call('HGET', entries_key, head[1])
if head_raw then
  head_entered_at = cjson.decode(head_raw).entered_at
end
return {
  redis.call('ZCARD', waiting_key),
  redis.call('ZCARD', admitted_key),
  tonumber(redis.call('HGET', counts_key, 'completed') or '0'),
  redis.call('ZCOUNT', admissions_key, ARGV[1], '+inf'),
  head_entered_at,
  tonumber(redis.call('HGET', counts_key, 'denied') or '0'),
  tonumber(redis.call('HGET', counts_key, 'left') or '0'),
  tonumber(redis.call('HGET', counts_key, 'expired') or '0'),
  tonumber(redis.call('HGET', counts_key, 'missing') or '0'),
  checked[1], checked[2], checked[3], checked[4],
}
"""


def _number(value: float) -> str:
    """A float as Redis and Lua parse it back exactly (``repr`` round-trips)."""
    return repr(float(value))


def _text(value: object) -> str:
    """A reply item as text, whether or not the client decodes responses."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _optional_float(value: object) -> float | None:
    return None if value is None else float(_text(value))


def _encode_new(entry: EntryRecord) -> str:
    """A new entry's JSON: status QUEUED, no admission fields, times as strings."""
    document = {
        "session_id": entry.session_id,
        "device_hash": entry.device_hash,
        "status": EntryStatus.QUEUED.value,
        "entered_at": _number(entry.entered_at),
        "pre_queue": bool(entry.pre_queue),
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False)


def _decode(consumer_id: object, raw: object) -> EntryRecord:
    document: dict[str, Any] = json.loads(_text(raw))
    token_id = document.get("handoff_token_id")
    return EntryRecord(
        consumer_id=_text(consumer_id),
        session_id=document["session_id"],
        device_hash=document["device_hash"],
        status=EntryStatus(document["status"]),
        entered_at=float(document["entered_at"]),
        pre_queue=bool(document.get("pre_queue", False)),
        admitted_at=_optional_float(document.get("admitted_at")),
        handoff_token_id=None if token_id is None else str(token_id),
        handoff_expires_at=_optional_float(document.get("handoff_expires_at")),
        redeemed_at=_optional_float(document.get("redeemed_at")),
        ended_at=_optional_float(document.get("ended_at")),
    )


def _check_args(check: MarkerCheck | None) -> list[str]:
    """The check time and epoch of a script's ``ARGV`` ('' for no check)."""
    return ["", ""] if check is None else [_number(check.now), check.epoch]


def _marker(items: Sequence[object]) -> tuple[StateMarker | None, bool]:
    """``{epoch, started_at, lost_at, declared}`` from a script → marker, declared."""
    epoch, started_at, lost_at, declared = items
    if epoch is None:
        return None, False
    marker = StateMarker(
        _text(epoch),
        0.0 if started_at is None else float(_text(started_at)),
        _optional_float(lost_at),
    )
    return marker, int(cast(int, declared)) == 1


def _decode_pairs(reply: Any, start: int = 0) -> list[EntryRecord]:
    """``{consumer, entry JSON, consumer, entry JSON, ...}`` (from ``start``) → records."""
    items = cast(list[object], reply)
    return [_decode(items[i], items[i + 1]) for i in range(start, len(items), 2)]


class RedisQueueStateStore:
    """``QueueStateStore`` on standalone Redis (its keys are laid out for Cluster slots;
    a Cluster client comes with the scale-out work): one round trip per call."""

    def __init__(self, client: Redis, prefix: str) -> None:
        self._client = client
        self._prefix = prefix

        def script(body: str) -> AsyncScript:
            return client.register_script(_PRELUDE + body)

        self._enter = script(_ENTER)
        self._views = script(_VIEWS)
        self._start = script(_START)
        self._transition = script(_TRANSITION)
        self._admit = script(_ADMIT)
        self._expire = script(_EXPIRE)
        self._redeem = script(_REDEEM)
        self._counters = script(_COUNTERS)

    def keys(self, queue: QueueRef) -> list[str]:
        """Every key of the queue (all in the slot of its hash tag), in ``KEYS`` order."""
        base = f"{self._prefix}:q:{queue.hash_tag}:"
        return [base + part for part in _PARTS]

    async def enter(
        self,
        queue: QueueRef,
        entry: EntryRecord,
        *,
        score: float,
        max_size: int | None,
        check: MarkerCheck | None = None,
    ) -> EnterResult:
        if not math.isfinite(score):
            raise ValueError(f"queue scores must be finite, not {score!r}")
        reply = await self._enter(
            keys=self.keys(queue),
            args=[
                entry.consumer_id,
                _encode_new(entry),
                entry.device_hash,
                "" if score < 0 else _number(score),
                "" if max_size is None else str(max_size),
                *_check_args(check),
            ],
        )
        marker, lost = _marker(reply[:4])
        outcome, raw, rank = EnterOutcome(_text(reply[4])), reply[5], reply[6]
        view = None
        if raw is not None:
            view = EntryView(_decode(entry.consumer_id, raw), None if rank is None else int(rank))
        return EnterResult(outcome, view, marker=marker, declared_lost=lost)

    async def view(self, queue: QueueRef, consumer_id: str) -> EntryView | None:
        return (await self.views(queue, [consumer_id]))[0]

    async def views(
        self,
        queue: QueueRef,
        consumer_ids: Sequence[str],
        *,
        check: MarkerCheck | None = None,
    ) -> Views:
        reply = cast(
            list[Any],
            await self._views(keys=self.keys(queue), args=[*_check_args(check), *consumer_ids]),
        )
        marker, lost = _marker(reply[:4])
        views = Views(marker=marker, declared_lost=lost)
        for index, consumer_id in enumerate(consumer_ids):
            raw, rank = reply[4 + 2 * index], reply[5 + 2 * index]
            if raw is None:
                views.append(None)
            else:
                record = _decode(consumer_id, raw)
                views.append(EntryView(record, None if rank is None else int(rank)))
        return views

    async def start(self, queue: QueueRef, marker: StateMarker) -> StateMarker:
        reply = await self._start(
            keys=self.keys(queue), args=[marker.epoch, _number(marker.started_at)]
        )
        started, _ = _marker(reply)
        assert started is not None
        return started

    async def check_marker(self, queue: QueueRef, check: MarkerCheck) -> tuple[StateMarker, bool]:
        views = await self.views(queue, [], check=check)
        assert views.marker is not None
        return views.marker, views.declared_lost

    async def leave(self, queue: QueueRef, consumer_id: str, now: float) -> Transition | None:
        return await self._move(
            queue, consumer_id, EntryStatus.LEFT, now, _ACTIVE, unredeemed_only=True
        )

    async def deny(self, queue: QueueRef, consumer_id: str, now: float) -> Transition | None:
        return await self._move(queue, consumer_id, EntryStatus.DENIED, now, _ACTIVE)

    async def complete(self, queue: QueueRef, consumer_id: str, now: float) -> Transition | None:
        return await self._move(
            queue, consumer_id, EntryStatus.COMPLETED, now, (EntryStatus.ADMITTED,)
        )

    async def _move(
        self,
        queue: QueueRef,
        consumer_id: str,
        status: EntryStatus,
        now: float,
        allowed_from: tuple[EntryStatus, ...],
        *,
        unredeemed_only: bool = False,
    ) -> Transition | None:
        reply = await self._transition(
            keys=self.keys(queue),
            args=[
                consumer_id,
                status.value,
                _number(now),
                "1" if unredeemed_only else "",
                *(s.value for s in allowed_from),
            ],
        )
        if reply is None:
            return None
        changed, raw = reply
        return Transition(_decode(consumer_id, raw), changed=int(changed) == 1)

    async def admit(
        self,
        queue: QueueRef,
        token_ids: Sequence[str],
        now: float,
        handoff_ttl_seconds: float,
    ) -> AdmissionBatch:
        if len(token_ids) > MAX_ADMISSIONS_PER_CALL:
            raise ValueError(
                f"at most {MAX_ADMISSIONS_PER_CALL} admissions per call, not {len(token_ids)}"
            )
        reply = await self._admit(
            keys=self.keys(queue),
            args=[
                _number(now),
                _number(now + handoff_ttl_seconds),
                _number(now - ADMISSION_HISTORY_SECONDS),
                MAX_ADMISSIONS_PER_CALL,
                *token_ids,
            ],
        )
        return AdmissionBatch(
            _decode_pairs(reply, start=2), skipped=int(reply[0]), waiting=int(reply[1])
        )

    async def expire_admissions(self, queue: QueueRef, now: float, limit: int) -> list[EntryRecord]:
        if limit <= 0:
            return []
        reply = await self._expire(keys=self.keys(queue), args=[_number(now), limit])
        return _decode_pairs(reply)

    async def redeem(
        self,
        queue: QueueRef,
        consumer_id: str,
        token_id: str,
        now: float,
        redemption_key: str | None = None,
    ) -> RedeemResult:
        reply = await self._redeem(
            keys=self.keys(queue),
            args=[consumer_id, token_id, _number(now), redemption_key or ""],
        )
        outcome, raw = reply[0], reply[1] if len(reply) > 1 else None
        entry = None if raw is None else _decode(consumer_id, raw)
        return RedeemResult(RedeemOutcome(_text(outcome)), entry, replayed=len(reply) > 2)

    async def counters(
        self,
        queue: QueueRef,
        now: float,
        window_seconds: float,
        *,
        check: MarkerCheck | None = None,
    ) -> QueueCounters:
        (
            waiting,
            admitted,
            completed,
            recent,
            head_entered_at,
            denied,
            left,
            expired,
            missing,
            *checked,
        ) = await self._counters(
            keys=self.keys(queue),
            args=["(" + _number(now - window_seconds), *_check_args(check)],
        )
        marker, lost = _marker(checked)
        return QueueCounters(
            waiting=int(waiting),
            admitted=int(admitted),
            completed=int(completed),
            admitted_recently=int(recent),
            head_entered_at=_optional_float(head_entered_at),
            denied=int(denied),
            left=int(left),
            expired=int(expired),
            missing=int(missing),
            marker=marker,
            declared_lost=lost,
        )

    async def drop(self, queue: QueueRef) -> None:
        await self._client.delete(*self.keys(queue))
