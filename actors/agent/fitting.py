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

from collections.abc import Sequence

import msgspec

from actors.agent.backends.base import ModelMessage, ProviderError, ToolSpec
from actors.agent.tokens import TokenCounter
from actors.agent.windows import RouteLimits
from actors.core.summary import ContextSummary, path_digest

__all__ = ["SUMMARY_PREFIX", "ContextOverflowError", "Fitter", "SummaryPlan", "summary_message", "summary_prompt"]

SUMMARY_PREFIX = "Summary of the earlier conversation"


class ContextOverflowError(ProviderError):
    """The newest turn does not fit the model's context window even alone."""


class _Group(msgspec.Struct):
    """One message of the path as the model sees it: its text and what belongs to it."""

    node_id: str | None
    messages: list[ModelMessage]
    tokens: int = -1  # counted when first needed: a long history is counted only as far back as fits

    @property
    def is_answer(self) -> bool:
        return any(m.role == "assistant" for m in self.messages)


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
    """Fits one turn's prompt into a route's window (see the module docstring)."""

    def __init__(
        self,
        head: list[ModelMessage],
        path: Sequence[tuple[str | None, ModelMessage]],
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
        self.groups: list[_Group] = []
        for node_id, message in path:
            if self.groups and node_id is not None and self.groups[-1].node_id == node_id:
                self.groups[-1].messages.append(message)
            else:
                self.groups.append(_Group(node_id, [message]))
        self.start = 0  # the first group sent
        self.summary: ContextSummary | None = None
        self.dropped = 0  # messages of the path left out

    def tokens(self, message: ModelMessage) -> int:
        n = self.counter.count(message.content) + TokenCounter.message_overhead()
        for call in message.tool_calls or []:
            n += self.counter.count(call.name) + self.counter.count(call.arguments)
        return n

    def _count(self, i: int) -> int:
        group = self.groups[i]
        if group.tokens < 0:
            group.tokens = sum(self.tokens(m) for m in group.messages)
        return group.tokens

    def room(self, tail: Sequence[ModelMessage] = ()) -> int:
        """Tokens the path may take beside the head, the tail, the tools and the answer."""
        fixed = sum(self.tokens(m) for m in [*self.head, *tail]) + self._tools + TokenCounter.message_overhead()
        return self.limits.window - self.reserve - fixed

    def _suffix_start(self, room: int, floor: int) -> int:
        """The first group of the longest suffix (from ``floor`` on) that fits ``room``, never
        starting at an answer; ``len(groups) - 1`` (the newest turn) at the least."""
        if not self.groups:
            return 0
        total, start = 0, len(self.groups)
        for i in range(len(self.groups) - 1, floor - 1, -1):
            if total + self._count(i) > room:
                break
            total += self._count(i)
            start = i
        last = len(self.groups) - 1
        while start < last and self.groups[start].is_answer:
            start += 1
        return min(start, last)

    def _fits(self, start: int, room: int) -> bool:
        """Whether the path from group ``start`` on fits ``room`` (counted newest first, only
        as far as needed)."""
        total = 0
        for i in range(len(self.groups) - 1, start - 1, -1):
            total += self._count(i)
            if total > room:
                return False
        return True

    def _check_newest(self, room: int, tail: Sequence[ModelMessage] = ()) -> None:
        if not self.groups:
            return
        need = self._count(len(self.groups) - 1)
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
        self.dropped = sum(len(g.messages) for g in self.groups[: self.start])

    def _digest(self, upto: int) -> str:
        """The fingerprint of groups ``0..upto`` (inclusive)."""
        return path_digest(
            (g.node_id or "", m.role, m.content) for g in self.groups[: upto + 1] for m in g.messages
        )

    def _index(self, node_id: str) -> int | None:
        return next((i for i, g in enumerate(self.groups) if g.node_id == node_id), None)

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
            if i is not None and i < len(self.groups) - 1 and (best is None or i > best[0]):
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
        covered = (best[1].covered if best else 0) + sum(len(g.messages) for g in self.groups[floor:start])
        through = self.groups[start - 1].node_id
        if through is None:
            self.truncate()
            return None
        self.start = start
        return SummaryPlan(
            through_id=through,
            digest=self._digest(start - 1),
            covered=covered,
            previous=previous,
            messages=[m for g in self.groups[first:start] for m in g.messages],
        )

    def use(self, summary: ContextSummary, start: int | None = None) -> None:
        """Send ``summary`` in place of the messages it covers."""
        if start is None:
            i = self._index(summary.through_id)
            start = (i + 1) if i is not None else self.start
        self.summary = summary
        self.start = start
        self.dropped = sum(len(g.messages) for g in self.groups[:start])

    def messages(self, tail: Sequence[ModelMessage] = ()) -> list[ModelMessage]:
        """The prompt: the head, the summary if any, the path from ``start``, the tail."""
        kept = [m for g in self.groups[self.start :] for m in g.messages]
        middle = [summary_message(self.summary)] if self.summary is not None else []
        return [*self.head, *middle, *kept, *tail]
