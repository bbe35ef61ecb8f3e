"""TurnRunner: a session's turns from start to end, the part of SessionActor that runs them.

A turn starts (``_start_turn``: the reply node, the task's start and the first id block in one
commit), streams (ids reserved ahead, text folded into the store every ``fold_seconds``), calls
tools through the mailbox (``_tool_called``, ``_tool_returned``) and ends once
(``_finish``), after which the next queued turn starts. Cancel and shutdown end it early and
give every queued task its own terminal event. Tool calls that wait for a person or the
frontend are waits.py, on top of this; the mailbox loop and the commands are actor.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Literal, assert_never, cast

import msgspec

from actors.core.commands import (
    FoldReply,
    ReserveSeqs,
    SaveSummary,
    ToolCalled,
    ToolReturned,
)
from actors.core.errors import (
    ConflictError,
)
from actors.core.events import (
    CheckpointCreated,
    Event,
    MessageCompleted,
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskInterrupted,
    TaskStarted,
    ToolApprovalRequested,
    ToolCall,
    ToolResult,
    delta_head,
)
from actors.core.ids import new_id, utcnow
from actors.core.records import (
    Checkpoint,
    KeepEvents,
    Op,
    PutCheckpoint,
    PutMessage,
    PutSession,
    RunningTask,
)
from actors.core.replies import TurnOutcome, TurnStatus
from actors.core.tree import Node, ToolUse, Usage
from actors.ports import Provider
from actors.session.context import model_request
from actors.session.mailbox import Mailbox
from actors.session.state import SessionState
from actors.session.turn import Journal, Turn

__all__ = ["StopReason", "TurnRunner"]

StopReason = Literal["", "crashed", "passivated", "deleted", "shutdown", "lease lost", "fenced", "store closed"]


class TurnRunner(SessionState):
    """The running turn of one session, and the queue behind it (see the module docstring)."""

    # Set by SessionActor.__init__ (actors/session/actor.py).
    _guard: Callable[[str], Awaitable[bool | None]] | None
    _provider: Provider
    _mailbox: Mailbox
    _task: asyncio.Task[None] | None
    _stopping: bool
    stop_reason: StopReason

    def _journal(self) -> Journal:
        """The port a turn that starts now runs through (SessionActor's)."""
        raise NotImplementedError

    def abort(self, reason: StopReason) -> None:
        """Stop now, writing nothing more (the session's lease is gone)."""
        self.stop_reason = reason
        if self._task is not None:
            self._task.cancel()

    def _stop(self, reason: StopReason) -> None:
        self._stopping = True
        self.stop_reason = reason

    def _current(self, task_id: str) -> Turn | None:
        """The running turn, if it is ``task_id`` (a message of an ended turn is ignored)."""
        turn = self._turn
        return turn if turn is not None and turn.task_id == task_id else None

    async def _reserve_seqs(self, cmd: ReserveSeqs) -> None:
        """Durably reserve the next block of ids before handing any of them out."""
        if self._current(cmd.task_id) is None or self._has_ids(cmd.count):
            return
        keep = self._reserve(self._next_seq + max(self._settings.seq_block, cmd.count))
        await self._commit([*keep, PutSession.of(self.record)])

    def _reserve(self, through: int) -> list[Op]:
        """Reserve event ids up to ``through`` (the caller commits the record). Once in 2 x
        seq_block ids it also gives the op that removes, in the same commit, the durable events
        no activation reads any more: the store keeps those a replay after a restart needs."""
        reserved = self.record.seq_reserved
        self.record.seq_reserved = max(reserved, through)
        block = 2 * self._settings.seq_block
        if self.record.seq_reserved // block == reserved // block:
            return []
        self.record.events_bounded = True  # with the same commit: see SessionRecord
        return [KeepEvents(self.id, max(1, self._settings.replay_events))]

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
        ops = [*ops, *self._reserve(self._next_seq + self._settings.seq_block)]
        self._touch()
        self._turn = turn
        if self._settings.fold_seconds > 0:
            turn.fold_at = self._loop.time() + self._settings.fold_seconds
        self._stats.tasks_started += 1
        self._stats.tasks_running += 1
        request = model_request(
            self.record, self.tree, turn.user_id, client_tools=turn.client_tools, summaries=self.summaries,
            prompts=self.prompts,
        )
        # The model is asked while the start commits, and its answer waits for the commit
        # (``started``): nothing of it is shown or stored before the question is durable, and
        # the first token comes after the longer of the two, not after both in turn.
        started: asyncio.Future[None] = self._loop.create_future()
        turn.task = self._loop.create_task(
            turn.run(self._provider, request, self._journal(), started), name=f"turn:{turn.task_id}"
        )
        try:
            await self._publish(
                [TaskStarted(turn.task_id, turn.user_id, reply.id)], [*ops, PutMessage.of(self.id, reply)]
            )
        except BaseException:
            turn.task.cancel()  # nothing of the turn is durable: the actor stops (see its _run)
            raise
        started.set_result(None)

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
