"""Full-text search over sessions: the query, its hits, and how a store's matches become hits.

Both stores find matching messages and titles with their own full-text index (SQLite FTS5,
PostgreSQL tsvector), kept in step with the rows in the same transaction; what they find is a
list of ``Match`` rows, and ``rank_hits`` folds those into one ``SearchHit`` per session,
ordered as asked; only the page shown gets its records and snippets. Pure: no I/O.
"""

from __future__ import annotations

import re
from typing import Literal

import msgspec

from actors.core.records import SessionQuery, SessionRecord

__all__ = [
    "MARK_END",
    "MARK_START",
    "MAX_MATCHES",
    "Match",
    "Ranked",
    "SearchHit",
    "SearchQuery",
    "SearchSort",
    "hit_of",
    "rank_hits",
    "terms",
]

SearchSort = Literal["relevance", "last_active", "created"]

MARK_START, MARK_END = "<mark>", "</mark>"
"""What a snippet's matching words are wrapped in (the rest of the snippet is the text as is)."""

MAX_MATCHES = 2000
"""Matching rows a store ranks at most: for a word in more messages than this, the newest this
many matches are ranked (and only the sessions they are in are found): searching for a word in
half of all messages stays fast, at the price of older sessions that only it would find."""

_MESSAGE_IDS_PER_HIT = 50
_SNIPPETS_PER_HIT = 3
_WORD = re.compile(r"\w+", re.UNICODE)


def terms(q: str) -> list[str]:
    """The words of a search box's text, as both indexes split them (punctuation is a space).

    Every word must occur (AND); there is no query syntax, so no text is an error.
    """
    return [w.lower() for w in _WORD.findall(q)][:32]


class SearchQuery(msgspec.Struct):
    terms: list[str]
    filters: SessionQuery = msgspec.field(default_factory=SessionQuery)
    created_after: str | None = None
    created_before: str | None = None
    active_after: str | None = None
    active_before: str | None = None
    sort: SearchSort = "relevance"
    limit: int = 20
    offset: int = 0


class Match(msgspec.Struct, frozen=True):
    """One matching row: a message (``message_id``) or a session's title (``message_id`` None).

    ``key`` is the store's own handle of the row, to fetch its snippet with once it is shown.
    """

    session_id: str
    message_id: str | None
    score: float  # higher is better; comparable within one store's answer only
    key: int = 0


class Ranked(msgspec.Struct):
    """A session that matched, before its record and snippets are fetched (only a page is)."""

    session_id: str
    score: float
    title: Match | None = None
    messages: list[Match] = msgspec.field(default_factory=list)  # best first

    def snippet_keys(self) -> list[int]:
        return [m.key for m in self.messages[:_SNIPPETS_PER_HIT]]


class SearchHit(msgspec.Struct):
    session: SessionRecord
    score: float
    title_snippet: str | None = None
    message_ids: list[str] = msgspec.field(default_factory=list)  # best first
    snippets: list[tuple[str, str]] = msgspec.field(default_factory=list)  # (message id, snippet)


def rank_hits(
    matches: list[Match], query: SearchQuery, order: dict[str, tuple[str, str]] | None = None
) -> list[Ranked]:
    """One entry per session that matched, ordered by ``query.sort`` (``order`` gives each
    session's (created_at, last_active_at) for the sorts by time).

    A session's score is its best match's plus a tenth of the rest (many matching messages
    rank a little higher than one); a title match counts double.
    """
    hits: dict[str, Ranked] = {}
    weighted: dict[str, list[float]] = {}
    for m in sorted(matches, key=lambda m: -m.score):
        hit = hits.get(m.session_id)
        if hit is None:
            hit = hits[m.session_id] = Ranked(m.session_id, 0.0)
        weighted.setdefault(m.session_id, []).append(m.score * (2.0 if m.message_id is None else 1.0))
        if m.message_id is None:
            hit.title = m
        elif len(hit.messages) < _MESSAGE_IDS_PER_HIT:
            hit.messages.append(m)
    for sid, scores in weighted.items():
        best = max(scores)
        hits[sid].score = best + (sum(scores) - best) / 10
    out = list(hits.values())
    match query.sort:
        case "relevance":
            out.sort(key=lambda h: (-h.score, h.session_id))
        case "created" | "last_active":
            at = 0 if query.sort == "created" else 1
            times = order or {}
            out.sort(key=lambda h: (times.get(h.session_id, ("", ""))[at], h.session_id), reverse=True)
    return out


def hit_of(ranked: Ranked, record: SessionRecord, snippets: dict[int, str], title: str | None) -> SearchHit:
    """The answer for one ranked session, with its record and the snippets fetched for it."""
    return SearchHit(
        record,
        ranked.score,
        title,
        [m.message_id for m in ranked.messages if m.message_id is not None],
        [(m.message_id, snippets.get(m.key, "")) for m in ranked.messages[:_SNIPPETS_PER_HIT]
         if m.message_id is not None],
    )
