"""The model turn of a session: its data, and the part of SessionActor that runs it.

A turn is a task of the session (queued, or running as the actor's child task). While it
runs it is the only producer of the session's events: it appends deltas to the log
synchronously, and publishes tool calls and results (durable, with a checkpoint each); its
end goes through the mailbox like every other change to the tree.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING

import msgspec

from actors.core.commands import TurnEnded
from actors.core.errors import ConflictError
from actors.core.events import (
    CheckpointCreated,
    Event,
    EventLog,
    MessageCompleted,
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskInterrupted,
    TaskStarted,
    ToolCall,
    ToolResult,
    delta_data,
    delta_head,
)
from actors.core.ids import new_id, utcnow
from actors.core.model import ChatMessage, Chunk, ModelRequest, ToolCallChunk, ToolResultChunk
from actors.core.records import Checkpoint, Op, PutCheckpoint, PutMessage, PutSession, RunningTask, SessionRecord, Stats
from actors.core.tree import MessageTree, Node, ToolUse, Usage
from actors.ports import Provider
from actors.session.fanout import Hub, Subscription
from actors.session.mailbox import Mailbox
from actors.store.base import Store

if TYPE_CHECKING:
    from collections.abc import Sequence

    from actors.session.actor import ActorSettings, EventSink

__all__ = ["TaskHandle", "TurnOutcome", "TurnRunner"]

log = logging.getLogger("sessiond.actor")


class TurnOutcome(msgspec.Struct, frozen=True):
    task_id: str
    status: str  # completed | failed | cancelled | interrupted
    message: Node
    usage: Usage
    model: str | None
    error: str | None = None
    sibling_index: int = 0
    sibling_count: int = 1


class TaskHandle:
    """The reply to a command that starts (or queues) a task."""

    __slots__ = ("cursor", "done", "message_id", "subscription", "task_id")

    def __init__(
        self,
        task_id: str,
        message_id: str,
        subscription: Subscription | None,
        done: asyncio.Future[TurnOutcome],
        cursor: int = 0,
    ) -> None:
        self.task_id = task_id
        self.message_id = message_id
        self.subscription = subscription
        self.done = done
        self.cursor = cursor  # the event id just before this task's events


class _Turn:
    """A task in this session: queued, or running as the actor's child."""

    __slots__ = ("delta_head", "done", "model", "parts", "queued", "reply_id", "task", "task_id", "usage", "user_id")

    def __init__(self, task_id: str, user_id: str, done: asyncio.Future[TurnOutcome]) -> None:
        self.task_id = task_id
        self.user_id = user_id
        self.reply_id = ""
        self.delta_head = b""  # the data of this reply's deltas up to their text
        self.parts: list[str] = []
        self.usage = Usage()
        self.model: str | None = None
        self.task: asyncio.Task[None] | None = None
        self.done = done
        self.queued = False


