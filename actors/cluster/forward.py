"""Forwarding: a command for a session owned by another node runs on the owner's actor.

The caller LPUSHes the command to the owner's inbox list and BRPOPs a one-off reply list; the
owner runs it on the actor and pushes the answer back. Typed replies and errors survive the
hop: the reply is decoded as the ``R`` of the command's class (``Command[R]``, read with
``typing.get_args``), and an error comes back as its own SessiondError class, found by its
code, so ``except ActorStoppedError`` and every other handler work for a forwarded command
as for a local one.

Live replies do not cross nodes as they are: a TaskHandle travels as a RemoteTask (the task's
position in the event log) and a subscription as its cursor; the caller rebuilds both from the
session's Redis stream.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import types
import typing
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar, cast

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from actors.cluster.streams import EventStreams, RemoteSubscription, data_of
from actors.core.commands import AnyCommand, Command, GetMessages, GetSession, GetTree, Subscribe, TaskCommand
from actors.core.errors import ActorStoppedError, SessiondError, UnavailableError
from actors.core.events import (
    MessageCompleted,
    TaskCancelled,
    TaskFailed,
    TaskInterrupted,
    TaskStarted,
    decode_event,
)
from actors.core.records import SessionRecord
from actors.core.replies import TaskHandle, TreeView, TurnOutcome
from actors.core.stream import CLOSED, HEARTBEAT, RESET, EventStream
from actors.core.tree import Usage
from actors.tasks import Spawner

__all__ = ["Forwarder", "Handler", "RemoteSession", "RemoteTask", "error_class", "wire_reply_type"]

log = logging.getLogger("sessiond.cluster")

R = TypeVar("R")

# How long the inbox reader waits before asking a Redis that failed it again.
_INBOX_RETRY_SECONDS = 0.1

Handler = Callable[[str, AnyCommand], Awaitable[object]]
"""Runs a forwarded command on this node: ``handler(session_id, command)``."""


class RemoteTask(msgspec.Struct, frozen=True):
    """What a task-starting command answers across nodes."""

    task_id: str
    message_id: str
    cursor: int
    repeated: bool = False  # a repeat of an idempotent request (actors/session/requests.py)


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
    retry_after: int | None = None


_enc = msgspec.json.Encoder()
_dec_forward = msgspec.json.Decoder(_Forward)
_dec_reply = msgspec.json.Decoder(_Reply)

# Replies that are live objects on the owner, and what stands for them on the wire.
_ON_THE_WIRE: dict[object, object] = {TaskHandle: RemoteTask, EventStream: int}


def _wire(tp: object) -> object:
    if tp in _ON_THE_WIRE:
        return _ON_THE_WIRE[tp]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.Union[tuple(_wire(a) for a in typing.get_args(tp))]  # noqa: UP007
    return tp


@functools.cache
def wire_reply_type(command: type[Command[Any]]) -> object:
    """The type a forwarded ``command``'s reply is decoded as: its ``R``, live objects replaced."""
    for klass in command.__mro__:
        for base in getattr(klass, "__orig_bases__", ()):
            origin = typing.get_origin(base)
            if isinstance(origin, type) and issubclass(origin, Command):
                (arg,) = typing.get_args(base)
                if not isinstance(arg, TypeVar):
                    return _wire(arg)
    raise TypeError(f"{command.__name__} names no reply type")


def error_class(code: str) -> type[SessiondError] | None:
    """The SessiondError class whose ``code`` this is (the class that defines it).

    Walked at each use, not cached at import: every module defining an error is loaded by then.
    """
    queue: list[type[SessiondError]] = [SessiondError]
    while queue:
        cls = queue.pop(0)
        if cls.code == code:
            return cls
        queue.extend(cls.__subclasses__())
    return None


