"""Rate limits: messages per hour and per day, model tokens per day, for guests, keys, end users.

Windows are the UTC hour and the UTC day. A message is checked and counted in one step, for all
the subjects it concerns at once (a guest, the API key, the end user): either every subject has
room and every counter goes up, or nothing is counted and the caller gets 429 with Retry-After.
Model tokens are reserved with the message (its prompt's estimate and the most its answer may
take, at most the room left under the lowest token limit) and settled when the answer ends (the
difference, either way), so messages sent together cannot all pass a daily token limit that
only the first of them had room for: a message is admitted while there is room at all.

Two backends behind one interface: in this process's memory (the default), and Redis, where the
check-and-count is one Lua script, so any number of server processes never admit more than the
limit between them.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, Protocol

import msgspec
from redis.exceptions import RedisError

from actors.batch import BatchQueue, QueueClosedError
from actors.core.errors import RateLimitedError, UnavailableError

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "Admission",
    "Counts",
    "LimitReachedError",
    "Limiter",
    "MemoryLimiter",
    "RedisLimiter",
    "Subject",
    "SubjectKind",
    "windows",
]

log = logging.getLogger("sessiond.limits")

_HOUR = 3600
_DAY = 86400


# Whose limits: a guest's ([limits] guest_*), an API key's ([limits.keys]), an end user's
# ([limits.end_users]), a client address's (share links, [limits] share_views_*).
SubjectKind = Literal["guest", "key", "end_user", "address"]


class Subject(msgspec.Struct, frozen=True):
    """Who is counted (``guest:gst_...``, ``key:key_...``, ``user:u123``) and their limits (0 = none)."""

    name: str
    kind: SubjectKind
    messages_per_hour: int = 0
    messages_per_day: int = 0
    tokens_per_day: int = 0


class Admission(msgspec.Struct, frozen=True):
    """A counted message, with the windows it was counted in (a refund uses the same ones) and
    the model tokens reserved for it."""

    subjects: tuple[Subject, ...]
    hour: int
    day: int
    tokens: int = 0


class Counts(msgspec.Struct, frozen=True):
    messages_this_hour: int = 0
    messages_today: int = 0
    tokens_today: int = 0


def windows(now: float) -> tuple[int, int]:
    return int(now // _HOUR), int(now // _DAY)


class LimitReachedError(RateLimitedError):
    """A 429 that names the limit which refused it (``guest_messages_per_hour``...), for the metrics."""

    def __init__(self, detail: str, *, limit: str, retry_after: int) -> None:
        super().__init__(detail, retry_after=retry_after)
        self.limit = limit


def _refused(subject: Subject, which: int, now: float) -> LimitReachedError:
    hour, day = windows(now)
    if which == 0:
        what, dimension, limit = "messages this hour", "messages_per_hour", subject.messages_per_hour
    elif which == 1:
        what, dimension, limit = "messages today", "messages_per_day", subject.messages_per_day
    else:
        what, dimension, limit = "model tokens today", "tokens_per_day", subject.tokens_per_day
    ends = (hour + 1) * _HOUR if which == 0 else (day + 1) * _DAY
    return LimitReachedError(
        f"{subject.name} reached its limit of {limit} {what} (UTC)",
        limit=f"{subject.kind}_{dimension}",  # as [limits] names it: guest_messages_per_hour...
        retry_after=max(1, math.ceil(ends - now)),
    )


class Limiter(Protocol):
    async def open(self) -> None: ...

    async def aclose(self) -> None: ...

    async def admit(self, subjects: Sequence[Subject], now: float, tokens: int = 0) -> Admission:
        """Count one message and reserve ``tokens`` for every subject, or raise
        LimitReachedError and count nothing."""

    async def refund(self, admission: Admission) -> None:
        """Take back a message that was counted but not accepted, and its reserved tokens."""

    def settle(self, admission: Admission, tokens: int) -> None:
        """The answer ended having used ``tokens``: count the difference from the reservation."""

    def record_tokens(self, subjects: Sequence[Subject], tokens: int, now: float) -> None:
        """Count model tokens (without waiting; never refused: the next message is)."""

    async def counts(self, subject_name: str, now: float) -> Counts: ...


class _Tally:
    __slots__ = ("day", "day_messages", "day_tokens", "hour", "hour_messages")

    def __init__(self, hour: int, day: int) -> None:
        self.hour = hour
        self.hour_messages = 0
        self.day = day
        self.day_messages = 0
        self.day_tokens = 0

    def roll(self, hour: int, day: int) -> _Tally:
        if self.hour != hour:
            self.hour, self.hour_messages = hour, 0
        if self.day != day:
            self.day, self.day_messages, self.day_tokens = day, 0, 0
        return self


class MemoryLimiter:
    """Counters in this process (lost on restart); the check and the count never await between."""

    def __init__(self) -> None:
        self._tallies: dict[str, _Tally] = {}
        self._day = -1

    async def open(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    def _tally(self, name: str, hour: int, day: int) -> _Tally:
        if day != self._day:
            # A new day: yesterday's subjects hold nothing worth keeping.
            self._day = day
            self._tallies = {k: t for k, t in self._tallies.items() if t.day >= day}
        tally = self._tallies.get(name)
        if tally is None:
            tally = self._tallies[name] = _Tally(hour, day)
        return tally.roll(hour, day)

    async def admit(self, subjects: Sequence[Subject], now: float, tokens: int = 0) -> Admission:
        hour, day = windows(now)
        tallies = [self._tally(s.name, hour, day) for s in subjects]
        for s, t in zip(subjects, tallies, strict=True):
            for which, (used, limit) in enumerate(
                ((t.hour_messages, s.messages_per_hour), (t.day_messages, s.messages_per_day),
                 (t.day_tokens, s.tokens_per_day))
            ):
                if limit > 0 and used >= limit:
                    raise _refused(s, which, now)
        for s, t in zip(subjects, tallies, strict=True):
            if s.tokens_per_day > 0:
                tokens = min(tokens, s.tokens_per_day - t.day_tokens)  # never past the room left
        for t in tallies:
            t.hour_messages += 1
            t.day_messages += 1
            t.day_tokens += tokens
        return Admission(tuple(subjects), hour, day, tokens)

    async def refund(self, admission: Admission) -> None:
        for s in admission.subjects:
            t = self._tallies.get(s.name)
            if t is None:
                continue
            if t.hour == admission.hour and t.hour_messages > 0:
                t.hour_messages -= 1
            if t.day == admission.day and t.day_messages > 0:
                t.day_messages -= 1
            if t.day == admission.day:
                t.day_tokens = max(0, t.day_tokens - admission.tokens)

    def settle(self, admission: Admission, tokens: int) -> None:
        for s in admission.subjects:
            t = self._tallies.get(s.name)
            if t is not None and t.day == admission.day:  # the reservation was counted in that day
                t.day_tokens = max(0, t.day_tokens + tokens - admission.tokens)

    def record_tokens(self, subjects: Sequence[Subject], tokens: int, now: float) -> None:
        hour, day = windows(now)
        for s in subjects:
            self._tally(s.name, hour, day).day_tokens += tokens

    async def counts(self, subject_name: str, now: float) -> Counts:
        t = self._tallies.get(subject_name)
        if t is None:
            return Counts()
        hour, day = windows(now)
        return Counts(
            t.hour_messages if t.hour == hour else 0,
            t.day_messages if t.day == day else 0,
            t.day_tokens if t.day == day else 0,
        )


# KEYS: three per subject: messages this hour, messages today, tokens today.
# ARGV[1]: the number of subjects; then three limits per subject (0 = none); then the TTLs of
# the hour and the day keys, then the tokens to reserve. Returns {-1, tokens reserved} when
# counted, else {3 * subject index + which limit, 0}.
_ADMIT = """
local n = tonumber(ARGV[1])
local reserve = tonumber(ARGV[4 + n * 3])
for i = 0, n - 1 do
  for j = 1, 3 do
    local limit = tonumber(ARGV[1 + i * 3 + j])
    local used = tonumber(redis.call('GET', KEYS[i * 3 + j]) or '0')
    if limit > 0 and used >= limit then
      return {i * 3 + j - 1, 0}
    end
    if limit > 0 and j == 3 then reserve = math.min(reserve, limit - used) end
  end
