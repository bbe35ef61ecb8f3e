"""Real local model servers for tests: one speaks the OpenAI streaming protocol, one Ollama's.

Each is an aiohttp server on 127.0.0.1 with a port of its own. It answers deterministically:
a tool result in the last message is quoted back; if ``tool_call`` is set and tools are offered,
it calls that tool; otherwise it greets, repeating the user's last words. ``mode`` makes it
misbehave: ``error`` (HTTP 500, the health probe too), ``slow`` (headers, then nothing until
``release`` is set), ``die`` (two pieces of text, then the connection is cut).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Self

import msgspec
from aiohttp import web

__all__ = ["FakeOllama", "FakeOpenAI", "closed_port_url", "converse"]

PROMPT_TOKENS_PER_MESSAGE = 11


def closed_port_url() -> str:
    """A URL where nothing listens (a port bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class _FakeModel:
    def __init__(self, label: str) -> None:
        self.label = label
        self.mode = "ok"
        self.report_usage = True
        self.tool_call: tuple[str, str] | None = None
        self.requests: list[dict[str, Any]] = []
        self.asked = asyncio.Event()  # set when a chat request arrives
        self.probes = 0
        self.api_key: str | None = None  # when set, requests without "Authorization: Bearer <it>" get 401
        self.release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    def pieces(self, body: dict[str, Any]) -> tuple[list[str], tuple[str, str] | None]:
        messages = body["messages"]
        last = messages[-1]
        if last["role"] == "tool":
            return self._split(f"{self.label} read the tool result: {last['content']}"), None
        if self.tool_call is not None and body.get("tools"):
            return [], self.tool_call
        return self._split(f"Hello from {self.label}, you said: {last['content']}"), None

    @staticmethod
    def _split(text: str) -> list[str]:
        words = text.split(" ")
        return [words[0], *(" " + w for w in words[1:])]

    def usage(self, body: dict[str, Any], pieces: list[str]) -> tuple[int, int]:
        return PROMPT_TOKENS_PER_MESSAGE * len(body["messages"]), len(pieces) or 3

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def start(self) -> str:
        app = web.Application()
        self.routes(app)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined,union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _misbehave(self, request: web.Request) -> web.StreamResponse | None:
        if self.mode == "error":
            return web.json_response({"error": {"message": f"{self.label} is broken"}}, status=500)
        return None


class FakeOpenAI(_FakeModel):
    """``POST /v1/chat/completions`` (stream: true), ``GET /v1/models``."""

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.models)

    async def models(self, request: web.Request) -> web.Response:
        self.probes += 1
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": {"message": "Incorrect API key provided"}}, status=401)
        if self.mode == "error":
            return web.json_response({"error": {"message": "down"}}, status=500)
        return web.json_response({"object": "list", "data": [{"id": self.label, "object": "model"}]})

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        obj = {
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": self.label,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return b"data: " + msgspec.json.encode(obj) + b"\n\n"

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        self.asked.set()
        bad = await self._misbehave(request)
        if bad is not None:
            return bad
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(self._chunk({"role": "assistant", "content": ""}))
        if self.mode == "slow":
            await self.release.wait()
        pieces, call = self.pieces(body)
        if self.mode == "die":
            for piece in pieces[:2]:
                await resp.write(self._chunk({"content": piece}))
            assert request.transport is not None
            request.transport.close()  # cut mid-answer: no finish_reason, no [DONE]
            return resp
        for piece in pieces:
            await resp.write(self._chunk({"content": piece}))
        if call is not None:
            name, args = call
            await resp.write(self._chunk({"tool_calls": [
                {"index": 0, "id": "call_1", "type": "function", "function": {"name": name, "arguments": ""}}
            ]}))
            half = len(args) // 2
            for fragment in (args[:half], args[half:]):  # arguments arrive in pieces
                await resp.write(self._chunk({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]}))
        await resp.write(self._chunk({}, "tool_calls" if call else "stop"))
        if self.report_usage and (body.get("stream_options") or {}).get("include_usage"):
            p, c = self.usage(body, pieces)
            usage = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
            obj = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": self.label, "choices": [],
                   "usage": usage}
            await resp.write(b"data: " + msgspec.json.encode(obj) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


class FakeOllama(_FakeModel):
    """``POST /api/chat`` (NDJSON stream), ``GET /api/tags``."""

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/api/chat", self.chat)
        app.router.add_get("/api/tags", self.tags)

    async def tags(self, request: web.Request) -> web.Response:
        self.probes += 1
        if self.mode == "error":
            return web.json_response({"error": "down"}, status=500)
        return web.json_response({"models": [{"name": self.label}]})

    def _line(self, message: dict[str, Any], **extra: Any) -> bytes:
        obj = {"model": self.label, "created_at": "2025-01-01T00:00:00Z", "message": message, "done": False, **extra}
        return msgspec.json.encode(obj) + b"\n"

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        bad = await self._misbehave(request)
        if bad is not None:
            return bad
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        if self.mode == "slow":
            await self.release.wait()
        pieces, call = self.pieces(body)
        for piece in pieces:
            await resp.write(self._line({"role": "assistant", "content": piece}))
        if call is not None:
            name, args = call
            fn = {"name": name, "arguments": msgspec.json.decode(args)}
            await resp.write(self._line({"role": "assistant", "content": "", "tool_calls": [{"function": fn}]}))
        p, c = self.usage(body, pieces)
        await resp.write(self._line(
            {"role": "assistant", "content": ""}, done=True, done_reason="stop", prompt_eval_count=p, eval_count=c
        ))
        await resp.write_eof()
        return resp


async def converse(client: Any, session_id: str, content: str) -> list[Any]:
    """Send ``content`` with ``stream: true``; every event of that task, up to its end."""
    from tests.sse import read_until

    resp = await client.post(f"/v1/sessions/{session_id}/messages", json={"content": content, "stream": True})
    assert resp.status == 200, await resp.text()
    try:
        return await read_until(resp, {"task.completed", "task.failed", "task.cancelled", "task.interrupted"})
    finally:
        resp.close()
