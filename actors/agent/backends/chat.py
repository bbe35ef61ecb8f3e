"""What the two HTTP chat dialects (OpenAI-compatible and Ollama's) share: the messages in the
function-calling form, and the answer their streamed pieces add up to.

The dialects differ in three places only, which ``Dialect`` names: how a tool result says which
call it answers (OpenAI: ``tool_call_id``; Ollama: ``tool_name``), whether an assistant turn
with tool calls and no text carries ``null`` or ``""``, and whether a call's arguments travel as
JSON text (OpenAI) or as an object (Ollama).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from actors.agent.backends.base import ModelMessage, ModelToolCall, ProviderError, wire_name
from actors.core.tree import Usage

__all__ = ["Answer", "Dialect", "decode_piece", "wire_messages"]

Dialect = Literal["openai", "ollama"]


def _arguments_object(text: str) -> Any:
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        return {}


def wire_messages(messages: list[ModelMessage], dialect: Dialect) -> list[dict[str, Any]]:
    """Messages in the chat form of ``dialect`` (tool calls and ``role: tool`` results)."""
    openai = dialect == "openai"
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "tool":
            answers = {"tool_call_id": m.tool_call_id} if openai else {"tool_name": wire_name(m.name or "")}
            out.append({"role": "tool", **answers, "content": m.content})
        elif m.tool_calls:
            calls: list[dict[str, Any]] = []
            for c in m.tool_calls:
                if openai:
                    fn = {"name": wire_name(c.name), "arguments": c.arguments}
                    calls.append({"id": c.call_id, "type": "function", "function": fn})
                else:
                    calls.append({"function": {"name": wire_name(c.name), "arguments": _arguments_object(c.arguments)}})
            content = (m.content or None) if openai else m.content
            out.append({"role": "assistant", "content": content, "tool_calls": calls})
        else:
            out.append({"role": m.role, "content": m.content})
    return out


def decode_piece(data: str | bytes, what: str) -> dict[str, Any] | None:
    """One JSON piece of a streamed answer (None if it is not an object); a piece that is not
    JSON, or that reports an error, fails the answer."""
    try:
        obj = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise ProviderError(f"the model sent a {what} that is not JSON: {data[:200]!r}") from exc
    if not isinstance(obj, dict):
        return None
    err = obj.get("error")
    if err:
        msg = err.get("message") if isinstance(err, dict) else err
        raise ProviderError(f"the model reported an error: {msg}")
    return obj


class Answer:
    """What the pieces of one streamed answer add up to; each dialect's parser fills it."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.text: list[str] = []
        self.calls: list[ModelToolCall] = []
        self.usage: Usage | None = None
        self.finished = False  # the answer is whole (a finish reason, [DONE] or done: true)
        self.done = False  # nothing more comes
        self.started = False  # something of the answer itself arrived: no falling back any more

    def take_model(self, obj: dict[str, Any]) -> None:
        model = obj.get("model")
        if isinstance(model, str) and model:
            self.model = model

    def add_text(self, content: str, deltas: list[str]) -> None:
        self.started = True
        self.text.append(content)
        deltas.append(content)
