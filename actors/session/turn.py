"""The model turn of a session: a Turn with its own state, and the narrow port it runs through.

A turn is a task of the session: queued, or running as a child task of its actor. The Turn
owns what it gathers (the text so far, usage, model name); the session's tree, record and
checkpoints stay the actor's. The two meet only at ``Journal``, which the actor implements:

- text deltas are numbered and appended to the event log synchronously (``journal.deltas``),
  a batch at a time, as the provider passed them: a plain append on the actor's loop, so it
  never races the mailbox, and it costs no queue hop per token;
- every change to the tree or the record (a tool call, a tool result with its checkpoint,
  a new block of event ids) goes through the actor's mailbox (``await journal.record``), and
  the turn waits until the actor applied it, so its later deltas are numbered after it;
- the turn's end is a message in the mailbox too (``journal.end``);
- a summary of older turns the model's context window could not hold (``SaveSummary``) is
  kept by the actor as a hidden node before the answer goes on.

A turn whose model called a tool that needs a person's approval, or a frontend's result,
stops after that round (``TurnEnded(waiting=True)``): the calls are in the store, the task
goes on counting as running, and once every call is decided the actor runs the turn again
from the stored state (``ModelRequest.resume``), in this process or after a restart.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from actors.core.commands import ReserveSeqs, SaveSummary, ToolCalled, ToolReturned, TurnEnded
from actors.core.model import Chunk, ModelRequest, SummaryChunk, ToolCallChunk, ToolResultChunk, ToolWaitChunk
from actors.core.records import ClientTool
from actors.core.replies import TurnOutcome
from actors.core.tree import Usage
from actors.ports import Provider

__all__ = ["Journal", "Turn"]

log = logging.getLogger("sessiond.actor")


class Journal(Protocol):
    """The session as its running turn sees it."""

    def has_ids(self, count: int) -> bool:
        """Whether the next ``count`` event ids are reserved durably already."""

    def deltas(self, turn: Turn, texts: list[str]) -> None:
        """Number text deltas, one event each, and show them to subscribers (not durable on
        their own)."""

    async def record(self, command: ToolCalled | ToolReturned | ReserveSeqs | SaveSummary) -> None:
        """Apply ``command`` through the mailbox; returns once it is durable."""

    def end(self, command: TurnEnded) -> None:
        """The turn is over (``command.error`` says whether it failed)."""


class Turn:
    """A task of the session: queued, or running (``task``) until its outcome is known."""

    __slots__ = (
        "client_tools",
        "delta_head",
        "done",
        "fold_at",
        "model",
        "parts",
        "queued",
        "reply_id",
        "task",
        "task_id",
        "timer",
        "usage",
        "usage_base",
        "user_id",
        "waiting",
    )

    def __init__(
        self,
        task_id: str,
        user_id: str,
        done: asyncio.Future[TurnOutcome],
        *,
        queued: bool,
        client_tools: list[ClientTool] | None = None,
    ) -> None:
        self.task_id = task_id
        self.user_id = user_id
        self.reply_id = ""  # the answer's node, made when the turn starts
        self.delta_head = b""  # the data of this reply's deltas up to their text (set with reply_id)
        self.parts: list[str] = []
        self.fold_at = 0.0  # loop time of the next fold of the text into the store (0: none due)
        self.usage = Usage()
        self.model: str | None = None
        self.task: asyncio.Task[None] | None = None
        self.done = done
        self.queued = queued
        self.client_tools = client_tools or []
        self.waiting = False  # stopped on tool calls that wait for a decision
        self.usage_base = Usage()  # what the model used before the turn last waited
        self.timer: asyncio.TimerHandle | None = None  # fails the task when a wait expires

    def text(self) -> str:
        """The answer written so far."""
        return "".join(self.parts)

    async def run(
        self, provider: Provider, request: ModelRequest, journal: Journal, started: asyncio.Future[None] | None = None
    ) -> None:
        """Stream the model's answer into the journal; report the end through it. With
        ``started``, the model is asked at once, and what it answers waits for that future
        (the turn's start being durable)."""
        error: str | None = None
        waiting = False
        try:
            async for item in provider.stream(request):
                if started is not None:
                    await started
                    started = None
                match item:
                    case Chunk():
                        deltas = item.deltas
                        if deltas:
                            if not journal.has_ids(len(deltas)):
                                await journal.record(ReserveSeqs(self.task_id, len(deltas)))
                            self.parts += deltas
                            journal.deltas(self, deltas)
                        if item.usage is not None:
                            self.usage = self.usage_base + item.usage
                        if item.model is not None:
                            self.model = item.model
                    case ToolCallChunk():
                        await journal.record(
                            ToolCalled(self.task_id, item.call_id, item.name, item.arguments, item.wait)
                        )
                    case ToolResultChunk():
                        await journal.record(
                            ToolReturned(self.task_id, item.call_id, item.name, item.output, item.is_error)
                        )
                    case ToolWaitChunk():
                        waiting = True
                    case SummaryChunk():
                        await journal.record(SaveSummary(self.task_id, item.summary))
        except asyncio.CancelledError:
            raise  # cancel or shutdown: the actor ends the turn itself
        except Exception as exc:
            log.warning("turn %s failed: %s", self.task_id, exc)
            error = f"{type(exc).__name__}: {exc}"
        journal.end(TurnEnded(self.task_id, error, waiting and error is None))
