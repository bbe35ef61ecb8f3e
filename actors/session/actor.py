"""SessionActor: one asyncio task per live session, the only code that changes it.

The actor owns the message tree, the numbered event log, the subscriber hub and at most one
running model turn. Everything else puts a command in its mailbox and awaits the reply. This
module is the mailbox loop, the life cycle and the dispatch; the handlers are its bases, one
concern each: SessionState (state.py: the data, and the publishing of events), TurnRunner
(turns.py: a turn from start to end), ToolWaits (waits.py: tool calls that wait) and
ConversationCommands (conversation.py: the commands that change the tree).

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
from typing import TypeVar, assert_never

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
    ToolCalled,
    ToolReturned,
    TurnEnded,
    WaitExpired,
)
from actors.core.errors import (
    ActorCrashedError,
    ActorStoppedError,
    FencedError,
    SessiondError,
    StoreClosedError,
    UnavailableError,
)
from actors.core.events import (
    Event,
    FrameEncoder,
    TaskInterrupted,
)
from actors.core.export import build_export
from actors.core.records import (
    LoadedSession,
    Op,
    PutMessage,
    PutSession,
    RemoveSession,
    Stats,
)
from actors.core.replies import Expiry, TreeView
from actors.core.retention import effective, is_due
from actors.core.webhooks import Outbox
from actors.ports import EventSink, Provider, SessionStore
from actors.session.conversation import ConversationCommands
from actors.session.mailbox import Mailbox
from actors.session.state import ActorSettings
from actors.session.trim import trim
from actors.session.turn import Journal, Turn
from actors.session.turns import StopReason

__all__ = ["ActorSettings", "SessionActor", "StopReason"]

log = logging.getLogger("sessiond.actor")

R = TypeVar("R")

def _answer(command: Command[R], value: R) -> R:
    """``value`` as the reply to ``command``: mypy checks it is the command's own R."""
    return value


class SessionActor(ConversationCommands):
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
        self._task = None
        self._stopping = False
        self.stop_reason = ""
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

    def is_quiet(self) -> bool:
        """Idle now, and no turn at all, not even one parked on tool calls (a request may be
        waiting for its end): what the registry may passivate early (``Registry._evict``)."""
        return self._turn is None and self.is_idle(self.last_activity, 0)

    def _journal(self) -> Journal:
        """The port of a turn that starts now: one per turn, held by its task alone. Held by
        the actor too, it would keep the two in a cycle, and a stopped actor (its replay log, its
        tree) would wait for a full collection, which a busy server makes rarely
        (``[server] gc_young_objects``), instead of going when its last reference does."""
        return _ActorJournal(self)

    def shed_replay(self, max_bytes: int) -> int:
        """Keep at most ``max_bytes`` of this session's replay log, never its newest
        ``KEEP_NEWEST`` events (the registry's bound on all live logs together); the bytes
        dropped. A stream resuming from before what is left is told ``stream.reset``, as past
        ``event_retention_bytes``."""
        return self.log.shed(max_bytes)

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
