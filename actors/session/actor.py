"""SessionActor: one asyncio task per live session, the only code that changes it.

The actor owns the message tree, the numbered event log, the subscriber hub and at most one
running model turn. Everything else puts a command in its mailbox and awaits the reply.

The turn runs as a child task of the actor. It is the only producer of events while it runs
(it appends deltas straight to the log, synchronously, so it never races the mailbox loop);
every change to the tree, including the turn's own end, goes through the mailbox.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, assert_never

import msgspec

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
    Passivate,
    PatchSession,
    RegenerateMessage,
    RestoreCheckpoint,
    SendMessage,
    Shutdown,
    Subscribe,
    TurnEnded,
)
from actors.core.errors import (
    ActorCrashedError,
    ActorStoppedError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PreconditionFailedError,
    SessiondError,
    TaskRunningError,
)
from actors.core.events import (
    TERMINAL_EVENTS,
    Event,
    EventLog,
    FrameEncoder,
    TaskInterrupted,
    encode_event,
    event_type,
)
from actors.core.export import build_export
from actors.core.ids import new_id, utcnow
from actors.core.records import (
    DeleteSession,
    LoadedSession,
    Op,
    PutEvent,
    PutMessage,
    PutSession,
    RunningTask,
    SessionRecord,
    Stats,
    StoredEvent,
)
from actors.core.tree import MessageTree, Node, Usage
from actors.ports import Provider
from actors.session.fanout import Hub, Subscription
from actors.session.mailbox import Mailbox
from actors.session.turn import TaskHandle, TurnOutcome, TurnRunner, _Turn
from actors.store.base import Store

__all__ = ["ActorSettings", "EventSink", "MessagePage", "SessionActor", "TaskHandle", "TreeView", "TurnOutcome"]

log = logging.getLogger("sessiond.actor")


EventSink = Callable[[str, int, str, bytes, "str | None"], None]
"""Told of every event a session emits: (session id, seq, type, data, task id if terminal)."""


class ActorSettings(msgspec.Struct, frozen=True):
    mailbox_size: int = 64
    event_retention: int = 10000
    seq_block: int = 4096
    max_queued: int = 16
    replay_events: int = 1000


class MessagePage(msgspec.Struct, frozen=True):
    items: list[tuple[Node, int, int]]  # node, sibling_index, sibling_count
    usage: Usage
    has_more: bool
    total: int


class TreeView(msgspec.Struct, frozen=True):
    nodes: list[Node]
    active_leaf_id: str | None


_TASK_END_MEMORY = 64  # terminal seqs remembered for task-scoped streams


class SessionActor(TurnRunner):
    """The live form of one session (see the module docstring)."""

    def __init__(
        self,
        loaded: LoadedSession,
        *,
        store: Store,
        provider: Provider,
        settings: ActorSettings,
        stats: Stats,
        on_stop: Callable[[SessionActor, BaseException | None], None],
        frame: FrameEncoder,
        sink: EventSink | None = None,
    ) -> None:
        record = loaded.record
        self.id = record.id
        self.record = record
        self.tree = MessageTree.from_nodes(loaded.nodes, record.active_leaf_id)
        self.checkpoints = loaded.checkpoints
        events = loaded.events
        floor = events[0].seq - 1 if len(events) >= settings.replay_events else 0
        self.log = EventLog(frame=frame, retention=settings.event_retention, floor=floor)
        self._last_task_start: int | None = None
        for ev in events:
            self.log.append(ev.seq, ev.type, ev.data)
            if ev.type == "task.started":
                self._last_task_start = ev.seq
        # Ids handed out before a crash may be above every durable one: continue above both.
        self._next_seq = max(record.seq_reserved, loaded.max_seq) + 1
        self.hub = Hub(self.log)
        self._store = store
        self._provider = provider
        self._settings = settings
        self._stats = stats
        self._on_stop = on_stop
        self._sink = sink
        self._mailbox = Mailbox(settings.mailbox_size)
        self._turn: _Turn | None = None
        self._queued: deque[_Turn] = deque()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.stop_reason = ""
        self._loop = asyncio.get_running_loop()
        self.last_activity = self._loop.time()

    # -- identity, read without the mailbox: these fields never change after creation ------

    @property
    def namespace(self) -> str:
        return self.record.namespace

    @property
    def end_user_id(self) -> str | None:
        return self.record.end_user_id

    @property
    def is_alive(self) -> bool:
        return self._task is not None and not self._task.done() and not self._stopping

    def is_idle(self, now: float, idle_seconds: float) -> bool:
        return (
            self._turn is None
            and not self._queued
            and self.hub.subscribers == 0
            and len(self._mailbox) == 0
            and now - self.last_activity >= idle_seconds
        )

    @property
    def mailbox_depth(self) -> int:
        return len(self._mailbox)

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Settle what a crash left behind, then start reading the mailbox."""
        if self.record.running:
            await self._recover_interrupted()
        self._task = self._loop.create_task(self._run(), name=f"actor:{self.id}")

    async def _recover_interrupted(self) -> None:
        events: list[Event] = []
        ops: list[Op] = []
        for running in self.record.running:
            if running.reply_id is not None and running.reply_id in self.tree:
                reply = self.tree.nodes[running.reply_id]
                reply.status = "interrupted"
                ops.append(PutMessage.of(self.id, reply))
            events.append(TaskInterrupted(running.task_id))
        ended = [r.task_id for r in self.record.running]
        self.record.running = []
        self._touch()
        await self._publish(events, ops, ends=ended)

    async def _run(self) -> None:
        crash: BaseException | None = None
        try:
            while not self._stopping:
                env = await self._mailbox.get()
                self.last_activity = self._loop.time()
                reply = env.reply
                try:
                    result = await self._handle(env.command)
                except SessiondError as exc:
                    if reply is not None and not reply.done():
                        reply.set_exception(exc)
                    continue
                except Exception as exc:
                    # State may be half-changed: tell the caller, then crash so the registry
                    # restarts this session from the store.
                    if reply is not None and not reply.done():
                        reply.set_exception(ActorCrashedError(f"{type(exc).__name__}: {exc}"))
                    raise
                if reply is not None and not reply.done():
                    reply.set_result(result)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            crash = exc
            self.stop_reason = "crashed"
            log.exception("session actor %s crashed", self.id)
        finally:
            self._teardown()
            self._on_stop(self, crash)

    def _teardown(self) -> None:
        self._stopping = True
        for turn in (self._turn, *self._queued):
            if turn is not None:
                if turn.task is not None and not turn.task.done():
                    turn.task.cancel()
                if not turn.done.done():
                    turn.done.set_exception(ActorStoppedError())
        if self._turn is not None:
            self._stats.tasks_running -= 1
        self._turn = None
        self._queued.clear()
        for env in self._mailbox.close():
            if env.reply is not None and not env.reply.done():
                env.reply.set_exception(ActorStoppedError())
        self.hub.close()

    async def ask(self, command: AnyCommand) -> Any:
        if self._stopping:
            raise ActorStoppedError()
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._mailbox.tell(command, fut)
        return await fut

    def tell(self, command: AnyCommand) -> None:
        self._mailbox.tell(command)

    async def wait_stopped(self) -> None:
        if self._task is not None:
            await asyncio.wait([self._task])

    # -- dispatch --------------------------------------------------------------------------

    async def _handle(self, cmd: AnyCommand) -> Any:
        match cmd:
            case GetSession():
                return self._snapshot()
            case GetMessages():
                return self._messages(cmd)
            case GetTree():
                return TreeView(self.tree.in_order(), self.tree.active_leaf_id)
            case ListCheckpoints():
                return list(self.checkpoints)
            case ExportSession():
                return build_export(self.record, self.tree.in_order(), self.checkpoints)
            case Subscribe():
                return self._subscribe(cmd.last_event_id)
            case PatchSession():
                return await self._patch(cmd)
            case SendMessage():
                return await self._send(cmd)
            case EditMessage():
                return await self._edit(cmd)
            case RegenerateMessage():
                return await self._regenerate(cmd)
            case Navigate():
                return await self._navigate(cmd)
            case RestoreCheckpoint():
                return await self._restore(cmd)
            case CancelTask():
                return await self._cancel()
            case TurnEnded():
                return await self._turn_ended(cmd)
            case DeleteSessionCmd():
                return await self._delete()
            case Passivate():
                return await self._passivate(cmd.idle_seconds)
            case Shutdown():
                return await self._shutdown()
            case _:
                assert_never(cmd)

    # -- reads -----------------------------------------------------------------------------

    def _snapshot(self) -> SessionRecord:
        return msgspec.structs.replace(self.record, message_count=len(self.tree))

    @property
    def status(self) -> str:
        return "running" if self._turn is not None else "idle"

    def _messages(self, cmd: GetMessages) -> MessagePage:
        path = self.tree.active_path()
        page = path[cmd.offset : cmd.offset + cmd.limit]
        items = [(node, *self.tree.sibling_position(node.id)) for node in page]
        return MessagePage(
            items=items,  # type: ignore[arg-type]
            usage=self.record.usage,
            has_more=cmd.offset + len(page) < len(path),
            total=len(path),
        )

    def _subscribe(self, last_event_id: int | None) -> Subscription:
        if last_event_id is None:
            start = self._last_task_start
            last_event_id = start - 1 if start is not None else self.log.last_seq
        return self.hub.subscribe(last_event_id, on_reset=self.reset_cursor)

    def reset_cursor(self) -> int:
        """Where a stream told to reset continues: the running task's start, else now."""
        start = self._last_task_start
        if self._turn is not None and start is not None and self.log.covers(start - 1):
            return start - 1
        return self.log.last_seq

    # -- events ----------------------------------------------------------------------------

    async def _publish(self, events: Sequence[Event], ops: Sequence[Op] = (), *, ends: Sequence[str] = ()) -> list[int]:
        """Number ``events``, commit them with ``ops``, and only then show them to subscribers.

        Committing first means an id a client has seen is always durable or above the
        durable reservation, and a crash can never hand it out again.
        """
        seqs: list[int] = []
        stored: list[StoredEvent] = []
        for event in events:
            seq = self._next_seq
            self._next_seq += 1
            seqs.append(seq)
            stored.append(StoredEvent(seq, event_type(event), encode_event(event)))
        if self._next_seq - 1 > self.record.seq_reserved:
            self.record.seq_reserved = self._next_seq - 1
        all_ops = [*ops, *(PutEvent(self.id, ev) for ev in stored), PutSession.of(self.record)]
        await self._store.commit(all_ops)
        end_task = ends[0] if ends else None
        for ev in stored:
            self.log.append(ev.seq, ev.type, ev.data)
            if ev.type == "task.started":
                self._last_task_start = ev.seq
            if self._sink is not None:
                self._sink(self.id, ev.seq, ev.type, ev.data, end_task if ev.type in TERMINAL_EVENTS else None)
        for task_id in ends:
            self.hub.task_end_seq[task_id] = seqs[-1]
            if len(self.hub.task_end_seq) > _TASK_END_MEMORY:
                del self.hub.task_end_seq[next(iter(self.hub.task_end_seq))]
        self._stats.events += len(stored)
        self.hub.notify()
        return seqs

    def _touch(self) -> None:
        self.record.last_active_at = utcnow()
        self.record.version += 1
        self.record.message_count = len(self.tree)

    # -- mutations -------------------------------------------------------------------------

    def _check_version(self, if_match: int | None) -> None:
        if if_match is not None and if_match != self.record.version:
            raise PreconditionFailedError(f"session is at version {self.record.version}, not {if_match}")

    def _require_idle(self) -> None:
        if self._turn is not None:
            raise TaskRunningError(f"task {self._turn.task_id} is running; cancel it or queue")

    def _node(self, message_id: str) -> Node:
        node = self.tree.get(message_id)
        if node is None:
            raise NotFoundError(f"no message {message_id} in this session")
        return node

    async def _patch(self, cmd: PatchSession) -> SessionRecord:
        self._check_version(cmd.if_match)
        r = self.record
        if cmd.title is not msgspec.UNSET:
            r.title = cmd.title
        if cmd.metadata is not msgspec.UNSET:
            merged = dict(r.metadata)
            for key, value in cmd.metadata.items():
                if value is None:
                    merged.pop(key, None)
                else:
                    merged[key] = value
            r.metadata = merged
        if cmd.context is not msgspec.UNSET:
            r.context = cmd.context
        if cmd.tools is not msgspec.UNSET:
            r.tools = list(cmd.tools)
        if cmd.link_documents:
            r.documents = [*r.documents, *(d for d in cmd.link_documents if d not in r.documents)]
        if cmd.unlink_documents:
            r.documents = [d for d in r.documents if d not in cmd.unlink_documents]
        self._touch()
        await self._store.commit([PutSession.of(r)])
        return self._snapshot()

    async def _send(self, cmd: SendMessage) -> TaskHandle:
        self._check_version(cmd.if_match)
        if not cmd.content.strip():
            raise InvalidRequestError("content must not be empty")
        parent_id = cmd.parent_id if cmd.parent_id is not None else self.tree.active_leaf_id
        if parent_id is not None and self._node(parent_id).role != "assistant":
            raise InvalidRequestError("a user message must follow an assistant message")
        if self._turn is not None:
            if not cmd.queue:
                self._require_idle()
            if len(self._queued) >= self._settings.max_queued:
                raise ConflictError("too many messages are queued in this session")
            if cmd.parent_id is not None:
                raise InvalidRequestError("a queued message follows the running answer; omit parent_id")
            # Parked under the running answer; when its turn comes it moves under the answer
            # just before it, so queued messages chain in the order they were sent.
            parent_id = self._turn.reply_id
        user = Node(new_id("msg"), parent_id, "user", cmd.content, utcnow())
        return await self._begin(user, stream=cmd.stream)

    async def _edit(self, cmd: EditMessage) -> TaskHandle:
        self._check_version(cmd.if_match)
        self._require_idle()
        node = self._node(cmd.message_id)
        if node.role != "user":
            raise InvalidRequestError("only a user message can be edited; regenerate an answer instead")
        if not cmd.content.strip():
            raise InvalidRequestError("content must not be empty")
        user = Node(new_id("msg"), node.parent_id, "user", cmd.content, utcnow())
        return await self._begin(user, stream=cmd.stream)

    async def _regenerate(self, cmd: RegenerateMessage) -> TaskHandle:
        self._check_version(cmd.if_match)
        self._require_idle()
        node = self._node(cmd.message_id)
        if node.role != "assistant" or node.parent_id is None:
            raise InvalidRequestError("only an assistant message can be regenerated")
        return await self._begin(None, stream=cmd.stream, answer_to=node.parent_id)

    async def _navigate(self, cmd: Navigate) -> list[tuple[Node, int, int]]:
        self._check_version(cmd.if_match)
        self._require_idle()
        self._node(cmd.message_id)
        self.tree.active_leaf_id = self.tree.newest_leaf_under(cmd.message_id)
        self.record.active_leaf_id = self.tree.active_leaf_id
        self._touch()
        await self._store.commit([PutSession.of(self.record)])
        return self._messages(GetMessages(limit=1 << 30)).items

    async def _restore(self, cmd: RestoreCheckpoint) -> TaskHandle | str:
        self._check_version(cmd.if_match)
        self._require_idle()
        cp = next((c for c in self.checkpoints if c.id == cmd.checkpoint_id), None)
        if cp is None:
            raise NotFoundError(f"no checkpoint {cmd.checkpoint_id} in this session")
        if cmd.hint is None or not cmd.hint.strip():
            self.tree.active_leaf_id = cp.message_id
            self.record.active_leaf_id = cp.message_id
            self._touch()
            await self._store.commit([PutSession.of(self.record)])
            return cp.message_id
        # The hint becomes a user turn after the checkpoint, sent to the model as an
        # instruction: the steps before the checkpoint stand as they are, nothing is re-run.
        user = Node(new_id("msg"), cp.message_id, "user", cmd.hint, utcnow(), hint=cmd.hint)
        return await self._begin(user, stream=cmd.stream)

    async def _begin(self, user: Node | None, *, stream: bool, answer_to: str | None = None) -> TaskHandle:
        """Add ``user`` (or answer ``answer_to`` again), persist, and start or queue its task."""
        ops: list[Op] = []
        queued = self._turn is not None
        if user is not None:
            self.tree.add(user, activate=not queued)
            ops.append(PutMessage.of(self.id, user))
            answer_to = user.id
        assert answer_to is not None
        turn = _Turn(new_id("tsk"), answer_to, self._loop.create_future())
        if queued:
            turn.queued = True
            self._queued.append(turn)
            self.record.running = [*self.record.running, RunningTask(turn.task_id, answer_to)]
            self._touch()
            await self._store.commit([*ops, PutSession.of(self.record)])
            cursor = self.log.last_seq
            sub = self.hub.subscribe(cursor, task_id=turn.task_id, on_reset=self.reset_cursor) if stream else None
            return TaskHandle(turn.task_id, answer_to, sub, turn.done, cursor)
        cursor = self.log.last_seq
        await self._start_turn(turn, ops)
        sub = self.hub.subscribe(cursor, task_id=turn.task_id, on_reset=self.reset_cursor) if stream else None
        return TaskHandle(turn.task_id, answer_to, sub, turn.done, cursor)

    async def _delete(self) -> None:
        await self._stop_turn()
        await self._store.commit([DeleteSession(self.id)])
        self._stop("deleted")

    async def _passivate(self, idle_seconds: float) -> bool:
        # The sweeper saw an idle actor; something may have arrived since.
        if self._turn is not None or self._queued or self.hub.subscribers or len(self._mailbox):
            return False
        self.record.seq_reserved = self._next_seq - 1
        await self._store.commit([PutSession.of(self.record)])
        self._stop("passivated")
        return True

    async def _shutdown(self) -> None:
        self._queued_interrupt(cancelled=False)
        turn = await self._stop_turn()
        if turn is not None:
            await self._finish(turn, "interrupted", "the server is shutting down")
        self.record.seq_reserved = self._next_seq - 1
        await self._store.commit([PutSession.of(self.record)])
        self._stop("shutdown")

    def abort(self, reason: str) -> None:
        """Stop now, writing nothing more (the session's lease is gone)."""
        self.stop_reason = reason
        if self._task is not None:
            self._task.cancel()

    def _stop(self, reason: str) -> None:
        self._stopping = True
        self.stop_reason = reason
