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
import contextlib
import logging
from typing import cast

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from actors.batch import BatchQueue, QueueClosedError
from actors.core.events import TERMINAL_EVENTS, FrameEncoder, decode_event
from actors.core.records import StoredEvent
from actors.core.stream import CLOSED, HEARTBEAT, RESET, Batch, FrameSink

__all__ = ["EventStreams", "RemoteSubscription", "data_of"]

log = logging.getLogger("sessiond.cluster")


class _Outgoing(msgspec.Struct, frozen=True, array_like=True):
    session_id: str
    seq: int
    type: str
    data: bytes
    end_task: str | None
    prev: int


_RETRY_FIRST = 0.05  # seconds before the first retry of a batch Redis refused; doubles up to
_RETRY_MAX = 1.0
_RETRIES_ON_CLOSE = 3  # a node that stops during an outage tries this often, then says what it drops


class EventStreams:
    """This node's side of the Redis event streams: publishing, and reading them back."""

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        *,
        maxlen: int,
        ttl_seconds: int,
        frame: FrameEncoder,
        outbox_events: int = 100_000,
    ) -> None:
        self.redis = redis
        self.frame = frame  # the edge's wire format, for events read back from Redis
        self._p = prefix
        self.maxlen = maxlen
        self._ttl = ttl_seconds
        # Events wait here while Redis is unreachable, in order; past this bound new ones are
        # dropped (said once per outage), and the ``prev`` of the next one that gets through
        # tells every reader of that session that it missed something: stream.reset.
        self._outbox: BatchQueue[_Outgoing] = BatchQueue(outbox_events)
        self.dropped = 0  # events dropped since the outage began (0 while Redis takes them)
        # Of the dropped events, per session, each terminal one and the newest: queued first when
        # there is room again, so readers past the hole still get every task's end.
        self._overflow: dict[str, list[_Outgoing]] = {}
        self.failing_since: float | None = None  # loop time of the first refused batch of an outage

    def key(self, session_id: str) -> str:
        return f"{self._p}:events:{session_id}"

    def publish(self, session_id: str, seq: int, type_: str, data: bytes, end_task: str | None, prev: int) -> None:
        """Queue an event for its Redis stream (an EventSink); one publisher keeps the order."""
        ev = _Outgoing(session_id, seq, type_, data, end_task, prev)
        try:
            if self._overflow:
                self._requeue_overflow()
            if self._overflow:
                raise asyncio.QueueFull  # older events of some session wait before this one
            self._outbox.put_nowait(ev)
        except asyncio.QueueFull:
            if not self.dropped:
                log.error(
                    "cluster outbox full (%d events waiting for Redis): dropping new events until Redis takes them;"
                    " readers of the sessions concerned will be told stream.reset",
                    len(self._outbox),
                )
            self.dropped += 1
            kept = self._overflow.setdefault(session_id, [])
            if kept and kept[-1].end_task is None:
                kept.pop()  # only the newest of the others is worth keeping
            kept.append(ev)
        except QueueClosedError:
            log.error("cluster outbox closed: event %s of %s not fanned out", seq, session_id)

    def _requeue_overflow(self) -> None:
        """Queue the kept dropped events while there is room (their ``prev`` marks the hole)."""
        for sid in list(self._overflow):
            kept = self._overflow[sid]
            while kept:
                self._outbox.put_nowait(kept[0])  # QueueFull: the rest waits for more room
                kept.pop(0)
            del self._overflow[sid]

    async def catch_up(self, session_id: str, events: list[StoredEvent]) -> None:
        """Before a node's actor for ``session_id`` starts: the durable events its Redis stream
        lacks (the node that showed them was lost with them queued), each after a hole, so a
        reader resets and then still sees them, and every task's end."""
        last = cast(list[_Entry], await self.redis.xrevrange(self.key(session_id), count=1))
        top = _seq(last[0][0]) if last else 0
        for ev in events:
            if ev.seq > top:
                end = _task_of(ev.data) if ev.type in TERMINAL_EVENTS else None
                self.publish(session_id, ev.seq, ev.type, ev.data, end, ev.seq - 1)

    @property
    def backlog(self) -> int:
        """Events waiting for Redis."""
        return len(self._outbox)

    def close(self) -> None:
        """Publish what is queued, then let ``run()`` end."""
        self._outbox.close()

    async def run(self) -> None:
        """The publisher: until ``close()``, every queued event into its stream, in order."""
        async for batch in self._outbox.batches(1000):
            await self._deliver(batch)

    async def _deliver(self, batch: list[_Outgoing]) -> None:
        """Write ``batch`` to Redis, retrying until Redis takes it: nothing after it goes first."""
        loop = asyncio.get_running_loop()
        delay = _RETRY_FIRST
        attempts = 0
        while True:
            attempts += 1
            try:
                await self._write(batch)
            except (RedisError, OSError) as exc:
                if self.failing_since is None:
                    self.failing_since = loop.time()
                    # One line per outage, not one traceback per batch; a summary when it ends.
                    log.warning("publishing events to Redis failed (%s): keeping them, retrying in order", exc)
                if self._outbox.closed and attempts >= _RETRIES_ON_CLOSE:
                    log.error(
                        "stopping with Redis unreachable: %d events not fanned out (readers will be told stream.reset)",
                        len(batch) + len(self._outbox),
                    )
                    self.dropped += len(batch)
                    return
                await asyncio.sleep(delay)  # back off before asking a failing Redis again
                delay = min(delay * 2, _RETRY_MAX)
                continue
            if self.failing_since is not None:
                log.warning(
                    "Redis takes events again after %.1f s (%d events waiting, %d dropped)",
                    loop.time() - self.failing_since, len(self._outbox), self.dropped,
                )
                self.failing_since = None
                self.dropped = 0
            if self._overflow:
                with contextlib.suppress(asyncio.QueueFull):
                    self._requeue_overflow()
            return

    async def _write(self, batch: list[_Outgoing]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        touched: set[str] = set()
        for ev in batch:
            fields: dict[str | bytes, str | bytes | int] = {"t": ev.type, "d": ev.data, "p": ev.prev}
            if ev.end_task is not None:
                fields["k"] = ev.end_task
            pipe.xadd(self.key(ev.session_id), fields, id=f"{ev.seq}-0", maxlen=self.maxlen, approximate=False)  # type: ignore[arg-type]
            touched.add(ev.session_id)
        for sid in touched:
            pipe.expire(self.key(sid), self._ttl)
        results = await pipe.execute(raise_on_error=False)
        for result in results:
            # An entry already there (a retried batch that Redis had partly taken before the
            # connection broke) is refused as "equal or smaller": it is there, which is the point.
            if isinstance(result, (ConnectionError, TimeoutError, RedisConnectionError)):
                raise result

    def subscribe(
        self, session_id: str, cursor: int, task_id: str | None = None, *, frame: FrameEncoder | None = None
    ) -> RemoteSubscription:
        return RemoteSubscription(self, session_id, cursor, task_id, frame or self.frame)


def _task_of(data: bytes) -> str | None:
    task_id = getattr(decode_event(data), "task_id", None)
    return task_id if isinstance(task_id, str) else None


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

    async def follow(self, sink: FrameSink, timeout: float) -> int | None:  # noqa: ASYNC109
        return None  # events come by reading Redis: there is no producer here to write them

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
            prev = fields.get(b"p")
            if prev is not None and int(prev) > self.cursor:
                # The event before this one never reached Redis (an outage past the outbox's
                # bound, a node lost with events still queued, a trimmed stream): a hole.
                # Say so; never skip it silently. After the reset the stream goes on here.
                if frames:
                    break  # send what came before the hole first
                self._latest = seq - 1
                return RESET
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
        return frames if frames else HEARTBEAT
