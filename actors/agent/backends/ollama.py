"""Ollama's native chat API, streamed: ``POST {base_url}/api/chat``, one JSON object a line.

Each line carries ``message.content`` (a piece of text) and maybe ``message.tool_calls`` (whole
calls, arguments as an object); the last one has ``done: true`` with ``prompt_eval_count`` and
``eval_count``, the token usage. Tool results go back as ``role: tool`` messages.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec

from actors.agent.backends.base import ModelCall, ModelItem, ModelToolCall, tool_call_named
from actors.agent.backends.chat import Answer, decode_piece, wire_messages
from actors.agent.backends.upstream import HttpUpstream, UpstreamSettings
from actors.agent.tokens import TokenCounter
from actors.core.ids import new_id
from actors.core.model import Chunk
from actors.core.tree import Usage

__all__ = ["OllamaBackend"]


class _Answer(Answer):
    """An Ollama answer: whole tool calls, usage on the last line."""

    def feed(self, raw: bytes) -> list[str]:
        """Take one NDJSON line; the text delta it carries, if any."""
        line = raw.strip()
        if not line:
            return []
        obj = decode_piece(line, "line")
        if obj is None:
            return []
        self.take_model(obj)
        message = obj.get("message") or {}
        for tc in message.get("tool_calls") or ():
            self.started = True
            fn = tc.get("function") or {}
            args = fn.get("arguments")
            text = args if isinstance(args, str) else msgspec.json.encode(args if args is not None else {}).decode()
            self.calls.append(ModelToolCall(tc.get("id") or new_id("call"), fn.get("name") or "", text))
        if obj.get("done"):
            self.finished = self.done = True
            p, c = int(obj.get("prompt_eval_count") or 0), int(obj.get("eval_count") or 0)
            if p or c:
                self.usage = Usage(p, c, p + c)
        deltas: list[str] = []
        content = message.get("content")
        if content:
            self.add_text(str(content), deltas)
        return deltas


class OllamaBackend:
    """A provider of kind ``ollama``."""

    kind = "ollama"

    def __init__(
        self, name: str, settings: UpstreamSettings, *, model: str, counter: TokenCounter, keep_alive: str | None = None
    ) -> None:
        self.name = name
        self.default_model = model
        self.http = HttpUpstream(name, settings)
        self._counter = counter
        self._keep_alive = keep_alive

    def _payload(self, call: ModelCall) -> dict[str, Any]:
        messages = wire_messages(call.messages, "ollama")
        payload: dict[str, Any] = {"model": call.model, "messages": messages, "stream": True}
        if call.tools:
            payload["tools"] = [t.as_function() for t in call.tools]
        if call.temperature is not None:
            payload["options"] = {"temperature": call.temperature}
        if self._keep_alive:
            payload["keep_alive"] = self._keep_alive
        return payload

    async def stream(self, call: ModelCall) -> AsyncIterator[ModelItem]:
        answer = _Answer(call.model)
        batches = self.http.deltas("/api/chat", self._payload(call), answer.feed, answer, lambda: answer.finished)
        async for batch in batches:
            yield Chunk(batch)
        for tool_call in answer.calls:
            yield tool_call_named(tool_call, call.tools)
        usage = answer.usage
        if usage is None:
            await self._counter.load()
            prompt = self._counter.count_messages([m.content for m in call.messages])
            completion = self._counter.count("".join(answer.text))
            usage = Usage(prompt, completion, prompt + completion)
        yield Chunk(usage=usage, model=answer.model)

    async def probe(self) -> None:
        await self.http.probe("/api/tags")

    async def aclose(self) -> None:
        await self.http.aclose()