def _remote_error(reply: _Reply) -> SessiondError:
    cls = error_class(reply.code)
    if cls is not None:
        return cls(reply.detail, retry_after=reply.retry_after)
    # A code this node does not know (a newer peer): keep what it said.
    err = SessiondError(reply.detail, retry_after=reply.retry_after)
    err.status, err.code, err.title = reply.status, reply.code, reply.title
    return err


class Forwarder:
    """Sends commands to their owner nodes, and serves the ones sent to this node."""

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        node_id: str,
        *,
        timeout: float,
        streams: EventStreams,
        spawner: Spawner,
        lease_seconds: float = 5.0,
    ) -> None:
        self._redis = redis
        self._p = prefix
        self.node_id = node_id
        self._timeout = timeout
        self.streams = streams
        self._spawner = spawner
        # How long a watched task may go without an event before its owner's lease is checked.
        self.watch_seconds = max(lease_seconds / 2, 0.1)
        self._handler: Handler | None = None

    async def owner(self, session_id: str) -> str | None:
        """The node holding ``session_id``'s lease now, if any."""
        value = await self._redis.get(f"{self._p}:lease:{session_id}")
        return value.decode() if isinstance(value, bytes) else value

    async def revive(self, session_id: str) -> None:
        """Activate ``session_id`` here if no node holds its lease (its owner died): the new
        actor ends the dead owner's tasks ``interrupted``, which their watchers are waiting for.
        A node that holds the lease already published those ends itself when it took it."""
        if self._handler is None or await self.owner(session_id) is not None:
            return
        try:
            await self._handler(session_id, GetSession())
        except SessiondError:
            pass  # another node took it meanwhile (it ends the tasks), or it is gone

    def _inbox_key(self, node_id: str) -> str:
        return f"{self._p}:inbox:{node_id}"

    async def ask(self, owner: str, session_id: str, command: AnyCommand) -> object:
        """Ask the owner node: its reply as decoded from the wire (or its error, raised)."""
        reply_to = f"{self._p}:reply:{secrets.token_hex(8)}"
        request = _enc.encode(_Forward(reply_to, session_id, command))
        pipe = self._redis.pipeline(transaction=False)
        pipe.lpush(self._inbox_key(owner), request)
        pipe.expire(self._inbox_key(owner), max(int(self._timeout * 4), 10))
        await pipe.execute()
        got = await self._redis.brpop([reply_to], timeout=self._timeout)
        if got is None:
            raise UnavailableError(f"node {owner} did not answer for session {session_id}; retry shortly")
        reply = _dec_reply.decode(got[1])
        if not reply.ok:
            raise _remote_error(reply)
        return msgspec.json.decode(reply.value, type=wire_reply_type(type(command)))

    async def serve(self, handler: Handler) -> None:
        """Run every command sent to this node's inbox, each in a task of its own."""
        self._handler = handler
        key = self._inbox_key(self.node_id)
        failing = False
        while True:
            try:
                got = await self._redis.brpop([key], timeout=5)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:  # one line per outage
                    failing = True
                    log.error("reading the cluster inbox failed (%s: %s); retrying", type(exc).__name__, exc)
                # Ask again soon, if not at once: a command forwarded here the moment Redis is
                # back waits at most this long (much less than a forward's timeout).
                await asyncio.sleep(_INBOX_RETRY_SECONDS)
                continue
            if failing:
                failing = False
                log.warning("reading the cluster inbox again")
            if got is not None:
                raw = got[1]
                if isinstance(raw, str):  # only with decode_responses, which this client does not use
                    raw = raw.encode()
                self._spawner.spawn(self._serve_one(handler, raw), name="cluster-serve")

    async def _serve_one(self, handler: Handler, raw: bytes) -> None:
        try:
            request = _dec_forward.decode(raw)
        except msgspec.DecodeError:
            log.error("undecodable forwarded command dropped")
            return
        try:
            value = _wire_value(request.command, await handler(request.session_id, request.command))
            reply = _Reply(ok=True, value=msgspec.Raw(_enc.encode(value)))
        except SessiondError as exc:
            reply = _Reply(
                ok=False, status=exc.status, code=exc.code, title=exc.title, detail=exc.detail,
                retry_after=exc.retry_after,
            )
        except (RedisError, OSError) as exc:
            # Redis or the database is away on this node: the asker answers 503, not 500.
            log.warning("forwarded command failed: %s: %s", type(exc).__name__, exc)
            err = UnavailableError(f"the owner of session {request.session_id} cannot reach a service ({exc})")
            reply = _Reply(ok=False, status=err.status, code=err.code, title=err.title, detail=err.detail,
                           retry_after=err.retry_after)
        except Exception as exc:
            log.exception("forwarded command failed")
            reply = _Reply(ok=False, status=500, code="internal_error", title="Internal server error", detail=str(exc))
        pipe = self._redis.pipeline(transaction=False)
        pipe.lpush(request.reply_to, _enc.encode(reply))
        pipe.expire(request.reply_to, 60)
        await pipe.execute()


