"""Ollama's native chat API, streamed: ``POST {base_url}/api/chat``, one JSON object a line.

Each line carries ``message.content`` (a piece of text) and maybe ``message.tool_calls`` (whole
calls, arguments as an object); the last one has ``done: true`` with ``prompt_eval_count`` and
``eval_count``, the token usage. Tool results go back as ``role: tool`` messages.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec

from actors.agent.backends.base import (
    ModelCall,
    ModelItem,
    ModelMessage,
    ModelToolCall,
    ProviderError,
    tool_call_named,
    wire_name,
)
from actors.agent.backends.upstream import HttpUpstream, UpstreamSettings
from actors.agent.tokens import TokenCounter
from actors.core.ids import new_id
from actors.core.model import Chunk
from actors.core.tree import Usage

__all__ = ["OllamaBackend"]


def _arguments(text: str) -> Any:
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        return {}


def _wire(messages: list[ModelMessage]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "tool":
            out.append({"role": "tool", "content": m.content, "tool_name": wire_name(m.name or "")})
        elif m.tool_calls:
            out.append(
                {
                    "role": "assistant",
                    "content": m.content,
                    "tool_calls": [
                        {"function": {"name": wire_name(c.name), "arguments": _arguments(c.arguments)}}
                        for c in m.tool_calls
                    ],
                }
            )
        else:
            out.append({"role": m.role, "content": m.content})
    return out


class _Answer:
    def __init__(self, model: str) -> None:
        self.model = model
        self.text: list[str] = []
        self.calls: list[ModelToolCall] = []
        self.usage: Usage | None = None
        self.finished = False
        self.started = False

    def feed(self, line: bytes) -> str:
        line = line.strip()
        if not line:
            return ""
        try:
            obj = msgspec.json.decode(line)
        except msgspec.DecodeError as exc:
            raise ProviderError(f"the model sent a line that is not JSON: {line[:200]!r}") from exc
        if not isinstance(obj, dict):
            return ""
        if obj.get("error"):
            raise ProviderError(f"the model reported an error: {obj['error']}")
        if isinstance(obj.get("model"), str) and obj["model"]:
            self.model = obj["model"]
        message = obj.get("message") or {}
        for tc in message.get("tool_calls") or ():
            self.started = True
            fn = tc.get("function") or {}
            args = fn.get("arguments")
            text = args if isinstance(args, str) else msgspec.json.encode(args if args is not None else {}).decode()
            self.calls.append(ModelToolCall(tc.get("id") or new_id("call"), fn.get("name") or "", text))
        if obj.get("done"):
            self.finished = True
            p, c = int(obj.get("prompt_eval_count") or 0), int(obj.get("eval_count") or 0)
            if p or c:
                self.usage = Usage(p, c, p + c)
        content = message.get("content") or ""
        if content:
            self.started = True
            self.text.append(content)
        return str(content)


async def _lines(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The NDJSON lines of a body."""
    async for line in resp.content:
        yield line


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
        payload: dict[str, Any] = {"model": call.model, "messages": _wire(call.messages), "stream": True}
        if call.tools:
            payload["tools"] = [t.as_function() for t in call.tools]
        if call.temperature is not None:
            payload["options"] = {"temperature": call.temperature}
        if self._keep_alive:
            payload["keep_alive"] = self._keep_alive
        return payload

    async def stream(self, call: ModelCall) -> AsyncIterator[ModelItem]:
        answer = _Answer(call.model)

        def feed(line: bytes) -> list[str]:
            delta = answer.feed(line)
            return [delta] if delta else []

        deltas = self.http.deltas("/api/chat", self._payload(call), _lines, feed, answer, lambda: answer.finished)
        async for delta in deltas:
            yield Chunk(delta=delta)
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
