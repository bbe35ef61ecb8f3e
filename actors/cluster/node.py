"""Cluster mode: several sessiond nodes behave as one, through Redis.

- **Single activation.** A node hosts a session's actor only while it holds the Redis lease
  ``lease:{id}`` (SET NX PX), renewed while the actor lives and released when it stops. A dead
  node's leases expire, and the next command activates the session on a live node from the
  shared store.
- **Forwarding.** A command for a session owned elsewhere goes to the owner's inbox list; the
  owner runs it on the actor and pushes the reply to a one-off reply list. The caller cannot
  tell it from a local ask.
- **Fan-out.** Every event a node's actors emit is also XADDed, in order, to the capped stream
  ``events:{id}`` with the event id as the stream id, so a client on any node reads it and
  resumes by ``Last-Event-ID``, whichever node owns the session now or later. An entry holds
  the event's type (``t``) and data (``d``); the reading node frames it with the encoder the
  edge gave it, as its own actors' events are, so a remote stream is byte for byte a local one.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any, cast

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from actors.core.commands import (
    AnyCommand,
    CancelTask,
    DeleteSessionCmd,
    EditMessage,
    ExportSession,
    GetMessages,
    GetSession,
    GetTree,
    ListCheckpoints,
    Navigate,
    PatchSession,
    RegenerateMessage,
    RestoreCheckpoint,
    SendMessage,
    Subscribe,
)
from actors.core.errors import ActorStoppedError, SessiondError, UnavailableError
from actors.core.events import FrameEncoder, MessageCompleted, TaskFailed, decode_event
from actors.core.export import SessionExport
from actors.core.records import Checkpoint, SessionRecord
from actors.core.tree import Node, Usage
from actors.session.actor import MessagePage, TaskHandle, TreeView, TurnOutcome
from actors.session.fanout import CLOSED, HEARTBEAT, RESET, Batch

__all__ = ["Cluster", "ClusterSettings", "RemoteSession", "RemoteSubscription", "RemoteTask"]

log = logging.getLogger("sessiond.cluster")

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class ClusterSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``[cluster]`` section of config.toml."""

    node_id: str = ""
    lease_ms: int = 5000
    forward_timeout_seconds: float = 5.0
    stream_maxlen: int = 10000
    stream_ttl_seconds: int = 86400
    prefix: str = "sessiond"


class RemoteTask(msgspec.Struct, frozen=True):
    """What a task-starting command answers across nodes."""

    task_id: str
    message_id: str
    cursor: int


class _Forward(msgspec.Struct, frozen=True):
    reply_to: str
    session_id: str
    command: AnyCommand


class _Reply(msgspec.Struct, frozen=True, omit_defaults=True):
    ok: bool
    value: msgspec.Raw = msgspec.Raw(b"null")
    status: int = 500
    code: str = ""
    title: str = ""
    detail: str = ""


_REPLY_TYPES: dict[type[Any], Any] = {
    GetSession: SessionRecord,
    PatchSession: SessionRecord,
    GetMessages: MessagePage,
    GetTree: TreeView,
    ListCheckpoints: list[Checkpoint],
    ExportSession: SessionExport,
    CancelTask: str,
    Navigate: list[tuple[Node, int, int]],
    DeleteSessionCmd: None,
    SendMessage: RemoteTask,
    EditMessage: RemoteTask,
    RegenerateMessage: RemoteTask,
    RestoreCheckpoint: RemoteTask | str,
    Subscribe: int,
}
_enc = msgspec.json.Encoder()
_dec_forward = msgspec.json.Decoder(_Forward)
_dec_reply = msgspec.json.Decoder(_Reply)


def _remote_error(reply: _Reply) -> SessiondError:
    err = SessiondError(reply.detail)
    err.status, err.code, err.title = reply.status, reply.code, reply.title
    if reply.status == 503:
        err.retry_after = 1
    return err