def _wire_value(command: AnyCommand, value: object) -> object:
    """A local reply as it crosses nodes: live objects become what the other side rebuilds."""
    if isinstance(value, TaskHandle):
        if value.subscription is not None:
            value.subscription.close()
        return RemoteTask(value.task_id, value.message_id, value.cursor, value.repeated)
    if isinstance(command, Subscribe):
        stream = cast(EventStream, value)  # Subscribe's R: its position is the answer
        stream.close()
        return stream.cursor
    return value


class RemoteSession:
    """A session whose actor lives on another node: a SessionRef like a local SessionActor."""

    is_alive = True

    def __init__(self, forwarder: Forwarder, record: SessionRecord, owner: str) -> None:
        self._forwarder = forwarder
        self.id = record.id
        # As stored: its identity fields (namespace, end user, guest) never change; the rest
        # may be stale, so ask the owner for anything live.
        self.record = record
        self.namespace = record.namespace
        self.end_user_id = record.end_user_id
        self.owner = owner

    async def ask(self, command: Command[R]) -> R:
        # Every Command class is one of AnyCommand or a turn's own (never sent from outside);
        # each reply is decoded as its command's R (wire_reply_type), hence the casts.
        cmd = cast(AnyCommand, command)
        streams = self._forwarder.streams
        if isinstance(cmd, TaskCommand):
            # The owner answers with the task's position; this node streams it from Redis.
            value = await self._forwarder.ask(self.owner, self.id, msgspec.structs.replace(cmd, stream=False))
            if isinstance(value, RemoteTask):
                return cast(R, self._task_handle(value, stream=cmd.stream, resume=cmd.last_event_id))
            return cast(R, value)
        if isinstance(cmd, Subscribe):
            cursor = cast(int, await self._forwarder.ask(self.owner, self.id, cmd))
            return cast(R, streams.subscribe(self.id, cursor))
        return cast(R, await self._forwarder.ask(self.owner, self.id, cmd))

    def _task_handle(self, task: RemoteTask, *, stream: bool, resume: int | None = None) -> TaskHandle:
        done: asyncio.Future[TurnOutcome] = asyncio.get_running_loop().create_future()
        streams = self._forwarder.streams
        repeated = task.repeated
        if stream:
            # A repeat resumes after the client's Last-Event-ID, never before the task's start.
            cursor = task.cursor if resume is None or not repeated else max(task.cursor, resume)
            sub = streams.subscribe(self.id, cursor, task.task_id)
            return TaskHandle(task.task_id, task.message_id, sub, done, task.cursor, repeated=repeated)
        # Watched, not sent: its batches are the events' data, to decode.
        sub = streams.subscribe(self.id, task.cursor, task.task_id, frame=data_of)
        self._forwarder._spawner.spawn(self._watch(sub, task, done), name=f"cluster-watch:{task.task_id}")
        return TaskHandle(task.task_id, task.message_id, None, done, task.cursor, repeated=repeated)

    async def _watch(self, sub: RemoteSubscription, task: RemoteTask, done: asyncio.Future[TurnOutcome]) -> None:
        """Follow a forwarded task to its end and build the result a local ask would give."""
        completed: MessageCompleted | None = None
        error: str | None = None
        reply_id: str | None = None
        ended: Literal["cancelled", "interrupted"] | None = None
        try:
            while True:
                batch = await sub.next(self._forwarder.watch_seconds)
                if batch is CLOSED:
                    break
                if batch is RESET:
                    sub.skip_to(sub.reset_cursor())  # past a hole: its end is still to come
                    continue
                if batch is HEARTBEAT:
                    # Quiet for a while: if the owner died, nobody would bring the session
                    # back (and end this task) until some later request; do it now.
                    try:
                        await self._forwarder.revive(self.id)
                    except RedisError:
                        pass  # Redis is away: this stream ends, or the next quiet spell asks again
                    continue
                assert isinstance(batch, list)
                for data in batch:
                    event = decode_event(data)
                    if isinstance(event, MessageCompleted) and event.task_id == task.task_id:
                        completed = event
                    elif isinstance(event, TaskStarted) and event.task_id == task.task_id:
                        reply_id = event.reply_id
                    elif isinstance(event, TaskFailed) and event.task_id == task.task_id:
                        error = event.error
                    elif isinstance(event, TaskInterrupted) and event.task_id == task.task_id:
                        ended, error = "interrupted", event.error
                    elif isinstance(event, TaskCancelled) and event.task_id == task.task_id:
                        ended = "cancelled"
            if completed is None and ended is not None:
                # Its node stopped mid-answer, or it was cancelled or dropped while queued: the
                # answer as stored (with what was folded of its text) is the reply, as locally.
                done.set_result(await self._ended(task, reply_id, error, ended))
                return
            if completed is None:
                raise ActorStoppedError("the task ended without its answer")
            page = await self.ask(GetMessages(limit=1 << 30))
            index, count = next(((i, c) for n, i, c in page.items if n.id == completed.message.id), (0, 1))
            msg = completed.message
            status = msg.status if msg.status != "running" else "interrupted"
            if not done.done():
                done.set_result(
                    TurnOutcome(
                        task.task_id, status, msg, completed.usage or Usage(), completed.model, error, index, count
                    )
                )
        except Exception as exc:
            if not done.done():
                done.set_exception(exc)
        finally:
            sub.close()

    async def _ended(
        self, task: RemoteTask, reply_id: str | None, error: str | None, status: Literal["cancelled", "interrupted"]
    ) -> TurnOutcome:
        # The whole tree: a queued task's user turn is not on the active path.
        query = GetTree()
        try:
            tree = await self.ask(query)
        except (ActorStoppedError, UnavailableError):
            # The task ended because its node was lost: the session lives on whichever node
            # published that end, or on none (it drained): this node's own inbox then
            # activates it here. A draining node releases its leases only once its actors
            # stopped: ask again, a bounded number of times, until the lease has moved.
            for attempt in range(10):
                owner = await self._forwarder.owner(self.id)
                target = owner if owner is not None and owner != self.owner else self._forwarder.node_id
                try:
                    tree = cast(TreeView, await self._forwarder.ask(target, self.id, query))
                    break
                except ActorStoppedError:
                    if attempt == 9:
                        raise
                    await asyncio.sleep(0.2)
        nodes = {n.id: n for n in tree.nodes}
        # Its answer as stored (with what was folded of its text), or, interrupted before its
        # answer began, the user's message, as a local ask answers.
        msg = nodes.get(reply_id) if reply_id is not None else None
        msg = msg or nodes.get(task.message_id)
        if msg is None:
            raise ActorStoppedError("the task ended without its answer")
        siblings = [n.id for n in tree.nodes if n.parent_id == msg.parent_id]
        return TurnOutcome(task.task_id, status, msg, Usage(), None, error, siblings.index(msg.id), len(siblings))
