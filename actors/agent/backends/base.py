"""What a model backend is asked and what it answers, below the agent runner.

The runner speaks to backends (simulated, OpenAI-compatible, Ollama) in this one vocabulary:
chat messages that may carry tool calls and tool results, and the tools on offer. A backend
streams text as ``Chunk(deltas=[...])``, a batch at a time, the tool calls it decided on as
``ModelToolCall``, and ends with one ``Chunk`` carrying usage and the model name.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

import msgspec

from actors.core.model import Chunk

__all__ = [
    "Backend",
    "ModelCall",
    "ModelItem",
    "ModelMessage",
    "ModelToolCall",
    "ProviderError",
    "ProviderUnavailableError",
    "ToolSpec",
    "tool_call_named",
    "wire_name",
]


class ToolSpec(msgspec.Struct, frozen=True):
    """A tool as a model sees it: a name, what it does, and a JSON Schema of its arguments."""

    name: str
    description: str
    parameters: dict[str, Any]

    def as_function(self) -> dict[str, Any]:
        """The tool in the function-calling form OpenAI and Ollama share."""
        return {
            "type": "function",
            "function": {"name": wire_name(self.name), "description": self.description, "parameters": self.parameters},
        }


def wire_name(name: str) -> str:
    """A tool's name as function-calling APIs take it (letters, digits, ``_`` and ``-``): an MCP
    tool's ``SERVER.TOOL`` goes as ``SERVER__TOOL``."""
    return name.replace(".", "__")


def tool_call_named(call: ModelToolCall, tools: Sequence[ToolSpec]) -> ModelToolCall:
    """``call`` with the name of the offered tool its wire name stands for."""
    for t in tools:
        if t.name != call.name and wire_name(t.name) == call.name:
            return msgspec.structs.replace(call, name=t.name)
    return call


class ModelToolCall(msgspec.Struct, frozen=True):
    """A tool call as the model wrote it; ``arguments`` is JSON text (maybe not valid)."""

    call_id: str
    name: str
    arguments: str


class ModelMessage(msgspec.Struct, kw_only=True):
    """One chat message: system, user, assistant (maybe with tool calls) or tool (a result)."""

    role: str
    content: str = ""
    tool_calls: list[ModelToolCall] | None = None
    tool_call_id: str | None = None  # role "tool": the call it answers
    name: str | None = None  # role "tool": the tool's name


class ModelCall(msgspec.Struct, frozen=True, kw_only=True):
    """One request to one model."""

    messages: list[ModelMessage]
    model: str
    tools: list[ToolSpec] = msgspec.field(default_factory=list)
    temperature: float | None = None
    # Which answer to the same user turn this is (0 first): only the simulated model uses it.
    attempt: int = 0
    # At least the prompt's tokens, as the context fitter added them up (its UTF-8 bytes and
    # the chat format's; 0: not given). Only the simulated model uses it, as its prompt's size,
    # so that it need not read the whole conversation again on every turn.
    prompt_bound: int = 0


ModelItem = Chunk | ModelToolCall


class ProviderError(Exception):
    """A model call failed; the task ends ``failed`` with the partial answer kept."""


class ProviderUnavailableError(ProviderError):
    """The provider failed before it streamed anything (no connection, a timeout before the
    first token, a 5xx or 429 answer): the route may go on to its next model."""


class Backend(Protocol):
    """One configured provider (``[providers.NAME]``): a server and how to talk to it."""

    name: str
    kind: str
    default_model: str

    def stream(self, call: ModelCall) -> AsyncIterator[ModelItem]: ...

    async def probe(self) -> None:
        """Return if the provider answers at all; raise otherwise (the health probe)."""

    async def aclose(self) -> None: ...
