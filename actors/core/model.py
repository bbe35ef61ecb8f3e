"""What a turn asks a model provider and what comes back (the port itself is actors.ports.Provider)."""

from __future__ import annotations

from typing import Any

import msgspec

from actors.core.records import ClientTool
from actors.core.summary import ContextSummary
from actors.core.tree import ToolUse, ToolWait, Usage

__all__ = [
    "ChatMessage",
    "Chunk",
    "ModelRequest",
    "PromptMemo",
    "Resume",
    "SummaryChunk",
    "ToolCallChunk",
    "ToolResultChunk",
    "ToolWaitChunk",
    "TurnItem",
]


class ChatMessage(msgspec.Struct, frozen=True):
    role: str  # system | user | assistant
    content: str
    # The message of the path it comes from (None: the session's system prompt); an answer's
    # tool results and a user turn's restore hint carry their message's id.
    node_id: str | None = None


class Resume(msgspec.Struct, frozen=True):
    """Where a turn that waited on tool calls goes on: the answer's text so far and its calls,
    every one decided (an output, or ``wait="approved"``: run it now)."""

    text: str
    calls: list[ToolUse]


class PromptMemo:
    """What the model's side keeps of one session's prompt between its turns (the path as the
    context window's fitter counted it), so a turn costs what it adds, not the whole
    conversation again. The session's actor holds it and hands it on with every request; it
    goes when the actor does. What ``fitted`` holds is the fitter's business alone."""

    __slots__ = ("fitted",)

    def __init__(self) -> None:
        self.fitted: object = None


class ModelRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Everything one answer needs: the active path up to the user turn, and the session's
    agent, active tools and linked documents (for whoever resolves them)."""

    messages: list[ChatMessage]
    tools: list[str] = msgspec.field(default_factory=list)
    session_id: str = ""
    agent_id: str | None = None
    documents: list[str] = msgspec.field(default_factory=list)
    end_user_id: str | None = None
    # Earlier answers to the same user turn (0 for the first): regenerating asks again.
    attempt: int = 0
    client_tools: list[ClientTool] = msgspec.field(default_factory=list)
    resume: Resume | None = None
    # The hidden summaries of older turns whose message is on this path (newest last): one that
    # still fingerprints the path stands in for the turns that do not fit the model's window.
    summaries: list[ContextSummary] = msgspec.field(default_factory=list)
    # The session's memo of its prompt (in-process only: a request is never encoded).
    memo: PromptMemo | None = None


class Chunk(msgspec.Struct, frozen=True):
    """A piece of a streamed answer: text deltas, and at the end the usage and model name.

    Each delta becomes one ``message.delta`` event, in order. A backend passes on at once every
    delta it has (all those parsed from one network read, or every token an unpaced model made
    before it yields the loop), so a batch costs each layer above it one step, not one per token.
    """

    deltas: list[str] = msgspec.field(default_factory=list)
    usage: Usage | None = None
    model: str | None = None


class ToolCallChunk(msgspec.Struct, frozen=True):
    """The model asked for a tool (the actor records it as a ``tool.call`` event)."""

    call_id: str
    name: str
    arguments: dict[str, Any]
    wait: ToolWait | None = None  # "approval" or "client": the turn stops after this round


class ToolResultChunk(msgspec.Struct, frozen=True):
    """A tool answered (a ``tool.result`` event and a checkpoint)."""

    call_id: str
    name: str
    output: str
    is_error: bool = False


class ToolWaitChunk(msgspec.Struct, frozen=True):
    """The last item of a turn that waits on tool calls: it goes on once they are decided."""


class SummaryChunk(msgspec.Struct, frozen=True):
    """Older turns were summarised to fit the context window: the actor keeps the summary as a
    hidden node before the answer goes on (it is never shown as text)."""

    summary: ContextSummary


TurnItem = Chunk | ToolCallChunk | ToolResultChunk | ToolWaitChunk | SummaryChunk
