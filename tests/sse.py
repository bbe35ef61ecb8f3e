"""Reading Server-Sent Events off the wire, for tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec

__all__ = ["Frames", "SseEvent", "events", "read_until"]


class SseEvent(msgspec.Struct):
    id: int | None
    event: str
    data: dict[str, Any]


async def events(resp: aiohttp.ClientResponse) -> AsyncIterator[SseEvent]:
    """Every event frame of ``resp`` (comments and retry lines skipped)."""
    ev_id: int | None = None
    ev_type = "message"
    data: list[str] = []
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                yield SseEvent(ev_id, ev_type, msgspec.json.decode("\n".join(data)))
            ev_id, ev_type, data = None, "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "id":
            ev_id = int(value)
        elif field == "event":
            ev_type = value
        elif field == "data":
            data.append(value)


async def read_until(resp: aiohttp.ClientResponse, stop: str | set[str], limit: int = 100_000) -> list[SseEvent]:
    """Collect events up to and including the first whose type is in ``stop``."""
    stops = {stop} if isinstance(stop, str) else stop
    out: list[SseEvent] = []
    async for ev in events(resp):
        out.append(ev)
        if ev.event in stops or len(out) >= limit:
            break
    return out


class Frames:
    """The event frames of an SSE response, byte for byte (no retry line, no heartbeats)."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.buf = b""

    async def next(self) -> bytes:
        while b"\n\n" not in self.buf:
            async with asyncio.timeout(10):  # a frame that never comes fails the test, not hangs it
                chunk = await self.resp.content.readany()
            assert chunk, "the stream ended"
            self.buf += chunk
        block, self.buf = self.buf.split(b"\n\n", 1)
        if block.startswith((b":", b"retry: ")):
            return await self.next()  # a heartbeat, or the retry line
        return block + b"\n\n"

    async def take(self, n: int) -> bytes:
        return b"".join([await self.next() for _ in range(n)])

    async def until(self, type_: str) -> list[bytes]:
        """Frames up to and including the first of type ``type_``."""
        line = b"\nevent: %s\n" % type_.encode()
        out = [await self.next()]
        while line not in out[-1]:
            out.append(await self.next())
        return out
