"""Cluster mode: several sessiond nodes behave as one, through Redis.

This module only glues the three parts together around one Redis client:

- **Single activation** (leases.py). A node hosts a session's actor only while it holds the
  Redis lease ``lease:{id}``, renewed while the actor lives and released when it stops. A dead
  node's leases expire, and the next command activates the session on a live node from the
  shared store.
- **Forwarding** (forward.py). A command for a session owned elsewhere runs on the owner's
  actor; the caller cannot tell it from a local ask, replies and errors keep their types.
- **Fan-out** (streams.py). Every event a node's actors emit is also XADDed, in order, to the
  capped stream ``events:{id}``, so a client on any node reads it and resumes by
  ``Last-Event-ID``, whichever node owns the session now or later.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from actors.cluster.forward import Forwarder, Handler, RemoteSession
from actors.cluster.leases import Leases, NamedLock
from actors.cluster.streams import EventStreams
from actors.core.bounds import AtLeastOne, Positive
from actors.core.events import FrameEncoder
from actors.core.records import SessionRecord
from actors.tasks import Spawner

__all__ = ["Cluster", "ClusterSettings", "retry_once"]


def retry_once() -> dict[str, Any]:
    """redis-py options: a command that meets a broken connection (one left over from before a
    Redis restart) reconnects and is tried once more, instead of failing for every stale
    connection in the pool in turn."""
    return {"retry": Retry(NoBackoff(), 1), "retry_on_error": [RedisConnectionError, RedisTimeoutError]}


class ClusterSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``[cluster]`` section of config.toml. Its numbers are bounded: Redis takes an expiry
    of 0 as an error (SET PX) or "delete now" (EXPIRE) and a BRPOP timeout of 0 as "wait for
    ever", and a stream kept at 0 events, or an outbox of 0, loses every event."""

    node_id: str = ""
    lease_ms: AtLeastOne = 5000
    forward_timeout_seconds: Positive = 5.0
    stream_maxlen: AtLeastOne = 10000
    stream_ttl_seconds: AtLeastOne = 86400
    outbox_events: AtLeastOne = 100_000
    prefix: str = "sessiond"


class Cluster:
    """This node's membership: leases, forwarding and the Redis event streams."""

    def __init__(self, url: str, settings: ClusterSettings, *, frame: FrameEncoder) -> None:
        self.settings = settings
        self.node_id = settings.node_id or f"node-{secrets.token_hex(4)}"
        # No client-side read timeout: XREAD BLOCK and BRPOP wait up to their own server-side
        # timeouts (redis-py's default of 5 s would cut every longer wait short).
        self.redis: aioredis.Redis = aioredis.from_url(
            url,
            max_connections=2000,
            socket_timeout=None,
            socket_keepalive=True,
            health_check_interval=30,
            **retry_once(),
        )
        p = settings.prefix
        self.leases = Leases(self.redis, p, self.node_id, settings.lease_ms)
        self.streams = EventStreams(
            self.redis,
            p,
            maxlen=settings.stream_maxlen,
            ttl_seconds=settings.stream_ttl_seconds,
            frame=frame,
            outbox_events=settings.outbox_events,
        )
        self._tasks = Spawner()
        self.forwarder = Forwarder(
            self.redis,
            p,
            self.node_id,
            timeout=settings.forward_timeout_seconds,
            streams=self.streams,
            spawner=self._tasks,
            lease_seconds=settings.lease_ms / 1000,
        )
        self._publisher: asyncio.Task[None] | None = None
        self._inbox: asyncio.Task[None] | None = None

    async def start(self, handler: Handler) -> None:
        """Join: ``handler(session_id, command)`` runs the commands forwarded to this node."""
        await self.redis.ping()
        self._publisher = self._tasks.spawn(self.streams.run(), name="cluster-publisher")
        self._inbox = self._tasks.spawn(self.forwarder.serve(handler), name="cluster-inbox")

    def lock(self, name: str, ttl_ms: int) -> NamedLock:
        """A role one node of the cluster holds at a time (the retention sweeper's)."""
        return NamedLock(self.redis, self.settings.prefix, name, self.node_id, ttl_ms)

    def remote(self, record: SessionRecord, owner: str) -> RemoteSession:
        """The session ``record`` as hosted by node ``owner``."""
        return RemoteSession(self.forwarder, record, owner)

    async def aclose(self) -> None:
        """Stop serving, publish what is queued, end every task, close the client."""
        if self._inbox is not None:
            self._inbox.cancel()
            await asyncio.gather(self._inbox, return_exceptions=True)
        self.streams.close()
        if self._publisher is not None:
            await asyncio.gather(self._publisher, return_exceptions=True)
        await self._tasks.aclose()
        await self.redis.aclose()
