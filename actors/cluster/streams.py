"""Redis Streams fan-out: every event of this node's actors, XADDed to ``events:{id}``.

The stream id is the event id, so a client on any node reads a session's events and resumes
by ``Last-Event-ID``, whichever node owns the session now or later. One publisher task writes
them in order, a pipeline per batch; ``RemoteSubscription`` reads them back as an EventStream.
An entry holds the event's type (``t``) and data (``d``); the reading node frames it with the
encoder the edge gave it, as its own actors' events are, so a remote stream is byte for byte a
local one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from actors.batch import BatchQueue, QueueClosedError
from actors.core.events import FrameEncoder
from actors.core.stream import CLOSED, HEARTBEAT, RESET, Batch

__all__ = ["EventStreams", "RemoteSubscription", "data_of"]

log = logging.getLogger("sessiond.cluster")


class _Outgoing(msgspec.Struct, frozen=True, array_like=True):
    session_id: str
    seq: int
    type: str
    data: bytes
    end_task: str | None


class EventStreams:
    """This node's side of the Redis event streams: publishing, and reading them back."""

    def __init__(
        self, redis: aioredis.Redis, prefix: str, *, maxlen: int, ttl_seconds: int, frame: FrameEncoder
    ) -> None:
        self.redis = redis
        self.frame = frame  # the edge's wire format, for events read back from Redis
        self._p = prefix
        self.maxlen = maxlen
        self._ttl = ttl_seconds
        self._outbox: BatchQueue[_Outgoing] = BatchQueue(100_000)

    def key(self, session_id: str) -> str:
        return f"{self._p}:events:{session_id}"

    def publish(self, session_id: str, seq: int, type_: str, data: bytes, end_task: str | None) -> None:
        """Queue an event for its Redis stream (an EventSink); one publisher keeps the order."""
        try:
            self._outbox.put_nowait(_Outgoing(session_id, seq, type_, data, end_task))
        except asyncio.QueueFull:
            log.error("cluster outbox full: event %s of %s not fanned out", seq, session_id)
        except QueueClosedError:
            log.error("cluster outbox closed: event %s of %s not fanned out", seq, session_id)

    def close(self) -> None:
        """Publish what is queued, then let ``run()`` end."""
        self._outbox.close()

    async def run(self) -> None:
        """The publisher: until ``close()``, every queued event into its stream, in order."""
        async for batch in self._outbox.batches(1000):
            pipe = self.redis.pipeline(transaction=False)
            touched: set[str] = set()
            for ev in batch:
                fields: dict[str | bytes, str | bytes] = {"t": ev.type, "d": ev.data}
                if ev.end_task is not None:
                    fields["k"] = ev.end_task
                pipe.xadd(self.key(ev.session_id), fields, id=f"{ev.seq}-0", maxlen=self.maxlen, approximate=False)  # type: ignore[arg-type]
                touched.add(ev.session_id)
            for sid in touched:
                pipe.expire(self.key(sid), self._ttl)
            try:
                await pipe.execute(raise_on_error=False)
            except Exception:
                log.exception("publishing %d events to Redis failed", len(batch))

    def subscribe(
        self, session_id: str, cursor: int, task_id: str | None = None, *, frame: FrameEncoder | None = None
    ) -> RemoteSubscription:
        return RemoteSubscription(self, session_id, cursor, task_id, frame or self.frame)


def data_of(seq: int, type_: str, data: bytes) -> bytes:
    """The FrameEncoder of a subscription that decodes events instead of sending them."""
    return data


_Entry = tuple[bytes, dict[bytes, bytes]]


def _seq(entry_id: bytes) -> int:
    return int(entry_id.split(b"-")[0])


class RemoteSubscription:
    """Reads a session's events from its Redis stream: the EventStream of another node's actor."""

    def __init__(
        self, streams: EventStreams, session_id: str, cursor: int, task_id: str | None, frame: FrameEncoder
    ) -> None:
        self._streams = streams
        self._frame = frame
        self.session_id = session_id
        self.cursor = cursor
        self.task_id = task_id
        self._checked = False
        self._done = False
        self._latest = cursor

    def close(self) -> None:
        self._done = True

    def skip_to(self, cursor: int) -> None:
        self.cursor = cursor

    def reset_cursor(self) -> int:
        return self._latest

    def ready(self) -> bool:
        return self._done  # what Redis holds is only known by asking it

    async def next(self, timeout: float | None, max_bytes: int = 1 << 20) -> Batch:  # noqa: ASYNC109
        if self._done:
            return CLOSED
        r = self._streams.redis
        key = self._streams.key(self.session_id)
        if not self._checked:
            self._checked = True
            first = cast(list[_Entry], await r.xrange(key, count=1))
            if first and self.cursor > 0:
                first_seq = _seq(first[0][0])
                trimmed = await r.xlen(key) >= self._streams.maxlen
                if first_seq > self.cursor + 1 and trimmed:
                    last = cast(list[_Entry], await r.xrevrange(key, count=1))
                    self._latest = _seq(last[0][0])
                    return RESET
        block = int((timeout or 30) * 1000)
        try:
            # A client without decode_responses: [[key, [(entry id, {field: value})]]], all bytes.
            read = await r.xread({key: f"{self.cursor}-0"}, count=1000, block=block)
            got = cast(list[tuple[bytes, list[_Entry]]], read)
        except RedisError as exc:
            # Redis is gone: end this stream; the client reconnects and resumes by its id.
            log.warning("reading the events of %s from Redis failed: %s", self.session_id, exc)
            self._done = True
            return CLOSED
        if not got:
            return HEARTBEAT
        frames: list[bytes] = []
        size = 0
        for entry_id, fields in got[0][1]:
            seq = _seq(entry_id)
            data = fields.get(b"d")
            # An entry without data was written, as a whole frame, before events were kept as
            # data: sent as it is until the stream's TTL or cap drops it.
            frame = self._frame(seq, fields[b"t"].decode(), data) if data is not None else fields[b"f"]
            frames.append(frame)
            size += len(frame)
            self.cursor = seq
            end = fields.get(b"k")
            if self.task_id is not None and end is not None and end.decode() == self.task_id:
                self._done = True
                break
            if size >= max_bytes:
                break
        self._latest = max(self._latest, self.cursor)
        return frames
