"""The hidden summary nodes of one live session (actors/core/summary.py says what they are).

Held by the session's state beside its tree; only the actor changes them. A new summary
replaces the ones on its own path that cover less (they are of no more use to that path), and
at most ``MAX_SUMMARIES`` are kept, the newest.
"""

from __future__ import annotations

from collections.abc import Container, Iterable

from actors.core.records import PutSummary
from actors.core.summary import MAX_SUMMARIES, ContextSummary
from actors.core.tree import MessageTree

__all__ = ["Summaries"]


class Summaries:
    """The summaries of one session, oldest first."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[ContextSummary] = ()) -> None:
        self._items = list(items)

    def __len__(self) -> int:
        return len(self._items)

    def ids(self) -> list[str]:
        return [s.id for s in self._items]

    def on_path(self, path_ids: Container[str]) -> list[ContextSummary]:
        """The summaries hung on a message of this path (the ids of its nodes), oldest first."""
        return [s for s in self._items if s.through_id in path_ids]

    def save(self, session_id: str, summary: ContextSummary, tree: MessageTree) -> PutSummary:
        """Keep ``summary``; the op that stores it and removes the ones it replaces."""
        covered = {n.id for n in tree.path_to(summary.through_id)} if summary.through_id in tree else set()
        keep = [s for s in self._items if s.through_id not in covered and s.id != summary.id]
        keep.append(summary)
        dropped = [s.id for s in self._items if s not in keep]
        if len(keep) > MAX_SUMMARIES:
            dropped += [s.id for s in keep[: len(keep) - MAX_SUMMARIES]]
            keep = keep[len(keep) - MAX_SUMMARIES :]
        self._items = keep
        return PutSummary.of(session_id, summary, dropped)
