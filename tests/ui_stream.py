"""Reading the AI SDK's UI message stream off the wire, for tests."""

from __future__ import annotations

from typing import Any

import aiohttp
import msgspec

__all__ = ["Frame", "frames", "text_of", "types"]


class Frame(msgspec.Struct):
    id: str | None
    data: Any  # a chunk, or "[DONE]"


async def frames(resp: aiohttp.ClientResponse, limit: int = 100_000) -> list[Frame]:
    """UI message stream frames until [DONE] (or ``limit`` frames)."""
    out: list[Frame] = []
    ev_id: str | None = None
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("id: "):
            ev_id = line[4:]
        elif line.startswith("data: "):
            value = line[6:]
            out.append(Frame(ev_id, value if value == "[DONE]" else msgspec.json.decode(value)))
            ev_id = None
            if value == "[DONE]" or len(out) >= limit:
                break
    return out


def types(got: list[Frame]) -> list[str]:
    return [f.data if f.data == "[DONE]" else f.data["type"] for f in got]


def text_of(got: list[Frame]) -> str:
    return "".join(f.data["delta"] for f in got if f.data != "[DONE]" and f.data["type"] == "text-delta")
