"""Reading Server-Sent Events off the wire, for tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec

__all__ = ["SseEvent", "events", "read_until"]


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
