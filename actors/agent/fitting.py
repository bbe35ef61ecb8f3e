"""Fitting a conversation into its model's context window (``[context]``, docs/agents.md).

The prompt is: the head (the system prompt and the linked documents' passages, always kept),
the path of the conversation, and the tail (the answer being written: its tool calls and their
results, always kept). Room for the answer is kept free (``RouteLimits.reserve``). When the
path does not fit, its oldest messages go first, a message at a time with everything that
belongs to it (a tool result or restore hint goes with its message), and an answer never stays
without its question. The newest user turn always stays: if it cannot fit even alone, the task
fails with ``ContextOverflowError``, saying by how much.

``truncate`` drops what does not fit. ``summarize`` puts a summary of the dropped messages in
their place, written once by the agent's own model and kept as a hidden node (ContextSummary)
that later turns of the same path reuse. A new summary is written only when the messages after
the last one no longer fit; it then covers enough that the newest messages fill at most half the
room, so the next turns reuse it again. It builds on the previous summary of the path, and if
what it should cover does not fit one call to the model, the oldest of that is left out of it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence

import msgspec

from actors.agent.backends.base import ModelMessage, ProviderError, ToolSpec
from actors.agent.tokens import TokenCounter
from actors.agent.windows import RouteLimits
from actors.core.model import ChatMessage
from actors.core.summary import ContextSummary, path_digest

__all__ = [
    "SUMMARY_PREFIX", "ContextOverflowError", "Fitter", "PathGroups", "SummaryPlan", "prompt_bound", "summary_message",
    "summary_prompt",
]

SUMMARY_PREFIX = "Summary of the earlier conversation"


class ContextOverflowError(ProviderError):
    """The newest turn does not fit the model's context window even alone."""


def _size(message: ModelMessage, of: Callable[[str], int]) -> int:
    """A message's tokens, by ``of`` each of its texts (a count, or a bound of it)."""
    n = of(message.content) + TokenCounter.message_overhead()
    for call in message.tool_calls or []:
        n += of(call.name) + of(call.arguments)
    return n


def prompt_bound(messages: Sequence[ModelMessage]) -> int:
    """At least the tokens of ``messages`` (their UTF-8 bytes and the chat format's), read whole."""
    return sum(_size(m, TokenCounter.bound) for m in messages)


def _tokens(counter: TokenCounter, message: ModelMessage) -> int:
    return _size(message, counter.count)


class PathGroups:
    """The path as the fitter reads it: its messages in groups, one per node (a message goes with
    its tool results or its restore hint), with running totals. Kept between a session's turns
    (``PromptMemo``), it grows by what each turn adds. A group is its place in these lists, not
    an object: a long conversation is held in a few lists.

    Each group has a cheap upper bound of its tokens (its length in bytes: a token is at least
    one byte): while the bounds of the whole path fit the window, no message is counted at all.
    Past that, groups are counted once each, in order, when first needed, and the longest
    suffix that fits is found by bisection over the counted totals.

    It only ever grows, so a fitter holding it reads its own length of it (``size``); a path
    that is not this one extended is built anew, in a new object."""

    __slots__ = ("bounds", "chat", "counter", "flat", "node_ids", "offsets", "sums", "tokens")

    def __init__(self, counter: TokenCounter) -> None:
        self.counter = counter
        self.chat: list[ChatMessage] = []  # what it was built from
        self.flat: list[ModelMessage] = []  # every group's messages, in order
        self.node_ids: list[str | None] = []  # each group's node
        self.offsets: list[int] = []  # where each group starts in ``flat``
        self.bounds: list[int] = [0]  # bounds[i]: the bounds of groups[:i]
        self.tokens: list[int] = []  # each group's tokens once counted (-1 before)
        self.sums: list[int] = [0]  # sums[i]: the tokens of groups[:i], as far as counted

    @classmethod
    def of(cls, memo: object, chat: list[ChatMessage], counter: TokenCounter) -> PathGroups:
        """The groups of ``chat``: ``memo`` (a previous turn's) extended when ``chat`` continues
        what it was built from, else new ones."""
        if isinstance(memo, PathGroups) and memo.counter is counter and memo.continued_by(chat):
            memo.extend(chat[len(memo.chat) :])
            return memo
        fresh = cls(counter)
        fresh.extend(chat)
        return fresh

    def continued_by(self, chat: list[ChatMessage]) -> bool:
        k = len(self.chat)
        if len(chat) < k or chat[:k] != self.chat:
            return False
        # The next message must start a node of its own: a node with more messages than it had
        # (its text once its tool results came) is built anew.
        return len(chat) == k or not self.node_ids or chat[k].node_id != self.node_ids[-1]

    def extend(self, chat: Sequence[ChatMessage]) -> None:
        for m in chat:
            self.add(m.node_id, ModelMessage(role=m.role, content=m.content))
        self.chat += chat

    def add(self, node_id: str | None, message: ModelMessage) -> None:
        bound = _size(message, TokenCounter.bound)
        if self.node_ids and node_id is not None and self.node_ids[-1] == node_id:
            self.bounds[-1] += bound
            if self.tokens[-1] >= 0:
                tokens = _tokens(self.counter, message)
                self.tokens[-1] += tokens
                if len(self.sums) > len(self.node_ids):
                    self.sums[-1] += tokens
        else:
            self.offsets.append(len(self.flat))
            self.node_ids.append(node_id)
            self.bounds.append(self.bounds[-1] + bound)
            self.tokens.append(-1)
        self.flat.append(message)

    def __len__(self) -> int:
        return len(self.node_ids)

    def _offset(self, i: int) -> int:
        """Where group ``i`` starts in ``flat`` (its end, past the last group)."""
        return self.offsets[i] if i < len(self.offsets) else len(self.flat)

    def messages(self, start: int, end: int) -> list[ModelMessage]:
        """The messages of groups ``start`` to ``end`` (exclusive)."""
        return self.flat[self._offset(start) : self._offset(end)]

    def is_answer(self, i: int) -> bool:
        return any(m.role == "assistant" for m in self.messages(i, i + 1))

    def count(self, i: int) -> int:
        """The tokens of group ``i`` (counted the first time)."""
        if self.tokens[i] < 0:
            self.tokens[i] = sum(_tokens(self.counter, m) for m in self.messages(i, i + 1))
        return self.tokens[i]

    def counted(self, upto: int) -> list[int]:
        """``sums``, with the groups before ``upto`` counted."""
        sums = self.sums
        for i in range(len(sums) - 1, upto):
            sums.append(sums[-1] + self.count(i))
        return sums


