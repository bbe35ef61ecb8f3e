"""SessionActor: one asyncio task per live session, the only code that changes it.

The actor owns the message tree, the numbered event log, the subscriber hub and at most one
running model turn (that data, and the publishing of events, is its base SessionState in
state.py). Everything else puts a command in its mailbox and awaits the reply.

The turn (actors/session/turn.py) runs as a child task of the actor and reaches the session
only through the actor's Journal: it appends text deltas straight to the log, synchronously
(so it never races the mailbox loop), and every change to the tree or the record, including
its tool calls and results and its own end, goes through the mailbox.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar, assert_never, cast

import msgspec

from actors.core.commands import (
    READS,
    CancelTask,
    Command,
    DecideToolCall,
    DeleteSession,
    EditMessage,
    ExpireSession,
    ExportSession,
    FoldReply,
    GetMessages,
    GetSession,
    GetTree,
    ListCheckpoints,
    MailboxCommand,
    Navigate,
    Passivate,
    PatchSession,
    RegenerateMessage,
    ReserveSeqs,
    RestoreCheckpoint,
    SaveSummary,
    SendMessage,
    Shutdown,
    SubmitToolResult,
    Subscribe,
    TaskCommand,
    ToolCalled,
    ToolReturned,
    TurnEnded,
    WaitExpired,
)
from actors.core.errors import (
    ActorCrashedError,
    ActorStoppedError,
    ConflictError,
    FencedError,
    InvalidRequestError,
    NotFoundError,
    SessiondError,
    StoreClosedError,
    UnavailableError,
)
from actors.core.events import (
    CheckpointCreated,
    Event,
    FrameEncoder,
    MessageCompleted,
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskInterrupted,
    TaskStarted,
    ToolApprovalDecided,
    ToolApprovalRequested,
    ToolCall,
    ToolResult,
    delta_head,
)
from actors.core.export import build_export
from actors.core.ids import new_id, utcnow
from actors.core.model import Resume
from actors.core.records import (
    Checkpoint,
    LoadedSession,
    Op,
    PutCheckpoint,
    PutMessage,
    PutSession,
    RemoveSession,
    RunningTask,
    SessionRecord,
    Stats,
)
from actors.core.replies import Expiry, TaskHandle, TreeView, TurnOutcome, TurnStatus
from actors.core.retention import effective, is_due
from actors.core.tree import Node, ToolUse, ToolWait, Usage
from actors.core.webhooks import Outbox
from actors.ports import EventSink, Provider, SessionStore
from actors.session import requests
from actors.session.context import model_request
from actors.session.mailbox import Mailbox
from actors.session.state import ActorSettings, SessionState
from actors.session.trim import trim
from actors.session.turn import Turn

__all__ = ["ActorSettings", "SessionActor", "StopReason"]

log = logging.getLogger("sessiond.actor")

R = TypeVar("R")

StopReason = Literal["", "crashed", "passivated", "deleted", "shutdown", "lease lost", "fenced", "store closed"]


def _answer(command: Command[R], value: R) -> R:
    """``value`` as the reply to ``command``: mypy checks it is the command's own R."""
    return value