class TurnRunner:
    """The turn half of SessionActor (a mixin: the state it uses is the actor's own)."""

    id: str
    record: SessionRecord
    tree: MessageTree
    checkpoints: list[Checkpoint]
    log: EventLog
    hub: Hub
    _store: Store
    _provider: Provider
    _settings: ActorSettings
    _stats: Stats
    _sink: EventSink | None
    _mailbox: Mailbox
    _turn: _Turn | None
    _queued: deque[_Turn]
    _stopping: bool
    _next_seq: int
    _loop: asyncio.AbstractEventLoop

    async def _publish(self, events: Sequence[Event], ops: Sequence[Op] = (), *, ends: Sequence[str] = ()) -> list[int]:
        raise NotImplementedError

    def _touch(self) -> None:
        raise NotImplementedError

    def _emit_delta(self, turn: _Turn, delta: str) -> None:
        seq = self._next_seq
        self._next_seq = seq + 1
        data = delta_data(turn.delta_head, delta)
        self.log.append(seq, "message.delta", data)
        if self._sink is not None:
            self._sink(self.id, seq, "message.delta", data, None)
        self._stats.events += 1
        self.hub.notify()

    async def _reserve_more(self) -> None:
        """Durably reserve the next block of ids before handing any of them out."""
        self.record.seq_reserved = self._next_seq + self._settings.seq_block
        await self._store.commit([PutSession.of(self.record)])

    async def _start_turn(self, turn: _Turn, ops: list[Op]) -> None:
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
        self.record.running = [RunningTask(turn.task_id, turn.user_id, reply.id), *running]
        # Reserve ids for this turn's deltas in the same commit that makes it durable.
        self.record.seq_reserved = max(self.record.seq_reserved, self._next_seq + self._settings.seq_block)
        self._touch()
        self._turn = turn
        self._stats.tasks_started += 1
        self._stats.tasks_running += 1
        await self._publish([TaskStarted(turn.task_id, turn.user_id, reply.id)], [*ops, PutMessage.of(self.id, reply)])
        turn.task = self._loop.create_task(self._turn_main(turn), name=f"turn:{turn.task_id}")

    def _model_request(self, user_id: str) -> ModelRequest:
        messages: list[ChatMessage] = []
        if self.record.system_prompt:
            messages.append(ChatMessage("system", self.record.system_prompt))
        for node in self.tree.path_to(user_id):
            if node.hint is not None:
                messages.append(ChatMessage("system", f"Instruction for the next answer: {node.hint}"))
                continue
            for use in node.tool_calls or []:
                if use.output is not None:
                    messages.append(ChatMessage("system", f"Result of tool {use.name}({use.arguments}): {use.output}"))
            if node.content:
                messages.append(ChatMessage(node.role, node.content))
        r = self.record
        return ModelRequest(
            messages=messages,
            tools=list(r.tools),
            session_id=r.id,
            agent_id=r.agent_id,
            documents=list(r.documents),
            end_user_id=r.end_user_id,
        )

    async def _turn_main(self, turn: _Turn) -> None:
        """The model turn: stream chunks into the log; report the end through the mailbox."""
        error: str | None = None
        try:
            async for item in self._provider.stream(self._model_request(turn.user_id)):
                match item:
                    case Chunk():
                        if item.delta:
                            if self._next_seq > self.record.seq_reserved:
                                await self._reserve_more()
                            turn.parts.append(item.delta)
                            self._emit_delta(turn, item.delta)
                        if item.usage is not None:
                            turn.usage = item.usage
                        if item.model is not None:
                            turn.model = item.model
                    case ToolCallChunk():
                        await self._tool_call(turn, item)
                    case ToolResultChunk():
                        await self._tool_result(turn, item)
        except asyncio.CancelledError:
            raise  # cancel or shutdown: the actor ends the turn itself
        except Exception as exc:
            log.warning("turn %s failed: %s", turn.task_id, exc)
            error = f"{type(exc).__name__}: {exc}"
        self._mailbox.tell_internal(TurnEnded(turn.task_id, error))

    async def _tool_call(self, turn: _Turn, item: ToolCallChunk) -> None:
        reply = self.tree.nodes[turn.reply_id]
        reply.tool_calls = [*(reply.tool_calls or []), ToolUse(item.call_id, item.name, item.arguments)]
        await self._publish([ToolCall(turn.task_id, item.call_id, item.name, item.arguments)])

    async def _tool_result(self, turn: _Turn, item: ToolResultChunk) -> None:
        """A tool result is durable at once, with a checkpoint on the answer being written."""
        reply = self.tree.nodes[turn.reply_id]
        for use in reply.tool_calls or []:
            if use.call_id == item.call_id:
                use.output, use.is_error = item.output, item.is_error
        reply.content = "".join(turn.parts)
        cp = Checkpoint(new_id("ckp"), reply.id, utcnow(), f"tool:{item.name}")
        self.checkpoints.append(cp)
        await self._publish(
            [ToolResult(turn.task_id, item.call_id, item.output, item.is_error), CheckpointCreated(cp.id, reply.id)],
            [PutMessage.of(self.id, reply), PutCheckpoint.of(self.id, cp)],
        )

    async def _turn_ended(self, cmd: TurnEnded) -> None:
        turn = self._turn
        if turn is None or turn.task_id != cmd.task_id:
            return  # already ended by a cancel
        await self._finish(turn, "failed" if cmd.error else "completed", cmd.error)

    async def _finish(self, turn: _Turn, status: str, error: str | None) -> None:
        """End the running turn: fold its deltas into the reply, record, announce, go on."""
        reply = self.tree.nodes[turn.reply_id]
        reply.content = "".join(turn.parts)
        reply.status = status
        reply.usage = turn.usage
        reply.model = turn.model
        self.record.usage = self.record.usage + turn.usage
        self.record.running = [r for r in self.record.running if r.task_id != turn.task_id]
        self._touch()
        ops: list[Op] = [PutMessage.of(self.id, reply)]
        events: list[Event] = [MessageCompleted(turn.task_id, reply, turn.usage, turn.model)]
        if status == "completed":
            cp = Checkpoint(new_id("ckp"), reply.id, utcnow(), "answer")
            self.checkpoints.append(cp)
            ops.append(PutCheckpoint.of(self.id, cp))
            events += [CheckpointCreated(cp.id, reply.id), TaskCompleted(turn.task_id)]
        elif status == "failed":
            events.append(TaskFailed(turn.task_id, error or "the model failed"))
        elif status == "cancelled":
            events.append(TaskCancelled(turn.task_id))
        else:
            events.append(TaskInterrupted(turn.task_id))
        self._turn = None
        self._stats.tasks_running -= 1
        await self._publish(events, ops, ends=[turn.task_id])
        if not turn.done.done():
            index, count = self.tree.sibling_position(reply.id)
            turn.done.set_result(TurnOutcome(turn.task_id, status, reply, turn.usage, turn.model, error, index, count))
        if self._queued and not self._stopping:
            await self._start_turn(self._queued.popleft(), [])

    async def _stop_turn(self) -> _Turn | None:
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
        self._queued_interrupt(cancelled=True)
        turn = await self._stop_turn()
        assert turn is not None
        await self._finish(turn, "cancelled", None)
        return turn.task_id

    def _queued_interrupt(self, *, cancelled: bool) -> None:
        """Queued turns die with a cancel or a shutdown; their user turns stay in the tree."""
        queued = list(self._queued)
        self._queued.clear()
        ids = {t.task_id for t in queued}
        self.record.running = [r for r in self.record.running if r.task_id not in ids]
        for turn in queued:
            if not turn.done.done():
                reason = "cancelled" if cancelled else "interrupted"
                node = self.tree.nodes[turn.user_id]
                turn.done.set_result(TurnOutcome(turn.task_id, reason, node, Usage(), None))
