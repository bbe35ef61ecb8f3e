"""OpenAI-compatible chat completions, streamed (OpenAI, vLLM, llama.cpp server, Ollama's /v1,
LM Studio, ...).

``POST {base_url}/chat/completions`` with ``stream: true``; the answer is Server-Sent Events,
one JSON chunk per ``data:`` line, closed by ``data: [DONE]``. Text deltas are passed on as
they arrive; tool-call fragments (``delta.tool_calls[i]``: id and name first, then pieces of
the arguments) are put together and handed over when the answer ends. Usage comes from the
stream when the server reports it (``stream_options.include_usage``), else it is counted.
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

__all__ = ["OpenAIBackend"]


class _Answer(Answer):
    """An OpenAI-compatible answer: tool calls come in fragments, put together at the end."""

    def __init__(self, model: str) -> None:
        super().__init__(model)
        self.fragments: dict[int, dict[str, str]] = {}

    def feed(self, raw: bytes) -> list[str]:
        """Take one line of the SSE body; the text deltas it carries (comments, ids and event
        names are skipped)."""
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            return []
        data = line[5:].strip()
        if data == "[DONE]":
            self.finished = self.done = True
            return []
        obj = decode_piece(data, "chunk")
        if obj is None:
            return []
        self.take_model(obj)
        usage = obj.get("usage")
        if isinstance(usage, dict):
            p, c = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
            self.usage = Usage(p, c, int(usage.get("total_tokens") or p + c))
        deltas: list[str] = []
        for choice in obj.get("choices") or ():
            if choice.get("finish_reason"):
                self.finished = True
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if content:
                self.add_text(content, deltas)
            for tc in delta.get("tool_calls") or ():
                self.started = True
                slot = self.fragments.setdefault(int(tc.get("index") or 0), {"id": "", "name": "", "arguments": ""})
                if tc.get("id"):
                    slot["id"] = tc["id"]
                fn = tc.get("function") or {}
                slot["name"] += fn.get("name") or ""
                slot["arguments"] += fn.get("arguments") or ""
        return deltas

    def tool_calls(self) -> list[ModelToolCall]:
        return [
            ModelToolCall(slot["id"] or new_id("call"), slot["name"], slot["arguments"] or "{}")
            for _, slot in sorted(self.fragments.items())
        ]


class OpenAIBackend:
    """A provider of kind ``openai``."""

    kind = "openai"

    def __init__(
        self,
        name: str,
        settings: UpstreamSettings,
        *,
        model: str,
        counter: TokenCounter,
        stream_usage: bool = True,
        max_tokens: int | None = None,
    ) -> None:
        self.name = name
        self.default_model = model
        self.http = HttpUpstream(name, settings)
        self._counter = counter
        self._stream_usage = stream_usage
        self._max_tokens = max_tokens

    def _payload(self, call: ModelCall) -> dict[str, Any]:
        messages = wire_messages(call.messages, "openai")
        payload: dict[str, Any] = {"model": call.model, "messages": messages, "stream": True}
        if self._stream_usage:
            payload["stream_options"] = {"include_usage": True}
        if call.tools:
            payload["tools"] = [t.as_function() for t in call.tools]
        if call.temperature is not None:
            payload["temperature"] = call.temperature
        if self._max_tokens:
            payload["max_tokens"] = self._max_tokens
        return payload

    async def stream(self, call: ModelCall) -> AsyncIterator[ModelItem]:
        answer = _Answer(call.model)
        # Read on past finish_reason to [DONE]: the usage chunk comes between them.
        batches = self.http.deltas("/chat/completions", self._payload(call), answer.feed, answer, lambda: answer.done)
        async for batch in batches:
            yield Chunk(batch)
        calls = [tool_call_named(c, call.tools) for c in answer.tool_calls()]
        for tool_call in calls:
            yield tool_call
        usage = answer.usage
        if usage is None:
            usage = await self._count(call, answer, calls)
        yield Chunk(usage=usage, model=answer.model)

    async def _count(self, call: ModelCall, answer: _Answer, calls: list[ModelToolCall]) -> Usage:
        await self._counter.load()
        c = self._counter
        prompt = c.count_messages(
            [m.content + "".join(t.name + t.arguments for t in m.tool_calls or ()) for m in call.messages]
        )
        if call.tools:
            prompt += c.count(msgspec.json.encode([t.parameters for t in call.tools]).decode())
        completion = c.count("".join(answer.text)) + sum(c.count(t.name + t.arguments) for t in calls)
        return Usage(prompt, completion, prompt + completion)

    async def probe(self) -> None:
        await self.http.probe("/models")

    async def aclose(self) -> None:
        await self.http.aclose()
