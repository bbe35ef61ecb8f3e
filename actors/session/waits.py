"""ToolWaits: tool calls that wait for a person's approval or the frontend's result.

A turn whose model asked for such a call stops (``_park``: what it wrote is durable, no id past
the last one shown is handed out) and waits, across passivation and restarts
(``_recover_waiting``). A decision or a result goes through the mailbox; once every call of the
round is decided the turn runs on from the stored state (``_after_decision``). A wait past its
deadline fails the task (``_wait_expired``).
"""

from __future__ import annotations

import time

import msgspec

from actors.core.commands import (
    DecideToolCall,
    SubmitToolResult,
    TurnEnded,
    WaitExpired,
)
from actors.core.errors import (
    ConflictError,
    NotFoundError,
)
from actors.core.events import (
    Event,
    ToolApprovalDecided,
    ToolResult,
    delta_head,
)
from actors.core.model import Resume
from actors.core.records import (
    PutMessage,
    PutSession,
    RunningTask,
)
from actors.core.tree import Node, ToolUse, ToolWait, Usage
from actors.session.context import model_request
from actors.session.turn import Turn
from actors.session.turns import TurnRunner

__all__ = ["ToolWaits"]


class ToolWaits(TurnRunner):
    """The waiting tool calls of one session's turn (see the module docstring)."""

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

    async def _turn_ended(self, cmd: TurnEnded) -> None:
        turn = self._current(cmd.task_id)
        if turn is None:
            return  # already ended by a cancel
        if cmd.waiting:
            await self._park(turn)
            return
        await self._finish(turn, "failed" if cmd.error else "completed", cmd.error)

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
            summaries=self.summaries, prompts=self.prompts,
        )
        turn.task = self._loop.create_task(
            turn.run(self._provider, request, self._journal()), name=f"turn:{turn.task_id}"
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