class Cluster:
    """This node's membership: leases, forwarding and the Redis event streams."""

    def __init__(self, url: str, settings: ClusterSettings, *, frame: FrameEncoder) -> None:
        self.settings = settings
        self.frame = frame  # the edge's wire format, for events read back from Redis
        self.node_id = settings.node_id or f"node-{secrets.token_hex(4)}"
        # No client-side read timeout: XREAD BLOCK and BRPOP wait up to their own server-side
        # timeouts (redis-py's default of 5 s would cut every longer wait short).
        self.redis: aioredis.Redis = aioredis.from_url(
            url, max_connections=2000, socket_timeout=None, socket_keepalive=True, health_check_interval=30
        )
        self._p = settings.prefix
        self._renew = self.redis.register_script(_RENEW)
        self._release = self.redis.register_script(_RELEASE)
        self._outbox: asyncio.Queue[tuple[str, int, str, bytes, str | None]] = asyncio.Queue(100_000)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._publisher: asyncio.Task[None] | None = None
        self._inbox: asyncio.Task[None] | None = None
        self._handler: Any = None

    # -- keys ------------------------------------------------------------------------------

    def _lease(self, session_id: str) -> str:
        return f"{self._p}:lease:{session_id}"

    def _events(self, session_id: str) -> str:
        return f"{self._p}:events:{session_id}"

    def _inbox_key(self, node_id: str) -> str:
        return f"{self._p}:inbox:{node_id}"

    # -- life cycle ------------------------------------------------------------------------

    async def start(self, handler: Any) -> None:
        """``handler(session_id, command)`` runs a forwarded command on this node."""
        await self.redis.ping()
        self._handler = handler
        loop = asyncio.get_running_loop()
        self._publisher = loop.create_task(self._publish_loop(), name="cluster-publisher")
        self._inbox = loop.create_task(self._inbox_loop(), name="cluster-inbox")

    async def aclose(self) -> None:
        if self._inbox is not None:
            self._inbox.cancel()
            await asyncio.gather(self._inbox, return_exceptions=True)
        if self._publisher is not None:
            await self._outbox.put(("", 0, "", b"", None))  # flush what was queued, then stop
            await asyncio.gather(self._publisher, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.redis.aclose()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- leases ----------------------------------------------------------------------------

    async def acquire(self, session_id: str) -> bool:
        return bool(await self.redis.set(self._lease(session_id), self.node_id, nx=True, px=self.settings.lease_ms))

    async def owner(self, session_id: str) -> str | None:
        value = await self.redis.get(self._lease(session_id))
        return value.decode() if value is not None else None

    async def release(self, session_id: str) -> None:
        await self._release(keys=[self._lease(session_id)], args=[self.node_id])

    async def renew(self, session_ids: list[str]) -> list[str]:
        """Extend our leases; returns the sessions whose lease we no longer hold."""
        if not session_ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for sid in session_ids:
            await self._renew(keys=[self._lease(sid)], args=[self.node_id, self.settings.lease_ms], client=pipe)
        results = await pipe.execute()
        return [sid for sid, ok in zip(session_ids, results, strict=True) if not ok]

    # -- fan-out ---------------------------------------------------------------------------

    def publish(self, session_id: str, seq: int, type_: str, data: bytes, end_task: str | None) -> None:
        """Queue an event for its Redis stream (an EventSink); one publisher keeps the order."""
        try:
            self._outbox.put_nowait((session_id, seq, type_, data, end_task))
        except asyncio.QueueFull:
            log.error("cluster outbox full: event %s of %s not fanned out", seq, session_id)

    async def _publish_loop(self) -> None:
        queue = self._outbox
        while True:
            batch = [await queue.get()]
            while not queue.empty() and len(batch) < 1000:
                batch.append(queue.get_nowait())
            stop = any(sid == "" for sid, *_ in batch)
            pipe = self.redis.pipeline(transaction=False)
            touched: set[str] = set()
            for sid, seq, type_, data, end in batch:
                if not sid:
                    continue
                fields: dict[str, Any] = {"t": type_, "d": data}
                if end is not None:
                    fields["k"] = end
                pipe.xadd(
                    self._events(sid), fields, id=f"{seq}-0", maxlen=self.settings.stream_maxlen, approximate=False
                )
                touched.add(sid)
            for sid in touched:
                pipe.expire(self._events(sid), self.settings.stream_ttl_seconds)
            try:
                await pipe.execute(raise_on_error=False)
            except Exception:
                log.exception("publishing %d events to Redis failed", len(batch))
            if stop:
                return

    def subscribe(
        self, session_id: str, cursor: int, task_id: str | None = None, *, frame: FrameEncoder | None = None
    ) -> RemoteSubscription:
        return RemoteSubscription(self, session_id, cursor, task_id, frame or self.frame)

    # -- forwarding ------------------------------------------------------------------------

    async def forward(self, owner: str, session_id: str, command: AnyCommand) -> Any:
        """Ask the owner node; answers (or raises) as a local ask would."""
        reply_to = f"{self._p}:reply:{secrets.token_hex(8)}"
        request = _enc.encode(_Forward(reply_to, session_id, command))
        timeout = self.settings.forward_timeout_seconds
        pipe = self.redis.pipeline(transaction=False)
        pipe.lpush(self._inbox_key(owner), request)
        pipe.expire(self._inbox_key(owner), max(int(timeout * 4), 10))
        await pipe.execute()
        got = await self.redis.brpop([reply_to], timeout=timeout)
        if got is None:
            raise UnavailableError(f"node {owner} did not answer for session {session_id}; retry shortly")
        reply = _dec_reply.decode(got[1])
        if not reply.ok:
            raise _remote_error(reply)
        return msgspec.json.decode(reply.value, type=_REPLY_TYPES[type(command)])

    async def _inbox_loop(self) -> None:
        key = self._inbox_key(self.node_id)
        while True:
            try:
                got = await self.redis.brpop([key], timeout=5)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reading the cluster inbox failed")
                await asyncio.sleep(1)  # back off before asking a failing Redis again
                continue
            if got is not None:
                self._spawn(self._serve(got[1]))

    async def _serve(self, raw: bytes) -> None:
        try:
            request = _dec_forward.decode(raw)
        except msgspec.DecodeError:
            log.error("undecodable forwarded command dropped")
            return
        try:
            value = await self._handler(request.session_id, request.command)
            reply = _Reply(ok=True, value=msgspec.Raw(_enc.encode(_wire_value(value))))
        except SessiondError as exc:
            reply = _Reply(ok=False, status=exc.status, code=exc.code, title=exc.title, detail=exc.detail)
        except Exception as exc:
            log.exception("forwarded command failed")
            reply = _Reply(ok=False, status=500, code="internal_error", title="Internal server error", detail=str(exc))
        pipe = self.redis.pipeline(transaction=False)
        pipe.lpush(request.reply_to, _enc.encode(reply))
        pipe.expire(request.reply_to, 60)
        await pipe.execute()

    # -- remote tasks ----------------------------------------------------------------------

    def task_handle(self, session: RemoteSession, task: RemoteTask, *, stream: bool) -> TaskHandle:
        done: asyncio.Future[TurnOutcome] = asyncio.get_running_loop().create_future()
        if stream:
            sub = self.subscribe(session.id, task.cursor, task.task_id)
            return TaskHandle(task.task_id, task.message_id, sub, done, task.cursor)
        # Watched, not sent: its batches are the events' data, to decode.
        sub = self.subscribe(session.id, task.cursor, task.task_id, frame=_data_of)
        self._spawn(self._watch(session, sub, task, done))
        return TaskHandle(task.task_id, task.message_id, None, done, task.cursor)

    async def _watch(
        self, session: RemoteSession, sub: RemoteSubscription, task: RemoteTask, done: asyncio.Future[TurnOutcome]
    ) -> None:
        """Follow a forwarded task to its end and build the result a local ask would give."""
        completed: MessageCompleted | None = None
        error: str | None = None
        try:
            while True:
                batch = await sub.next(30)
                if batch is CLOSED or batch is RESET:
                    break
                if batch is HEARTBEAT:
                    continue
                assert isinstance(batch, list)
                for data in batch:
                    event = decode_event(data)
                    if isinstance(event, MessageCompleted) and event.task_id == task.task_id:
                        completed = event
                    elif isinstance(event, TaskFailed) and event.task_id == task.task_id:
                        error = event.error
            if completed is None:
                raise ActorStoppedError("the task ended without its answer")
            page: MessagePage = await session.ask(GetMessages(limit=1 << 30))
            index, count = next(((i, c) for n, i, c in page.items if n.id == completed.message.id), (0, 1))
            msg = completed.message
            if not done.done():
                done.set_result(
                    TurnOutcome(
                        task.task_id, msg.status, msg, completed.usage or Usage(), completed.model, error, index, count
                    )
                )
        except Exception as exc:
            if not done.done():
                done.set_exception(exc)
        finally:
            sub.close()


def _data_of(seq: int, type_: str, data: bytes) -> bytes:
    """The FrameEncoder of a subscription that decodes events instead of sending them."""
    return data


def _wire_value(value: Any) -> Any:
    """A local reply as it crosses nodes: live objects become what the other side rebuilds."""
    if isinstance(value, TaskHandle):
        if value.subscription is not None:
            value.subscription.close()
        return RemoteTask(value.task_id, value.message_id, value.cursor)
    cursor = getattr(value, "cursor", None)
    if cursor is not None and hasattr(value, "close"):  # a Subscription: its position is the answer
        value.close()
        return cursor
    return value


class RemoteSubscription:
    """Reads a session's events from its Redis stream: the Subscription of another node's actor."""

    def __init__(
        self, cluster: Cluster, session_id: str, cursor: int, task_id: str | None, frame: FrameEncoder
    ) -> None:
        self.cluster = cluster
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
        r = self.cluster.redis
        key = self.cluster._events(self.session_id)
        if not self._checked:
            self._checked = True
            first = await r.xrange(key, count=1)
            if first and self.cursor > 0:
                first_seq = int(first[0][0].split(b"-")[0])
                trimmed = await r.xlen(key) >= self.cluster.settings.stream_maxlen
                if first_seq > self.cursor + 1 and trimmed:
                    last = await r.xrevrange(key, count=1)
                    self._latest = int(last[0][0].split(b"-")[0])
                    return RESET
        block = int((timeout or 30) * 1000)
        try:
            got = await r.xread({key: f"{self.cursor}-0"}, count=1000, block=block)
        except RedisError as exc:
            # Redis is gone: end this stream; the client reconnects and resumes by its id.
            log.warning("reading the events of %s from Redis failed: %s", self.session_id, exc)
            self._done = True
            return CLOSED
        if not got:
            return HEARTBEAT
        frames: list[bytes] = []
        size = 0
        for entry_id, entry in got[0][1]:
            seq = int(entry_id.split(b"-")[0])
            fields = cast("dict[bytes, bytes]", entry)  # what we XADDed; redis-py types it loosely
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


class RemoteSession:
    """A session whose actor lives on another node: the same face as a SessionActor to routes."""

    is_alive = True

    def __init__(self, cluster: Cluster, record: SessionRecord, owner: str) -> None:
        self.cluster = cluster
        self.id = record.id
        # As stored: its identity fields (namespace, end user, guest) never change; the rest
        # may be stale, so ask the owner for anything live.
        self.record = record
        self.namespace = record.namespace
        self.end_user_id = record.end_user_id
        self.owner = owner

    async def ask(self, command: AnyCommand) -> Any:
        if isinstance(command, SendMessage | EditMessage | RegenerateMessage | RestoreCheckpoint):
            stream = command.stream
            # The owner answers with the task's position; this node streams it from Redis.
            value = await self.cluster.forward(self.owner, self.id, msgspec.structs.replace(command, stream=False))
            if isinstance(value, RemoteTask):
                return self.cluster.task_handle(self, value, stream=stream)
            return value
        if isinstance(command, Subscribe):
            cursor = await self.cluster.forward(self.owner, self.id, command)
            return self.cluster.subscribe(self.id, cursor)
        return await self.cluster.forward(self.owner, self.id, command)
