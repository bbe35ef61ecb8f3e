"""The simulated model: a deterministic reply derived from the prompt, honestly named.

Tests and load tests need no real model: the same prompt always gives the same reply,
``reply_tokens`` tokens long, paced at ``tokens_per_second`` (0 = as fast as possible).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator

from actors.agent.provider import Chunk, ModelRequest
from actors.tree import Usage

__all__ = ["SimulatedProvider", "simulated_reply"]

_WORDS = (
    "the session keeps every event in order so a client that drops can resume exactly "
    "where it left off while the actor owns its tree of messages and streams each token "
    "as it is made by a model that is only simulated here for tests and load"
).split()

# How many tokens to produce before yielding to the event loop when unpaced.
_UNPACED_SLICE = 32


def simulated_reply(request: ModelRequest, tokens: int) -> list[str]:
    """The reply tokens for ``request``: a pure function of its messages."""
    digest = hashlib.blake2b(
        "\x1e".join(f"{m.role}:{m.content}" for m in request.messages).encode(), digest_size=8
    ).digest()
    rng = random.Random(int.from_bytes(digest, "big"))
    words = [rng.choice(_WORDS) for _ in range(max(tokens - 1, 0))]
    return (["Simulated"] + [" " + w for w in words])[:tokens] if tokens > 0 else []


class SimulatedProvider:
    """A stand-in model with the interface of a real one; its model name is ``simulated``."""

    name = "simulated"

    def __init__(self, *, tokens_per_second: float, reply_tokens: int) -> None:
        self.tokens_per_second = tokens_per_second
        self.reply_tokens = reply_tokens

    async def stream(self, request: ModelRequest) -> AsyncIterator[Chunk]:
        tokens = simulated_reply(request, self.reply_tokens)
        rate = self.tokens_per_second
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i, token in enumerate(tokens):
            if rate > 0:
                # Pace against the start time, not the previous token, so delays never drift.
                delay = start + (i + 1) / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            elif i % _UNPACED_SLICE == _UNPACED_SLICE - 1:
                await asyncio.sleep(0)
            yield Chunk(delta=token)
        prompt = sum(len(m.content.split()) for m in request.messages)
        yield Chunk(usage=Usage(prompt, len(tokens), prompt + len(tokens)), model="simulated")
