"""Search in the SQLite store: FTS5 over message content and session titles.

The indexes are external-content FTS5 tables kept by triggers on ``messages`` and ``sessions``
(schema step 6), so every write the group commit makes, an import's insert and a session's
delete included, changes the index in the same transaction: a message is searchable once it is
acknowledged, and gone once its session is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec

from actors.core.records import SessionQuery, SessionRecord
from actors.core.search import MARK_END, MARK_START, MAX_MATCHES, Match, SearchHit, SearchQuery, rank_hits

__all__ = ["search_sessions", "session_filters"]

_dec_record = msgspec.json.Decoder(SessionRecord)

Fetch = Callable[[str, Sequence[Any]], Awaitable[list[Any]]]


def session_filters(query: SessionQuery, alias: str = "") -> tuple[list[str], list[Any]]:
    """The WHERE terms (and their parameters) of a session listing's filters."""
    p = f"{alias}." if alias else ""
    where: list[str] = []
    params: list[Any] = []
    if query.namespace is not None:
        where.append(f"{p}namespace = ?")
        params.append(query.namespace)
    if query.end_user_id is not None:
        where.append(f"{p}end_user_id = ?")
        params.append(query.end_user_id)
    for key, value in query.metadata.items():
        path = '$.metadata."' + key + '"'
        # Booleans compare as "true"/"false"; strings and numbers by their text.
        where.append(
            f"(CASE json_type({p}body, ?) WHEN 'true' THEN 'true' WHEN 'false' THEN 'false'"
            f" ELSE CAST(json_extract({p}body, ?) AS TEXT) END) = ?"
        )
        params += [path, path, value]
    return where, params


def _filters(query: SearchQuery) -> tuple[str, list[Any]]:
    where, params = session_filters(query.filters, "s")
    for sql, value in (
        ("json_extract(s.body, '$.created_at') >= ?", query.created_after),
        ("json_extract(s.body, '$.created_at') < ?", query.created_before),
        ("s.last_active_at >= ?", query.active_after),
        ("s.last_active_at < ?", query.active_before),
    ):
        if value is not None:
            where.append(sql)
            params.append(value)
    return "".join(f" AND {w}" for w in where), params


async def search_sessions(fetch: Fetch, query: SearchQuery) -> list[SearchHit]:
    """Every session matching ``query`` (all its words, in a title or any message of any
    branch), ranked and sorted, from ``query.offset`` on, ``query.limit`` + 1 at most."""
    if not query.terms:
        return []
    # Each word quoted: FTS5 query syntax never reaches the index from a search box.
    match = " ".join('"' + t.replace('"', '""') + '"' for t in query.terms)
    cond, params = _filters(query)
    messages = await fetch(
        "SELECT m.session_id, m.id, snippet(message_fts, 0, ?, ?, '…', 16), -bm25(message_fts)"
        " FROM message_fts JOIN messages m ON m.pos = message_fts.rowid JOIN sessions s ON s.id = m.session_id"
        f" WHERE message_fts MATCH ?{cond} ORDER BY bm25(message_fts) LIMIT ?",
        [MARK_START, MARK_END, match, *params, MAX_MATCHES],
    )
    titles = await fetch(
        "SELECT t.session_id, NULL, highlight(title_fts, 0, ?, ?), -bm25(title_fts)"
        " FROM title_fts JOIN session_titles t ON t.pos = title_fts.rowid JOIN sessions s ON s.id = t.session_id"
        f" WHERE title_fts MATCH ?{cond} ORDER BY bm25(title_fts) LIMIT ?",
        [MARK_START, MARK_END, match, *params, MAX_MATCHES],
    )
    matches = [Match(*row) for row in (*messages, *titles)]
    ids = list({m.session_id for m in matches})
    sessions: dict[str, SessionRecord] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        rows = await fetch(f"SELECT body FROM sessions WHERE id IN ({','.join('?' * len(chunk))})", chunk)
        for (body,) in rows:
            record = _dec_record.decode(body)
            sessions[record.id] = record
    return rank_hits(matches, sessions, query)[query.offset : query.offset + query.limit + 1]
