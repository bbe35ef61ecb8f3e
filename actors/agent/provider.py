"""What a model provider is to the actor: a request in, an async stream of chunks out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

import msgspec

from actors.tree import Usage

__all__ = ["ChatMessage", "ModelRequest", "Chunk", "Provider"]


class ChatMessage(msgspec.Struct, frozen=True):
    role: str  # system | user | assistant
    content: str


class ModelRequest(msgspec.Struct, frozen=True):
    """Everything a model sees for one answer: the active path up to the user turn."""

    messages: list[ChatMessage]
    tools: list[str] = msgspec.field(default_factory=list)


class Chunk(msgspec.Struct, frozen=True):
    """A piece of a streamed answer: text, and at the end the usage and model name."""

    delta: str = ""
    usage: Usage | None = None
    model: str | None = None


class Provider(Protocol):
    name: str

    def stream(self, request: ModelRequest) -> AsyncIterator[Chunk]: ...
