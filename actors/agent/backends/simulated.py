"""The simulated model: a deterministic reply derived from the prompt, honestly named.

Tests and load tests need no real model: the same prompt always gives the same first reply,
``reply_tokens`` tokens long, paced at ``tokens_per_second`` (0 = as fast as possible). Each
regeneration of an answer is another attempt and gets other words (the attempt number is part
of the seed, so the sequence is still the same every run). When documents are linked, the reply
opens by quoting the most relevant passage the library chose, so a demo shows them being read.

It can also drive tools, deterministically: a user message with lines of the form
``/tool NAME {"json": "arguments"}`` makes it call each of those tools (if the session has it
active), and once the results are back it answers with them, one line per tool.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
from collections.abc import AsyncIterator, Sequence
from operator import attrgetter
from typing import Protocol

from actors.agent.backends.base import ModelCall, ModelItem, ModelMessage, ModelToolCall
from actors.agent.fitting import prompt_bound
from actors.agent.tokens import TokenCounter
from actors.core.ids import new_id
from actors.core.model import Chunk, ModelRequest
from actors.core.tree import Usage

__all__ = ["SimulatedBackend", "SimulatedProvider", "tool_requests"]

_WORDS = (
    "the session keeps every event in order so a client that drops can resume exactly "
    "where it left off while the actor owns its tree of messages and streams each token "
    "as it is made by a model that is only simulated here for tests and load"
).split()

# How many tokens an unpaced model makes before it yields to the event loop: they go as one batch.
_UNPACED_SLICE = 32

_TOOL_LINE = re.compile(r"^\s*/tool\s+([A-Za-z0-9_.\-]+)\s*(.*)$")  # "." for MCP's SERVER.TOOL


class _Message(Protocol):
    @property
    def role(self) -> str: ...

    @property
    def content(self) -> str: ...


# The runner's block of document passages (actors/agent/documents/library.py), best first.
_PASSAGES = "Passages from the documents linked to this conversation"
_BLOCK = re.compile(r"^\[(?P<name>[^\]\n]*)\]\n(?P<text>.+?)(?=\n\n\[|\Z)", re.S | re.M)
_QUOTE_WORDS = 40


def _quote(messages: Sequence[_Message]) -> str:
    """``From NAME: "..."``: the first (most relevant) passage of the documents block, if any
    (it is one of the system messages the prompt opens with)."""
    for m in messages:
        if m.role != "system":
            break
        if m.content.startswith(_PASSAGES):
            block = _BLOCK.search(m.content)
            if block:
                words = block.group("text").split()
                text = " ".join(words[:_QUOTE_WORDS]) + (" …" if len(words) > _QUOTE_WORDS else "")
                # One line break, not a paragraph: rendered as Markdown it reads as the same text.
                return f'From {block.group("name")}: "{text}"\n'
    return ""


_content = attrgetter("content")


def _reply_tokens(messages: Sequence[_Message], tokens: int, attempt: int, size: int) -> list[str]:
    # The seed: how many messages the prompt has and its size, and the newest two whole.
    # Hashing the whole prompt cost every answer time in the length of the conversation, which
    # comes back with each one; the same prompt still always gets the same reply.
    newest = "\x1e".join(f"{m.role}:{m.content}" for m in messages[-2:])
    prompt = f"{len(messages)}\x1d{size}\x1d{newest}"
    seed = prompt if attempt == 0 else f"{prompt}\x1fattempt:{attempt}"
    digest = hashlib.blake2b(seed.encode(), digest_size=8).digest()
    rng = random.Random(int.from_bytes(digest, "big"))
    words = [rng.choice(_WORDS) for _ in range(max(tokens - 1, 0))]
    reply = (["Simulated"] + [" " + w for w in words])[:tokens] if tokens > 0 else []
    quote = _quote(messages)
    return [*_words(quote.rstrip(" ")), *reply] if quote and reply else reply


def _usage(size: int, completion: int) -> Usage:
    """A prompt of one token per five bytes of ``size`` (about a word of English text: it used
    to count words, which meant reading every message again), and ``completion`` tokens."""
    prompt = (size + 4) // 5
    return Usage(prompt, completion, prompt + completion)


def _text_size(messages: Sequence[_Message]) -> int:
    return sum(map(TokenCounter.bound, map(_content, messages)))


def tool_requests(text: str) -> list[tuple[str, str]]:
    """The ``/tool NAME ARGS`` lines of a message: (name, argument text; ``{}`` if none)."""
    out: list[tuple[str, str]] = []
    for line in text.splitlines():
        m = _TOOL_LINE.match(line)
        if m:
            out.append((m.group(1), m.group(2).strip() or "{}"))
    return out


def _words(text: str) -> list[str]:
    parts = text.split(" ")
    return [parts[0], *(" " + p for p in parts[1:])] if text else []


async def _batches(tokens: list[str], rate: float) -> AsyncIterator[list[str]]:
    """``tokens`` as the model makes them: paced at ``rate`` per second, each batch holding every
    token that is due (one, unless the loop woke late); unpaced (0), ``_UNPACED_SLICE`` at a
    time with the loop yielded between them."""
    if rate <= 0:
        for at in range(0, len(tokens), _UNPACED_SLICE):
            if at:
                await asyncio.sleep(0)
            yield tokens[at : at + _UNPACED_SLICE]
        return
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = 0
    while sent < len(tokens):
        # Pace against the start time, not the previous token, so delays never drift.
        delay = start + (sent + 1) / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        due = min(len(tokens), max(sent + 1, int((loop.time() - start) * rate)))
        yield tokens[sent:due]
        sent = due


class SimulatedProvider:
    """A stand-in model with the interface of a real one; its model name is ``simulated``."""

    name = "simulated"

    def __init__(self, *, tokens_per_second: float, reply_tokens: int) -> None:
        self.tokens_per_second = tokens_per_second
        self.reply_tokens = reply_tokens

    async def stream(self, request: ModelRequest) -> AsyncIterator[Chunk]:
        size = _text_size(request.messages)
        tokens = _reply_tokens(request.messages, self.reply_tokens, request.attempt, size)
        async for batch in _batches(tokens, self.tokens_per_second):
            yield Chunk(batch)
        yield Chunk(usage=_usage(size, len(tokens)), model="simulated")


class SimulatedBackend:
    """The simulated model as a route provider (kind ``simulated``), with the tool mode."""

    kind = "simulated"

    def __init__(self, name: str = "simulated", *, tokens_per_second: float, reply_tokens: int) -> None:
        self.name = name
        self.default_model = "simulated"
        self.tokens_per_second = tokens_per_second
        self.reply_tokens = reply_tokens

    def _answer(
        self, messages: list[ModelMessage], offered: set[str], attempt: int, size: int
    ) -> tuple[list[str], list[ModelToolCall]]:
        last = messages[-1] if messages else None
        if last is not None and last.role == "tool":
            results: list[str] = []
            for m in reversed(messages):
                if m.role != "tool":
                    break
                results.append(f"{m.name}: {m.content}")
            return _words("\n".join(reversed(results))), []
        if last is not None and last.role == "user":
            wanted = tool_requests(last.content)
            if wanted:
                missing = [name for name, _ in wanted if name not in offered]
                if missing:
                    return _words(f"The tool {missing[0]} is not available in this session."), []
                return [], [ModelToolCall(new_id("call"), name, args) for name, args in wanted]
        return _reply_tokens(messages, self.reply_tokens, attempt, size), []

    async def stream(self, call: ModelCall) -> AsyncIterator[ModelItem]:
        # The prompt's size as the runner's fitter added it up; read whole only if not given.
        size = call.prompt_bound or prompt_bound(call.messages)
        tokens, calls = self._answer(call.messages, {t.name for t in call.tools}, call.attempt, size)
        async for batch in _batches(tokens, self.tokens_per_second):
            yield Chunk(batch)
        for tool_call in calls:
            yield tool_call
        completion = len(tokens) + sum(len(c.arguments.split()) + 1 for c in calls)
        yield Chunk(usage=_usage(size, completion), model=call.model)

    async def probe(self) -> None:
        return None

    async def aclose(self) -> None:
        return None