class SessionActor(SessionState):
    """The live form of one session (see the module docstring)."""

    def __init__(
        self,
        loaded: LoadedSession,
        *,
        store: SessionStore,
        provider: Provider,
        settings: ActorSettings,
        stats: Stats,
        on_stop: Callable[[SessionActor, BaseException | None], None],
        frame: FrameEncoder,
        sink: EventSink | None = None,
        guard: Callable[[str], Awaitable[bool | None]] | None = None,
        outbox: Outbox | None = None,
        epoch: int = 0,
    ) -> None:
        super().__init__(
            loaded, store=store, settings=settings, stats=stats, frame=frame, sink=sink, outbox=outbox, epoch=epoch
        )
        # Cluster mode: whether this node still holds the session's lease, asked before a
        # change is accepted (a node that cannot prove it must not serve one).
        self._guard = guard
        self._provider = provider
        self._on_stop = on_stop
        self._mailbox = Mailbox(settings.mailbox_size)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.stop_reason: StopReason = ""
        self._journal = _ActorJournal(self)
        self.last_activity = self._loop.time()

    # -- life ------------------------------------------------------------------------------

    @property
    def is_alive(self) -> bool:
        return self._task is not None and not self._task.done() and not self._stopping

    def is_idle(self, now: float, idle_seconds: float) -> bool:
        return (
            self._parked_or_none()
            and not self._queued
            and self.hub.subscribers == 0
            and len(self._mailbox) == 0
            and now - self.last_activity >= idle_seconds
        )

    def _parked_or_none(self) -> bool:
        """No turn runs: none at all, or one that waits in the store on tool calls (such a
        session may passivate; the next activation finds it waiting)."""
        turn = self._turn
        return turn is None or (turn.waiting and turn.task is None)

    @property
    def mailbox_depth(self) -> int:
        return len(self._mailbox)

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Settle what a crash left behind, then start reading the mailbox."""
        if self.record.running:
            await self._recover_interrupted()
        self._task = self._loop.create_task(self._run(), name=f"actor:{self.id}")

    def _recover_waiting(self) -> list[RunningTask]:
        """Take back a task that waits on tool calls, and the tasks queued behind it; answer
        the rest (those that really were interrupted)."""
        rest: list[RunningTask] = []
        for running in self.record.running:
            reply = self.tree.nodes.get(running.reply_id) if running.reply_id is not None else None
            if (
                self._turn is None
                and reply is not None
                and reply.status == "running"
                and any(u.wait is not None for u in reply.tool_calls or [])
            ):
                turn = Turn(
                    running.task_id,
                    running.message_id,
                    self._loop.create_future(),
                    queued=False,
                    client_tools=running.client_tools,
                )
                turn.reply_id = reply.id
                turn.delta_head = delta_head(turn.task_id, reply.id)
                turn.parts = [reply.content] if reply.content else []
                turn.usage = turn.usage_base = reply.usage or Usage()
                turn.model = reply.model
                turn.waiting = True
                self._turn = turn
                self._stats.tasks_running += 1
            elif self._turn is not None and running.reply_id is None:
                self._queued.append(
                    Turn(
                        running.task_id,
                        running.message_id,
                        self._loop.create_future(),
                        queued=True,
                        client_tools=running.client_tools,
                    )
                )
            else:
                rest.append(running)
        return rest

    async def _recover_interrupted(self) -> None:
        events: list[Event] = []
        ops: list[Op] = []
        interrupted = self._recover_waiting()
        for running in interrupted:
            if running.reply_id is not None and running.reply_id in self.tree:
                reply = self.tree.nodes[running.reply_id]
                reply.status = "interrupted"
                ops.append(PutMessage.of(self.id, reply))
            events.append(TaskInterrupted(running.task_id))
        ended = [r.task_id for r in interrupted]
        self.record.running = [r for r in self.record.running if r.task_id not in ended]
        if ended:
            self._touch()
            await self._publish(events, ops, ends=ended)
        if self._turn is not None:
            await self._after_decision(self._turn)

    async def _run(self) -> None:
        crash: BaseException | None = None
        env = None
        try:
            while not self._stopping:
                env = None
                env = await self._mailbox.get()
                self.last_activity = self._loop.time()
                reply = env.reply
                try:
                    result = await self._handle(env.command)
                except SessiondError as exc:
                    if reply is not None and not reply.done():
                        reply.set_exception(exc)
                    if isinstance(exc, FencedError):
                        # Another node took the session: what this actor holds in memory is
                        # stale, and the store will take nothing more from it.
                        log.error("session %s moved to another node (lease epoch %d is stale); "
                                  "stopping its actor here", self.id, self.epoch)
                        self._stop("fenced")
                    elif isinstance(exc, StoreClosedError):
                        # What this command changed may not be durable: stop; the next
                        # activation (on a live server) starts from the store.
                        self._stop("store closed")
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
            if env is not None and env.reply is not None and not env.reply.done():
                # Aborted while handling it (the lease was lost): its caller must not wait forever.
                env.reply.set_exception(ActorStoppedError(f"session {self.id} stopped here ({self.stop_reason})"))
            self._teardown()
            self._on_stop(self, crash)

    def _teardown(self) -> None:
        self._stopping = True
        for turn in (self._turn, *self._queued):
            if turn is not None:
                if turn.timer is not None:
                    turn.timer.cancel()
                if turn.task is not None and not turn.task.done():
                    turn.task.cancel()
                if not turn.done.done():
                    turn.done.set_exception(ActorStoppedError())
                    # Retrieved here: a turn whose first commit failed has no waiter.
                    turn.done.exception()
        if self._turn is not None:
            self._stats.tasks_running -= 1
        self._turn = None
        self._queued.clear()
        for env in self._mailbox.close():
            if env.reply is not None and not env.reply.done():
                env.reply.set_exception(ActorStoppedError())
        self.hub.close()

    async def ask(self, command: Command[R]) -> R:
        if self._stopping:
            raise ActorStoppedError()
        if self._guard is not None and not isinstance(command, READS):
            held = await self._guard(self.id)
            if held is None:
                raise UnavailableError("the lease of this session cannot be checked (Redis is unreachable)")
            if not held:
                # Another node may run this session now (Redis lost the lease): stop here,
                # writing nothing more; the caller looks the session up again.
                self.abort("lease lost")
                raise ActorStoppedError(f"this node no longer holds the lease of session {self.id}")
        fut: asyncio.Future[R] = self._loop.create_future()
        self._mailbox.tell(command, fut)
        return await fut

    def tell(self, command: Command[R]) -> None:
        self._mailbox.tell(command)

    async def wait_stopped(self) -> None:
        if self._task is not None:
            await asyncio.wait([self._task])

    # -- dispatch --------------------------------------------------------------------------

    async def _handle(self, cmd: MailboxCommand) -> object:
        match cmd:
            case GetSession():
                return _answer(cmd, self._snapshot())
            case GetMessages():
                return _answer(cmd, self._messages(cmd))
            case GetTree():
                return _answer(cmd, TreeView(self.tree.in_order(), self.tree.active_leaf_id))
            case ListCheckpoints():
                return _answer(cmd, list(self.checkpoints))
            case ExportSession():
                return _answer(cmd, build_export(self.record, self.tree.in_order(), self.checkpoints))
            case Subscribe():
                return _answer(cmd, self._subscribe(cmd.last_event_id))
            case PatchSession():
                return _answer(cmd, await self._patch(cmd))
            case SendMessage():
                return _answer(cmd, await self._send(cmd))
            case EditMessage():
                return _answer(cmd, await self._edit(cmd))
            case RegenerateMessage():
                return _answer(cmd, await self._regenerate(cmd))
            case Navigate():
                return _answer(cmd, await self._navigate(cmd))
            case RestoreCheckpoint():
                return _answer(cmd, await self._restore(cmd))
            case CancelTask():
                return _answer(cmd, await self._cancel())
            case DecideToolCall():
                return _answer(cmd, await self._decide(cmd))
            case SubmitToolResult():
                return _answer(cmd, await self._submit_result(cmd))
            case Passivate():
                return _answer(cmd, await self._passivate(cmd.idle_seconds))
            case ExpireSession():
                return _answer(cmd, await self._expire(cmd))
            # The rest answer None: their effect is the answer.
            case DeleteSession():
                await self._delete()
            case Shutdown():
                await self._shutdown()
            case ToolCalled():
                await self._tool_called(cmd)
            case ToolReturned():
                await self._tool_returned(cmd)
            case ReserveSeqs():
                await self._reserve_seqs(cmd)
            case SaveSummary():
                await self._save_summary(cmd)
            case FoldReply():
                await self._fold_reply(cmd)
            case TurnEnded():
                await self._turn_ended(cmd)
            case WaitExpired():
                await self._wait_expired(cmd)
            case _:
                assert_never(cmd)
        return None

    # -- mutations -------------------------------------------------------------------------

    async def _patch(self, cmd: PatchSession) -> SessionRecord:
        self._check_version(cmd.if_match)
        r = self.record
        retention = r.retention if cmd.retention is msgspec.UNSET else cmd.retention
        temporary = r.temporary if cmd.temporary is msgspec.UNSET else cmd.temporary
        if temporary and retention is not None:
            raise InvalidRequestError("a temporary session has no retention of its own; set one of the two")
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
        if cmd.client_tools is not msgspec.UNSET:
            r.client_tools = list(cmd.client_tools)
        if cmd.link_documents:
            r.documents = [*r.documents, *(d for d in cmd.link_documents if d not in r.documents)]
        if cmd.unlink_documents:
            r.documents = [d for d in r.documents if d not in cmd.unlink_documents]
        if cmd.add_fork is not None:
            r.forks = [*r.forks, cmd.add_fork]
        r.retention, r.temporary = retention, temporary
        self._touch()
        await self._commit([PutSession.of(r)])
        return self._snapshot()

    async def _send(self, cmd: SendMessage) -> TaskHandle:
        if (repeat := self._repeat(cmd)) is not None:
            return repeat
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
        return await self._begin(user, cmd)

    async def _edit(self, cmd: EditMessage) -> TaskHandle:
        if (repeat := self._repeat(cmd)) is not None:
            return repeat
        self._check_version(cmd.if_match)
        self._require_idle()
        node = self._node(cmd.message_id)
        if node.role != "user":
            raise InvalidRequestError("only a user message can be edited; regenerate an answer instead")
        if not cmd.content.strip():
            raise InvalidRequestError("content must not be empty")
        user = Node(new_id("msg"), node.parent_id, "user", cmd.content, utcnow())
        return await self._begin(user, cmd)

    async def _regenerate(self, cmd: RegenerateMessage) -> TaskHandle:
        if (repeat := self._repeat(cmd)) is not None:
            return repeat
        self._check_version(cmd.if_match)
        self._require_idle()
        node = self._node(cmd.message_id)
        if node.role != "assistant" or node.parent_id is None:
            raise InvalidRequestError("only an assistant message can be regenerated")
        return await self._begin(None, cmd, answer_to=node.parent_id)

    async def _navigate(self, cmd: Navigate) -> list[tuple[Node, int, int]]:
        self._check_version(cmd.if_match)
        self._require_idle()
        self._node(cmd.message_id)
        self.tree.active_leaf_id = self.tree.newest_leaf_under(cmd.message_id)
        self.record.active_leaf_id = self.tree.active_leaf_id
        self._touch()
        await self._commit([PutSession.of(self.record)])
        return self._messages(GetMessages(limit=1 << 30)).items

    async def _restore(self, cmd: RestoreCheckpoint) -> TaskHandle | str:
        if cmd.starts_task and (repeat := self._repeat(cmd)) is not None:
            return repeat
        self._check_version(cmd.if_match)
        self._require_idle()
        cp = next((c for c in self.checkpoints if c.id == cmd.checkpoint_id), None)
        if cp is None:
            raise NotFoundError(f"no checkpoint {cmd.checkpoint_id} in this session")
        if cmd.hint is None or not cmd.hint.strip():
            self.tree.active_leaf_id = cp.message_id
            self.record.active_leaf_id = cp.message_id
            self._touch()
            await self._commit([PutSession.of(self.record)])
            return cp.message_id
        # The hint becomes a user turn after the checkpoint, sent to the model as an
        # instruction: the steps before the checkpoint stand as they are, nothing is re-run.
        user = Node(new_id("msg"), cp.message_id, "user", cmd.hint, utcnow(), hint=cmd.hint)
        return await self._begin(user, cmd)

    def _repeat(self, cmd: TaskCommand[object]) -> TaskHandle | None:
        """The task a repeat of an idempotent request answers with (None: not a repeat)."""
        request = requests.find(self.record, cmd)
        if request is None:
            if cmd.repeat_only:
                raise NotFoundError("no earlier request in this session has this idempotency key")
            return None
        turn = next((t for t in (self._turn, *self._queued) if t is not None and t.task_id == request.task_id), None)
        if turn is not None:
            done = turn.done
        else:
            done = self._loop.create_future()
            done.set_result(requests.outcome(self.tree, request))
        sub = None
        if cmd.stream:
            cursor = request.cursor if cmd.last_event_id is None else max(request.cursor, cmd.last_event_id)
            if turn is None:
                # Ended: the stream replays what the log still holds and closes at its end.
                end = request.end_seq if request.end_seq is not None else self.log.last_seq
                self.hub.task_end_seq.setdefault(request.task_id, end)
                cursor = min(cursor, end)
            sub = self.hub.subscribe(cursor, task_id=request.task_id, on_reset=self.reset_cursor)
        return TaskHandle(request.task_id, request.message_id, sub, done, request.cursor, repeated=True)

    async def _begin(self, user: Node | None, cmd: TaskCommand[object], *, answer_to: str | None = None) -> TaskHandle:
        """Add ``user`` (or answer ``answer_to`` again), persist, and start or queue its task."""
        stream = cmd.stream
        ops: list[Op] = []
        queued = self._turn is not None
        if user is not None:
            self.tree.add(user, activate=not queued)
            ops.append(PutMessage.of(self.id, user))
            answer_to = user.id
        assert answer_to is not None
        # Only a message declares tools for its own task (edit, regenerate and restore do not).
        client_tools = cmd.client_tools if isinstance(cmd, SendMessage) else None
        turn = Turn(new_id("tsk"), answer_to, self._loop.create_future(), queued=queued, client_tools=client_tools)
        # Remembered in the record, which commits with the user message below.
        requests.remember(self.record, cmd, turn.task_id, answer_to, self.log.last_seq)
        if queued:
            self._queued.append(turn)
            self.record.running = [*self.record.running, RunningTask(turn.task_id, answer_to, None, turn.client_tools)]
            self._touch()
            await self._commit([*ops, PutSession.of(self.record)])
            cursor = self.log.last_seq
            sub = self.hub.subscribe(cursor, task_id=turn.task_id, on_reset=self.reset_cursor) if stream else None
            return TaskHandle(turn.task_id, answer_to, sub, turn.done, cursor)
        cursor = self.log.last_seq
        await self._start_turn(turn, ops)
        sub = self.hub.subscribe(cursor, task_id=turn.task_id, on_reset=self.reset_cursor) if stream else None
        return TaskHandle(turn.task_id, answer_to, sub, turn.done, cursor)

    async def _delete(self) -> None:
        await self._stop_turn()
        await self._remove()

    async def _remove(self) -> None:
        """Delete the session from the store and stop (DELETE, and retention's delete alike)."""
        # A session.deleted webhook is durable with the delete itself, or neither is.
        deliveries = self._outbox.for_deletion(self.record) if self._outbox is not None else []
        await self._commit([RemoveSession(self.id), *deliveries])
        if deliveries and self._outbox is not None:
            self._outbox.wake()
        self._stop("deleted")

    async def _passivate(self, idle_seconds: float) -> bool:
        # The sweeper saw an idle actor; something may have arrived since.
        if not self._parked_or_none() or self._queued or self.hub.subscribers or len(self._mailbox):
            return False
        self.record.seq_reserved = self._next_seq - 1
        await self._commit([PutSession.of(self.record)])
        self._stop("passivated")
        return True

    async def _expire(self, cmd: ExpireSession) -> Expiry:
        """Retention, if still due: never while a task runs or waits, a stream is open or a
        command waits behind this one (the sweeper asks again at a later pass)."""
        if self._turn is not None or self._queued or self.hub.subscribers or len(self._mailbox):
            return Expiry("busy")
        r = self.record
        rule = effective(temporary=r.temporary, own=r.retention, configured=cmd.configured,
                         temporary_ttl=cmd.temporary_ttl)
        if rule is None or not is_due(rule, r.last_active_at, len(self.tree), time.time()):
            return Expiry("kept")
        if rule.action == "delete":
            await self._remove()
            return Expiry("deleted", r)
        return Expiry("trimmed", removed=await trim(self, rule.keep_latest or 0))

    async def _shutdown(self) -> None:
        # A task waiting on tool calls stays as it is in the store: it waits on after a restart,
        # and so do the tasks queued behind it.
        if not (self._turn is not None and self._parked_or_none()):
            queued = self._queued_interrupt(cancelled=False)
            turn = await self._stop_turn()
            if turn is not None:
                await self._finish(turn, "interrupted", "the server is shutting down")
            await self._end_queued(queued)
        self.record.seq_reserved = self._next_seq - 1
        await self._commit([PutSession.of(self.record)])
        self._stop("shutdown")

    def abort(self, reason: StopReason) -> None:
        """Stop now, writing nothing more (the session's lease is gone)."""
        self.stop_reason = reason
        if self._task is not None:
            self._task.cancel()

    def _stop(self, reason: StopReason) -> None:
        self._stopping = True
        self.stop_reason = reason

    # -- the running turn ------------------------------------------------------------------

    def _current(self, task_id: str) -> Turn | None:
        """The running turn, if it is ``task_id`` (a message of an ended turn is ignored)."""
        turn = self._turn
        return turn if turn is not None and turn.task_id == task_id else None

    async def _reserve_seqs(self, cmd: ReserveSeqs) -> None:
        """Durably reserve the next block of ids before handing any of them out."""
        if self._current(cmd.task_id) is None or self._has_ids(cmd.count):
            return
        self.record.seq_reserved = self._next_seq + max(self._settings.seq_block, cmd.count)
        await self._commit([PutSession.of(self.record)])

    def _fold(self, turn: Turn) -> None:
        self._mailbox.tell_internal(FoldReply(turn.task_id))

    async def _fold_reply(self, cmd: FoldReply) -> None:
        turn = self._current(cmd.task_id)
        if turn is None:
            return  # it ended meanwhile, with its whole text
        if self._guard is not None:
            held = await self._guard(self.id)
            if held is None:
                # Redis cannot say: the next fold (or the end) writes the text.
                turn.fold_at = self._loop.time() + self._settings.fold_seconds
                return
            if not held:
                self.abort("lease lost")  # a fold must never overwrite what the new owner wrote
                return
        # A copy: the live reply keeps its content empty until the end, as readers know it.
        reply = msgspec.structs.replace(self.tree.nodes[turn.reply_id], content=turn.text())
        await self._commit([PutMessage.of(self.id, reply)])
        if self._current(cmd.task_id) is turn:
            turn.fold_at = self._loop.time() + self._settings.fold_seconds

    async def _start_turn(self, turn: Turn, ops: list[Op]) -> None:
        user = self.tree.nodes[turn.user_id]
        if turn.queued and self.tree.active_leaf_id not in (None, user.parent_id):
            # A queued message: it follows the answer that was running when its turn came.
            self.tree.move(user.id, self.tree.active_leaf_id)
            ops = [PutMessage.of(self.id, user)]
        reply = Node(new_id("msg"), turn.user_id, "assistant", "", utcnow(), status="running", task_id=turn.task_id)
        turn.reply_id = reply.id
        turn.delta_head = delta_head(turn.task_id, reply.id)
        self.tree.add(reply)
        self.record.active_leaf_id = reply.id
        running = [r for r in self.record.running if r.task_id != turn.task_id]
        self.record.running = [RunningTask(turn.task_id, turn.user_id, reply.id, turn.client_tools), *running]
        # Reserve ids for this turn's deltas in the same commit that makes it durable.
        self.record.seq_reserved = max(self.record.seq_reserved, self._next_seq + self._settings.seq_block)
        self._touch()
        self._turn = turn
        if self._settings.fold_seconds > 0:
            turn.fold_at = self._loop.time() + self._settings.fold_seconds
        self._stats.tasks_started += 1
        self._stats.tasks_running += 1
        await self._publish([TaskStarted(turn.task_id, turn.user_id, reply.id)], [*ops, PutMessage.of(self.id, reply)])
        request = model_request(
            self.record, self.tree, turn.user_id, client_tools=turn.client_tools, summaries=self.summaries
        )
        turn.task = self._loop.create_task(
            turn.run(self._provider, request, self._journal), name=f"turn:{turn.task_id}"
        )

    async def _save_summary(self, cmd: SaveSummary) -> None:
        if self._current(cmd.task_id) is None:
            return
        await self._commit([self.summaries.save(self.id, cmd.summary, self.tree)])

    async def _tool_called(self, cmd: ToolCalled) -> None:
        turn = self._current(cmd.task_id)
        if turn is None:
            return
        reply = self.tree.nodes[turn.reply_id]
        expires = time.time() + self._settings.wait_timeout if cmd.wait is not None else None
        use = ToolUse(cmd.call_id, cmd.name, cmd.arguments, wait=cmd.wait, expires_at=expires)
        reply.tool_calls = [*(reply.tool_calls or []), use]
        events: list[Event] = [ToolCall(turn.task_id, cmd.call_id, cmd.name, cmd.arguments, cmd.wait == "client")]
        if cmd.wait is None:
            await self._publish(events)
            return
        # A call that waits is durable with its message before anyone is told of it.
        if cmd.wait == "approval":
            events.append(ToolApprovalRequested(turn.task_id, cmd.call_id, cmd.name, cmd.arguments, expires))
        reply.content = turn.text()
        # Give back the unused ids with this commit: the turn may stop here to wait, and a
        # restart must not take them for lost deltas (a later delta reserves a block again).
        self.record.seq_reserved = self._next_seq - 1
        await self._publish(events, [PutMessage.of(self.id, reply)])

    async def _tool_returned(self, cmd: ToolReturned) -> None:
        """A tool result is durable at once, with a checkpoint on the answer being written."""
        turn = self._current(cmd.task_id)
        if turn is None:
            return
        reply = self.tree.nodes[turn.reply_id]
        for use in reply.tool_calls or []:
            if use.call_id == cmd.call_id:
                use.output, use.is_error, use.wait = cmd.output, cmd.is_error, None
        reply.content = turn.text()
        cp = Checkpoint(new_id("ckp"), reply.id, utcnow(), f"tool:{cmd.name}")
        self.checkpoints.append(cp)
        await self._publish(
            [ToolResult(turn.task_id, cmd.call_id, cmd.output, cmd.is_error), CheckpointCreated(cp.id, reply.id)],
            [PutMessage.of(self.id, reply), PutCheckpoint.of(self.id, cp)],
        )

    async def _turn_ended(self, cmd: TurnEnded) -> None:
        turn = self._current(cmd.task_id)
        if turn is None:
            return  # already ended by a cancel
        if cmd.waiting:
            await self._park(turn)
            return
        await self._finish(turn, "failed" if cmd.error else "completed", cmd.error)

    # -- tool calls that wait for a person or the frontend --------------------------------

    async def _park(self, turn: Turn) -> None:
        """The turn stopped on calls that wait: keep what it wrote, durably, and wait."""
        turn.task = None
        turn.waiting = True
        reply = self.tree.nodes[turn.reply_id]
        reply.content = turn.text()
        reply.usage = turn.usage
        reply.model = turn.model
        # Nothing streams while it waits: no id above the last one shown is handed out, so a
        # restart (even after a kill) finds no hole of lost deltas to reset readers across.
        self.record.seq_reserved = self._next_seq - 1
        self._touch()
        await self._commit([PutMessage.of(self.id, reply), PutSession.of(self.record)])
        await self._after_decision(turn)

    def _waiting_call(self, call_id: str, kind: ToolWait) -> tuple[Turn, Node, ToolUse]:
        turn = self._turn
        reply = self.tree.nodes.get(turn.reply_id) if turn is not None else None
        use = next((u for u in (reply.tool_calls or []) if u.call_id == call_id), None) if reply else None
        if turn is None or reply is None or use is None:
            raise NotFoundError(f"no tool call {call_id} waits in this session")
        if use.wait != kind:
            if use.wait is None or use.wait == "approved":
                raise ConflictError(f"the tool call {call_id} was decided already")
            wanted = "approval" if use.wait == "approval" else "the frontend's result"
            raise ConflictError(f"the tool call {call_id} waits for {wanted}")
        return turn, reply, use

    async def _decide(self, cmd: DecideToolCall) -> str:
        turn, reply, use = self._waiting_call(cmd.call_id, "approval")
        events: list[Event] = [ToolApprovalDecided(turn.task_id, use.call_id, cmd.approve, cmd.reason)]
        if cmd.approve:
            use.wait = "approved"  # it runs when the turn goes on (after a restart too)
        else:
            use.wait = None
            use.output = "The user denied this tool call." + (f" Reason: {cmd.reason}" if cmd.reason else "")
            use.is_error = True
            events.append(ToolResult(turn.task_id, use.call_id, use.output, True))
        self._touch()
        await self._publish(events, [PutMessage.of(self.id, reply)])
        await self._after_decision(turn)
        return turn.task_id

    async def _submit_result(self, cmd: SubmitToolResult) -> str:
        turn, reply, use = self._waiting_call(cmd.call_id, "client")
        use.wait, use.output, use.is_error = None, cmd.output, cmd.is_error
        self._touch()
        await self._publish(
            [ToolResult(turn.task_id, use.call_id, cmd.output, cmd.is_error)], [PutMessage.of(self.id, reply)]
        )
        await self._after_decision(turn)
        return turn.task_id

    async def _after_decision(self, turn: Turn) -> None:
        """Once a stopped turn has every call decided, run it on from the stored state; until
        then, (re)arm the timer of its earliest wait."""
        if not turn.waiting or turn.task is not None:
            return  # still running its round: it stops (and comes back here) when that ends
        if turn.timer is not None:
            turn.timer.cancel()
            turn.timer = None
        reply = self.tree.nodes[turn.reply_id]
        open_ = [u for u in reply.tool_calls or [] if u.wait in ("approval", "client")]
        if open_:
            deadline = min(u.expires_at or time.time() + self._settings.wait_timeout for u in open_)
            turn.timer = self._loop.call_later(
                max(0.0, deadline - time.time()), self._mailbox.tell_internal, WaitExpired(turn.task_id)
            )
            return
        turn.waiting = False
        turn.usage_base = turn.usage
        if self._settings.fold_seconds > 0:
            turn.fold_at = self._loop.time() + self._settings.fold_seconds  # it streams again
        resume = Resume(reply.content, [msgspec.structs.replace(u) for u in reply.tool_calls or []])
        request = model_request(
            self.record, self.tree, turn.user_id, client_tools=turn.client_tools, resume=resume,
            summaries=self.summaries,
        )
        turn.task = self._loop.create_task(
            turn.run(self._provider, request, self._journal), name=f"turn:{turn.task_id}"
        )

    async def _wait_expired(self, cmd: WaitExpired) -> None:
        turn = self._current(cmd.task_id)
        if turn is None or not turn.waiting:
            return
        turn.timer = None
        reply = self.tree.nodes[turn.reply_id]
        now = time.time()
        expired = [u for u in reply.tool_calls or [] if u.wait in ("approval", "client") and (u.expires_at or 0) <= now]
        if not expired:
            await self._after_decision(turn)  # decided meanwhile, or not yet due
            return
        use = expired[0]
        waited = "approval" if use.wait == "approval" else "its result from the frontend"
        await self._finish(
            turn,
            "failed",
            f"the tool call {use.name} ({use.call_id}) waited for {waited} longer than"
            f" {self._settings.wait_timeout:g}s",
        )

    async def _finish(self, turn: Turn, status: TurnStatus, error: str | None) -> None:
        """End the running turn: fold its deltas into the reply, record, announce, go on."""
        if turn.timer is not None:
            turn.timer.cancel()
            turn.timer = None
        turn.waiting = False
        reply = self.tree.nodes[turn.reply_id]
        for use in reply.tool_calls or []:
            use.wait = None  # an undecided call stays without an output
        reply.content = turn.text()
        reply.status = status
        reply.usage = turn.usage
        reply.model = turn.model
        self.record.usage = self.record.usage + turn.usage
        self.record.running = [r for r in self.record.running if r.task_id != turn.task_id]
        if error is not None:
            for request in self.record.requests:
                if request.task_id == turn.task_id:
                    request.error = error
        self._touch()
        ops: list[Op] = [PutMessage.of(self.id, reply)]
        events: list[Event] = [MessageCompleted(turn.task_id, reply, turn.usage, turn.model)]
        match status:
            case "completed":
                cp = Checkpoint(new_id("ckp"), reply.id, utcnow(), "answer")
                self.checkpoints.append(cp)
                ops.append(PutCheckpoint.of(self.id, cp))
                events += [CheckpointCreated(cp.id, reply.id), TaskCompleted(turn.task_id)]
            case "failed":
                events.append(TaskFailed(turn.task_id, error or "the model failed"))
            case "cancelled":
                events.append(TaskCancelled(turn.task_id))
            case "interrupted":
                events.append(TaskInterrupted(turn.task_id))
            case _:
                assert_never(status)
        self._turn = None
        self._stats.tasks_running -= 1
        await self._publish(events, ops, ends=[turn.task_id])
        if not turn.done.done():
            index, count = self.tree.sibling_position(reply.id)
            turn.done.set_result(TurnOutcome(turn.task_id, status, reply, turn.usage, turn.model, error, index, count))
        if self._queued and not self._stopping:
            await self._start_turn(self._queued.popleft(), [])

    async def _stop_turn(self) -> Turn | None:
        turn = self._turn
        if turn is not None and turn.task is not None and not turn.task.done():
            turn.task.cancel()
            try:
                await turn.task
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
        return turn

    async def _cancel(self) -> str:
        if self._turn is None:
            raise ConflictError("no task is running in this session")
        queued = self._queued_interrupt(cancelled=True)
        turn = await self._stop_turn()
        assert turn is not None
        await self._finish(turn, "cancelled", None)
        await self._end_queued(queued)
        return turn.task_id

    def _queued_interrupt(self, *, cancelled: bool) -> list[Event]:
        """Queued turns die with a cancel or a shutdown; their user turns stay in the tree.
        Returns the terminal event of each, which ``_end_queued`` publishes."""
        queued = list(self._queued)
        self._queued.clear()
        ids = {t.task_id for t in queued}
        self.record.running = [r for r in self.record.running if r.task_id not in ids]
        ends: list[Event] = []
        for turn in queued:
            ends.append(TaskCancelled(turn.task_id) if cancelled else TaskInterrupted(turn.task_id))
            if not turn.done.done():
                reason: TurnStatus = "cancelled" if cancelled else "interrupted"
                node = self.tree.nodes[turn.user_id]
                turn.done.set_result(TurnOutcome(turn.task_id, reason, node, Usage(), None))
        return ends

    async def _end_queued(self, ends: list[Event]) -> None:
        """Every queued task's stream ends with its own terminal event, here and on other nodes."""
        if ends:
            self._touch()
            await self._publish(ends, ends=[cast(str, getattr(e, "task_id")) for e in ends])  # noqa: B009


class _ActorJournal:
    """The actor as its running turn sees it (turn.Journal): nothing else of it is reachable."""

    __slots__ = ("_actor", "deltas", "has_ids")

    def __init__(self, actor: SessionActor) -> None:
        self._actor = actor
        # Bound once: these two run for every batch of tokens, so the turn calls the actor's own
        # methods.
        self.has_ids: Callable[[int], bool] = actor._has_ids
        self.deltas: Callable[[Turn, list[str]], None] = actor._emit_deltas

    async def record(self, command: ToolCalled | ToolReturned | ReserveSeqs | SaveSummary) -> None:
        fut: asyncio.Future[None] = self._actor._loop.create_future()
        self._actor._mailbox.tell_internal(command, fut)
        await fut

    def end(self, command: TurnEnded) -> None:
        self._actor._mailbox.tell_internal(command)
