"""The reference server: a bare aiohttp SSE endpoint writing the same events as sessiond.

No actor, no store, no auth, no fan-out: a session is a counter, and a send streams the
simulated model's reply straight from the request handler, one ``write()`` per event, which
is how a plain aiohttp SSE server is usually written. It answers the requests the
bench makes (create a session, send with ``stream: true``, read to the end; hold an idle
stream) with the same bytes on the wire, so the ratio sessiond/reference is the price of everything sessiond
adds (durability, replay, actors, auth) or the gain of its write coalescing.

Run it alone with ``python -m bench.reference --port 8090``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal

import msgspec
from aiohttp import web

from actors.agent.backends.simulated import SimulatedProvider
from actors.core.events import (
    CheckpointCreated,
    Event,
    MessageCompleted,
    MessageDelta,
    TaskCompleted,
    TaskStarted,
    encode_event,
    event_type,
)
from actors.core.model import ChatMessage, ModelRequest
from actors.core.tree import Node, Usage

__all__ = ["main", "make_reference_app"]

_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
    "Connection": "keep-alive",
}


class _Send(msgspec.Struct):
    content: str
    stream: bool = False


_decode_send = msgspec.json.Decoder(_Send)
_ids = itertools.count(1)
_PROVIDER = web.AppKey("provider", SimulatedProvider)
_SEQS = web.AppKey("seqs", dict)


def _frame(seq: int, event: Event) -> bytes:
    """An event as SSE, byte for byte as sessiond frames it (server/sse.py), in one format."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, event_type(event).encode(), encode_event(event))


def _new_id(prefix: str) -> str:
    return f"{prefix}_{next(_ids):012x}"


async def create_session(request: web.Request) -> web.Response:
    sid = _new_id("ses")
    request.app[_SEQS][sid] = 0
    return web.json_response({"id": sid}, status=201)


async def send_message(request: web.Request) -> web.StreamResponse:
    sid = request.match_info["session_id"]
    seqs = request.app[_SEQS]
    if sid not in seqs:
        raise web.HTTPNotFound()
    body = _decode_send.decode(await request.read())
    task_id, user_id, reply_id = _new_id("tsk"), _new_id("msg"), _new_id("msg")
    resp = web.StreamResponse(status=200, headers=_HEADERS)
    await resp.prepare(request)
    await resp.write(b"retry: 3000\n\n")
    seq = seqs[sid]

    async def emit(event: Event) -> None:
        nonlocal seq
        seq += 1
        await resp.write(_frame(seq, event))

    await emit(TaskStarted(task_id, user_id, reply_id))
    parts: list[str] = []
    usage = Usage()
    model = None
    req = ModelRequest(messages=[ChatMessage("user", body.content)])
    async for chunk in request.app[_PROVIDER].stream(req):
        for delta in chunk.deltas:  # one write() per event, as before the model batched them
            parts.append(delta)
            await emit(MessageDelta(task_id, reply_id, delta))
        if chunk.usage is not None:
            usage = chunk.usage
        if chunk.model is not None:
            model = chunk.model
    reply = Node(reply_id, user_id, "assistant", "".join(parts), "", status="completed", task_id=task_id)
    await emit(MessageCompleted(task_id, reply, usage, model))
    await emit(CheckpointCreated(_new_id("ckp"), reply_id))
    await emit(TaskCompleted(task_id))
    seqs[sid] = seq
    await resp.write_eof()
    return resp


async def idle_stream(request: web.Request) -> web.StreamResponse:
    """An SSE stream that never has news: the retry line, then a heartbeat every 15 s."""
    resp = web.StreamResponse(status=200, headers=_HEADERS)
    await resp.prepare(request)
    await resp.write(b"retry: 3000\n\n")
    while True:
        await asyncio.sleep(15)
        await resp.write(b": ping\n\n")


def make_reference_app(tokens_per_second: float, reply_tokens: int) -> web.Application:
    app = web.Application()
    app[_PROVIDER] = SimulatedProvider(tokens_per_second=tokens_per_second, reply_tokens=reply_tokens)
    app[_SEQS] = {}
    app.router.add_post("/v1/sessions", create_session)
    app.router.add_post("/v1/sessions/{session_id}/messages", send_message)
    app.router.add_get("/v1/sessions/{session_id}/stream", idle_stream)
    return app


async def _serve(host: str, port: int, tokens_per_second: float, reply_tokens: int) -> None:
    runner = web.AppRunner(make_reference_app(tokens_per_second, reply_tokens), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    h, p = runner.addresses[0][:2]
    print(f"listening on http://{h}:{p}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.reference", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--tokens-per-second", type=float, default=0.0)
    parser.add_argument("--reply-tokens", type=int, default=40)
    args = parser.parse_args()
    import uvloop

    uvloop.run(_serve(args.host, args.port, args.tokens_per_second, args.reply_tokens))


if __name__ == "__main__":
    main()
