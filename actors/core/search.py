"""Full-text search over sessions: the query, its hits, and how a store's matches become hits.

Both stores find matching messages and titles with their own full-text index (SQLite FTS5,
PostgreSQL tsvector), kept in step with the rows in the same transaction; what they find is a
list of ``Match`` rows, and ``rank_hits`` folds those into one ``SearchHit`` per session,
ordered as asked. Pure: no I/O.
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
    "SearchHit",
    "SearchQuery",
    "SearchSort",
    "rank_hits",
    "terms",
]

SearchSort = Literal["relevance", "last_active", "created"]

MARK_START, MARK_END = "<mark>", "</mark>"
"""What a snippet's matching words are wrapped in (the rest of the snippet is the text as is)."""

MAX_MATCHES = 2000
"""Matching rows a store hands back at most, best first: enough for any page a person reads."""

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
    """One matching row: a message (``message_id``) or a session's title (``message_id`` None)."""

    session_id: str
    message_id: str | None
    snippet: str
    score: float  # higher is better; comparable within one store's answer only


class SearchHit(msgspec.Struct):
    session: SessionRecord
    score: float
    title_snippet: str | None = None
    message_ids: list[str] = msgspec.field(default_factory=list)  # best first
    snippets: list[tuple[str, str]] = msgspec.field(default_factory=list)  # (message id, snippet)


def rank_hits(matches: list[Match], sessions: dict[str, SessionRecord], query: SearchQuery) -> list[SearchHit]:
    """One hit per session of ``sessions`` that matched, ordered by ``query.sort``.

    A session's score is its best match's plus a tenth of the rest (many matching messages
    rank a little higher than one); a title match counts double.
    """
    hits: dict[str, SearchHit] = {}
    weighted: dict[str, list[float]] = {}
    for m in sorted(matches, key=lambda m: -m.score):
        record = sessions.get(m.session_id)
        if record is None:
            continue
        hit = hits.get(m.session_id)
        if hit is None:
            hit = hits[m.session_id] = SearchHit(record, 0.0)
        weighted.setdefault(m.session_id, []).append(m.score * (2.0 if m.message_id is None else 1.0))
        if m.message_id is None:
            hit.title_snippet = m.snippet
        elif len(hit.message_ids) < _MESSAGE_IDS_PER_HIT:
            hit.message_ids.append(m.message_id)
            if len(hit.snippets) < _SNIPPETS_PER_HIT:
                hit.snippets.append((m.message_id, m.snippet))
    for sid, scores in weighted.items():
        best = max(scores)
        hits[sid].score = best + (sum(scores) - best) / 10
    out = list(hits.values())
    match query.sort:
        case "relevance":
            out.sort(key=lambda h: (-h.score, h.session.id))
        case "last_active":
            out.sort(key=lambda h: (h.session.last_active_at, h.session.id), reverse=True)
        case "created":
            out.sort(key=lambda h: (h.session.created_at, h.session.id), reverse=True)
    return out