class SummaryPlan(msgspec.Struct, frozen=True):
    """A summary to write: of ``messages`` (after ``previous``), through node ``through_id``."""

    through_id: str
    digest: str
    covered: int
    previous: str
    messages: list[ModelMessage]


def summary_message(summary: ContextSummary) -> ModelMessage:
    return ModelMessage(
        role="system", content=f"{SUMMARY_PREFIX} ({summary.covered} messages): {summary.content}"
    )


def summary_prompt(plan: SummaryPlan, max_tokens: int) -> list[ModelMessage]:
    """What the model is asked to write a summary."""
    words = max(max_tokens * 3 // 4, 10)
    lines = [f"{m.role}: {m.content}" for m in plan.messages if m.content]
    before = f"Summary so far:\n{plan.previous}\n\n" if plan.previous else ""
    text = before + "Conversation:\n" + "\n".join(lines)
    return [
        ModelMessage(
            role="system",
            content=(
                "Summarise the conversation below for the assistant who continues it. Keep names, facts,"
                " numbers, decisions, the user's preferences and open questions; leave out small talk."
                f" Write at most {words} words, in the language of the conversation."
            ),
        ),
        ModelMessage(role="user", content=text),
    ]


class Fitter:
    """Fits one turn's prompt into a route's window (see the module docstring). ``path`` is the
    path's messages, each with its node, or a ``PathGroups`` kept from the session's last turn."""

    def __init__(
        self,
        head: list[ModelMessage],
        path: PathGroups | Sequence[tuple[str | None, ModelMessage]],
        *,
        limits: RouteLimits,
        counter: TokenCounter,
        tools: Sequence[ToolSpec] = (),
    ) -> None:
        self.head = head
        self.limits = limits
        self.counter = counter
        self.reserve = min(limits.reserve, limits.window // 2)
        self._tools = sum(counter.count(msgspec.json.encode(t.as_function()).decode()) for t in tools)
        if not isinstance(path, PathGroups):
            built = PathGroups(counter)
            for node_id, message in path:
                built.add(node_id, message)
            path = built
        self.path = path
        # This turn's share of the path (the groups may grow under a later turn).
        self.size = len(path)
        self._flat_size = len(path.flat)
        self.start = 0  # the first group sent
        self.summary: ContextSummary | None = None
        self.dropped = 0  # messages of the path left out

    def tokens(self, message: ModelMessage) -> int:
        return _tokens(self.counter, message)

    def _count(self, i: int) -> int:
        return self.path.count(i)

    def _bound(self, start: int) -> int:
        """The bound of groups ``start`` to the newest (from the running totals)."""
        bounds = self.path.bounds
        return bounds[self.size] - bounds[start]

    def _bounded(self, start: int, room: int) -> bool:
        """Whether groups ``start`` to the newest surely fit ``room`` (by their bounds)."""
        return self._bound(start) <= room

    def room(self, tail: Sequence[ModelMessage] = ()) -> int:
        """Tokens the path may take beside the head, the tail, the tools and the answer."""
        fixed = sum(self.tokens(m) for m in [*self.head, *tail]) + self._tools + TokenCounter.message_overhead()
        return self.limits.window - self.reserve - fixed

    def _suffix_start(self, room: int, floor: int) -> int:
        """The first group of the longest suffix (from ``floor`` on) that fits ``room``, never
        starting at an answer; ``size - 1`` (the newest turn) at the least."""
        if not self.size:
            return 0
        end = self.size
        if self._bounded(floor, room):
            start = floor
        elif room < 0:
            start = end
        else:
            # The totals only grow toward the newest group: the first group whose suffix fits.
            sums = self.path.counted(end)
            start = bisect_left(sums, sums[end] - room, floor, end + 1)
        last = end - 1
        while start < last and self.path.is_answer(start):
            start += 1
        return min(start, last)

    def _fits(self, start: int, room: int) -> bool:
        """Whether the path from group ``start`` on fits ``room``."""
        if self._bounded(start, room):
            return True
        sums = self.path.counted(self.size)
        return sums[self.size] - sums[start] <= room

    def _check_newest(self, room: int, tail: Sequence[ModelMessage] = ()) -> None:
        if not self.size or self._bounded(self.size - 1, room):
            return
        need = self._count(self.size - 1)
        if need > room:
            added = sum(self.tokens(m) for m in tail)
            besides = f", beside the {added} of the answer's tool calls and results so far" if tail else ""
            raise ContextOverflowError(
                f"the newest message needs {need} tokens, more than the {max(room, 0)} the model's context"
                f" window of {self.limits.window} leaves for it (with {self.reserve} kept for the answer{besides})"
            )

    def truncate(self, tail: Sequence[ModelMessage] = ()) -> None:
        room = self.room(tail)
        self._check_newest(room, tail)
        if self.summary is not None:
            if self._fits(self.start, room - self.tokens(summary_message(self.summary))):
                return
        self.summary = None
        self.start = max(self.start, self._suffix_start(room, 0))
        self.dropped = self._before(self.start)

    def _before(self, start: int) -> int:
        """How many messages the groups before ``start`` hold."""
        return self.path.offsets[start] if start < self.size else self._flat_size

    def _digest(self, upto: int) -> str:
        """The fingerprint of groups ``0..upto`` (inclusive)."""
        path = self.path
        return path_digest(
            (path.node_ids[i] or "", m.role, m.content) for i in range(upto + 1) for m in path.messages(i, i + 1)
        )

    def _index(self, node_id: str) -> int | None:
        return next((i for i, n in enumerate(self.path.node_ids[: self.size]) if n == node_id), None)

    def summarize(self, known: Sequence[ContextSummary], summary_tokens: int) -> SummaryPlan | None:
        """Fit using the newest summary of ``known`` that still fingerprints this path; None if
        that fits, else the summary to write (then call ``use``)."""
        room = self.room()
        self._check_newest(room)
        if self._fits(0, room):
            return None
        best: tuple[int, ContextSummary] | None = None
        for s in known:
            i = self._index(s.through_id)
            if i is not None and i < self.size - 1 and (best is None or i > best[0]):
                if self._digest(i) == s.digest:
                    best = (i, s)
        if best is not None:
            i, s = best
            if self._fits(i + 1, room - self.tokens(summary_message(s))):
                self.use(s, i + 1)
                return None
        # Room for the summary itself, then half of what is left for the newest messages.
        keep_room = max((room - summary_tokens - 40) // 2, 0)
        start = self._suffix_start(keep_room, (best[0] + 1) if best else 0)
        floor = (best[0] + 1) if best else 0
        if start <= floor:  # nothing new to summarise (the newest turn alone is that big)
            self.truncate()
            return None
        previous = best[1].content if best else ""
        # What one call to the model can take: its window less the answer and the instruction.
        call_room = self.limits.window - summary_tokens - 200 - self.counter.count(previous)
        first, total = start, 0
        while first > floor and total + self._count(first - 1) <= call_room:
            first -= 1
            total += self._count(first)
        if first == start:
            self.truncate()
            return None
        covered = (best[1].covered if best else 0) + len(self.path.messages(floor, start))
        through = self.path.node_ids[start - 1]
        if through is None:
            self.truncate()
            return None
        self.start = start
        return SummaryPlan(
            through_id=through,
            digest=self._digest(start - 1),
            covered=covered,
            previous=previous,
            messages=self.path.messages(first, start),
        )

    def use(self, summary: ContextSummary, start: int | None = None) -> None:
        """Send ``summary`` in place of the messages it covers."""
        if start is None:
            i = self._index(summary.through_id)
            start = (i + 1) if i is not None else self.start
        self.summary = summary
        self.start = start
        self.dropped = self._before(start)

    def _middle(self) -> list[ModelMessage]:
        """What stands between the head and the path: the summary, if one is used."""
        return [summary_message(self.summary)] if self.summary is not None else []

    def messages(self, tail: Sequence[ModelMessage] = ()) -> list[ModelMessage]:
        """The prompt: the head, the summary if any, the path from ``start``, the tail."""
        kept = self.path.flat[self._before(self.start) : self._flat_size]
        return [*self.head, *self._middle(), *kept, *tail]

    def bound(self, tail: Sequence[ModelMessage] = ()) -> int:
        """``prompt_bound(self.messages(tail))``, the path's part from its running totals."""
        return self._bound(self.start) + prompt_bound([*self.head, *self._middle(), *tail])
