"""Session leases in Redis: a node hosts a session's actor only while it holds ``lease:{id}``.

SET NX PX takes a lease; a Lua script renews or releases it only if it is still ours, so a
node that lost a lease (it expired, another node took it) can never extend or drop the new
owner's.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import RedisError

__all__ = ["Leases", "NamedLock"]

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class Leases:
    """This node's leases (``node_id`` is the value it writes into each)."""

    def __init__(self, redis: aioredis.Redis, prefix: str, node_id: str, lease_ms: int) -> None:
        self._redis = redis
        self._p = prefix
        self.node_id = node_id
        self.lease_ms = lease_ms
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    def key(self, session_id: str) -> str:
        return f"{self._p}:lease:{session_id}"

    async def acquire(self, session_id: str) -> bool:
        return bool(await self._redis.set(self.key(session_id), self.node_id, nx=True, px=self.lease_ms))

    async def owner(self, session_id: str) -> str | None:
        value = await self._redis.get(self.key(session_id))
        return value.decode() if isinstance(value, bytes) else value

    async def holds(self, session_id: str) -> bool | None:
        """Whether this node holds ``session_id``'s lease now (None: Redis cannot say)."""
        try:
            return await self.owner(session_id) == self.node_id
        except RedisError:
            return None

    async def release(self, session_id: str) -> None:
        await self._release(keys=[self.key(session_id)], args=[self.node_id])

    async def renew(self, session_ids: list[str]) -> list[str]:
        """Extend our leases; returns the sessions whose lease we no longer hold."""
        if not session_ids:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for sid in session_ids:
            await self._renew(keys=[self.key(sid)], args=[self.node_id, self.lease_ms], client=pipe)
        results = await pipe.execute()
        return [sid for sid, ok in zip(session_ids, results, strict=True) if not ok]


_HOLD = """
local holder = redis.call('get', KEYS[1])
if holder == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
if holder then return 0 end
redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


class NamedLock:
    """A cluster-wide role one node holds at a time (``{prefix}:lock:{name}``): ``hold()`` takes
    it, or extends it if this node has it already; it lapses ``ttl_ms`` after the last hold, so
    a dead holder's role passes to another node."""

    def __init__(self, redis: aioredis.Redis, prefix: str, name: str, node_id: str, ttl_ms: int) -> None:
        self.key = f"{prefix}:lock:{name}"
        self.node_id = node_id
        self.ttl_ms = ttl_ms
        self._hold = redis.register_script(_HOLD)
        self._release = redis.register_script(_RELEASE)

    async def hold(self) -> bool:
        return bool(await self._hold(keys=[self.key], args=[self.node_id, self.ttl_ms]))

    async def release(self) -> None:
        await self._release(keys=[self.key], args=[self.node_id])