end
local hour_ttl, day_ttl = ARGV[2 + n * 3], ARGV[3 + n * 3]
for i = 0, n - 1 do
  if redis.call('INCR', KEYS[i * 3 + 1]) == 1 then redis.call('EXPIRE', KEYS[i * 3 + 1], hour_ttl) end
  if redis.call('INCR', KEYS[i * 3 + 2]) == 1 then redis.call('EXPIRE', KEYS[i * 3 + 2], day_ttl) end
  if reserve > 0 then
    redis.call('INCRBY', KEYS[i * 3 + 3], reserve)
    redis.call('EXPIRE', KEYS[i * 3 + 3], day_ttl)
  end
end
return {-1, reserve}
"""

# KEYS: counters to take back from (never below zero); ARGV[i]: how much from KEYS[i].
_REFUND = """
for i = 1, #KEYS do
  local used = tonumber(redis.call('GET', KEYS[i]) or '0')
  local back = math.min(used, tonumber(ARGV[i]))
  if back > 0 then redis.call('DECRBY', KEYS[i], back) end
end
return 0
"""

_TOKEN_QUEUE = 10_000


class RedisLimiter:
    """Counters in Redis, shared by every server process that uses the same [redis] url."""

    def __init__(self, redis: Redis, prefix: str = "sessiond:limits:") -> None:
        self._redis = redis
        self._prefix = prefix
        self._admit = redis.register_script(_ADMIT)
        self._refund = redis.register_script(_REFUND)
        self._tokens: BatchQueue[tuple[list[str], int]] = BatchQueue(_TOKEN_QUEUE)
        self._writer: asyncio.Task[None] | None = None

    def _keys(self, name: str, hour: int, day: int) -> list[str]:
        base = f"{self._prefix}{name}:"
        return [f"{base}h:{hour}", f"{base}d:{day}", f"{base}t:{day}"]

    async def open(self) -> None:
        self._writer = asyncio.get_running_loop().create_task(self._write_tokens(), name="limits-tokens")

    async def aclose(self) -> None:
        if self._writer is not None:
            self._tokens.close()  # the writer counts what was queued before this
            await self._writer
            self._writer = None

    async def admit(self, subjects: Sequence[Subject], now: float, tokens: int = 0) -> Admission:
        hour, day = windows(now)
        keys: list[str] = []
        args: list[int] = [len(subjects)]
        for s in subjects:
            keys += self._keys(s.name, hour, day)
            args += [s.messages_per_hour, s.messages_per_day, s.tokens_per_day]
        args += [_HOUR + 60, _DAY + 60, tokens]
        try:
            refused, reserved = (int(v) for v in await self._admit(keys=keys, args=args))
        except RedisError as exc:  # Redis down: refuse rather than let everyone through
            log.warning("rate limit check failed: %s", exc)
            raise UnavailableError("rate limits cannot be checked right now") from None
        if refused >= 0:
            raise _refused(subjects[refused // 3], refused % 3, now)
        return Admission(tuple(subjects), hour, day, reserved)

    async def refund(self, admission: Admission) -> None:
        keys: list[str] = []
        amounts: list[int] = []
        for s in admission.subjects:
            keys += self._keys(s.name, admission.hour, admission.day)
            amounts += [1, 1, admission.tokens]
        try:
            await self._refund(keys=keys, args=amounts)
        except RedisError as exc:
            log.warning("rate limit refund failed: %s", exc)

    def settle(self, admission: Admission, tokens: int) -> None:
        delta = tokens - admission.tokens
        if delta == 0:
            return
        keys = [self._keys(s.name, admission.hour, admission.day)[2] for s in admission.subjects]
        try:
            self._tokens.put_nowait((keys, delta))  # INCRBY with a negative delta gives back
        except (asyncio.QueueFull, QueueClosedError):
            log.warning("token usage dropped: %d tokens for %s", delta, [s.name for s in admission.subjects])

    def record_tokens(self, subjects: Sequence[Subject], tokens: int, now: float) -> None:
        hour, day = windows(now)
        keys = [self._keys(s.name, hour, day)[2] for s in subjects]
        try:
            self._tokens.put_nowait((keys, tokens))
        except (asyncio.QueueFull, QueueClosedError):
            log.warning("token usage dropped: %d tokens for %s", tokens, [s.name for s in subjects])

    async def _write_tokens(self) -> None:
        async for batch in self._tokens.batches(500):
            try:
                pipe = self._redis.pipeline(transaction=False)
                for keys, tokens in batch:
                    for key in keys:
                        pipe.incrby(key, tokens)
                        pipe.expire(key, _DAY + 60)
                await pipe.execute()
            except RedisError as exc:
                log.warning("counting %d token records failed: %s", len(batch), exc)

    async def counts(self, subject_name: str, now: float) -> Counts:
        hour, day = windows(now)
        try:
            values = await self._redis.mget(self._keys(subject_name, hour, day))
        except RedisError as exc:
            log.warning("reading usage failed: %s", exc)
            raise UnavailableError("usage cannot be read right now") from None
        h, d, t = (int(v) if v is not None else 0 for v in values)
        return Counts(h, d, t)
