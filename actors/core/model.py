"""What a turn asks a model provider and what comes back (the port itself is actors.ports.Provider)."""

from __future__ import annotations

from typing import Any

import msgspec

from actors.core.tree import Usage

__all__ = ["ChatMessage", "Chunk", "ModelRequest", "ToolCallChunk", "ToolResultChunk", "TurnItem"]


class ChatMessage(msgspec.Struct, frozen=True):
    role: str  # system | user | assistant
    content: str


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


class Chunk(msgspec.Struct, frozen=True):
    """A piece of a streamed answer: text, and at the end the usage and model name."""

    delta: str = ""
    usage: Usage | None = None
    model: str | None = None


class ToolCallChunk(msgspec.Struct, frozen=True):
    """The model asked for a tool (the actor records it as a ``tool.call`` event)."""

    call_id: str
    name: str
    arguments: dict[str, Any]


class ToolResultChunk(msgspec.Struct, frozen=True):
    """A tool answered (a ``tool.result`` event and a checkpoint)."""

    call_id: str
    name: str
    output: str
    is_error: bool = False


TurnItem = Chunk | ToolCallChunk | ToolResultChunk
