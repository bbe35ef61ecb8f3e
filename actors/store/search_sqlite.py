"""Search in the SQLite store: FTS5 over message content and session titles.

The indexes are external-content FTS5 tables kept by triggers on ``messages`` and ``sessions``
(schema steps 6 and 12), so every write the group commit makes, an import's insert and a
session's delete included, changes the index in the same transaction: a message is searchable
once it is acknowledged, and gone once its session is. An answer being written (status
``running``) is searchable once it ends: the folds of its text so far are not indexed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from actors.core.records import SessionQuery, decode_record
from actors.core.search import MARK_END, MARK_START, MAX_MATCHES, Match, SearchHit, SearchQuery, hit_of, rank_hits

__all__ = ["search_sessions", "session_filters"]


_Fetch = Callable[[str, Sequence[Any]], Awaitable[list[Any]]]


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


async def _ranked(
    fetch: _Fetch, fts: str, table: str, alias: str, match: str, cond: str, params: list[Any]
) -> list[Any]:
    """(session id, message id or None, score, key) of the best rows of ``fts``, at most MAX_MATCHES.

    FTS5 scores every row it ranks, so a word in half of all messages would cost a scan of
    half the index. The newest MAX_MATCHES matches are found first, newest first, which stops
    early; only they are ranked. Below that many matches, that is every match.
    """
    join = f" JOIN {table} ON {alias}.pos = {fts}.rowid"
    if cond:
        join += f" JOIN sessions s ON s.id = {alias}.session_id"
    bound = await fetch(
        f"SELECT {fts}.rowid FROM {fts}{join} WHERE {fts} MATCH ?{cond} ORDER BY {fts}.rowid DESC LIMIT 1 OFFSET ?",
        [match, *params, MAX_MATCHES - 1],
    )
    newest = f" AND {fts}.rowid >= ?" if bound else ""
    message_id = f"{alias}.id" if alias == "m" else "NULL"
    return await fetch(
        f"SELECT {alias}.session_id, {message_id}, -{fts}.rank, {alias}.pos FROM {fts}{join}"
        f" WHERE {fts} MATCH ?{cond}{newest} ORDER BY {fts}.rank LIMIT ?",
        [match, *params, *(bound[0] if bound else ()), MAX_MATCHES],
    )


def _in(values: Sequence[Any]) -> str:
    return ",".join("?" * len(values))


async def search_sessions(fetch: _Fetch, query: SearchQuery) -> list[SearchHit]:
    """Every session matching ``query`` (all its words, in a title or any message of any
    branch), ranked and sorted, from ``query.offset`` on, ``query.limit`` + 1 at most.

    Ranking reads only the index; records and snippets are fetched for the page alone.
    """
    if not query.terms:
        return []
    # Each word quoted: FTS5 query syntax never reaches the index from a search box.
    match = " ".join('"' + t.replace('"', '""') + '"' for t in query.terms)
    cond, params = _filters(query)
    messages = await _ranked(fetch, "message_fts", "messages m", "m", match, cond, params)
    titles = await _ranked(fetch, "title_fts", "session_titles t", "t", match, cond, params)
    matches = [Match(*row) for row in (*messages, *titles)]
    order: dict[str, tuple[str, str]] | None = None
    if query.sort != "relevance":
        ids = list({m.session_id for m in matches})
        order = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = await fetch(
                "SELECT id, json_extract(body, '$.created_at'), last_active_at FROM sessions"
                f" WHERE id IN ({_in(chunk)})",
                chunk,
            )
            order.update((r[0], (r[1], r[2])) for r in rows)
    page = rank_hits(matches, query, order)[query.offset : query.offset + query.limit + 1]
    if not page:
        return []
    ids = [h.session_id for h in page]
    records = {
        r.id: r for r in (decode_record(b) for (b,) in await fetch(
            f"SELECT body FROM sessions WHERE id IN ({_in(ids)})", ids))
    }
    keys = [k for h in page for k in h.snippet_keys()]
    snippets: dict[int, str] = {}
    if keys:
        rows = await fetch(
            "SELECT rowid, snippet(message_fts, 0, ?, ?, '…', 16) FROM message_fts"
            f" WHERE message_fts MATCH ? AND rowid IN ({_in(keys)})",
            [MARK_START, MARK_END, match, *keys],
        )
        snippets = {r[0]: r[1] for r in rows}
    title_keys = [h.title.key for h in page if h.title is not None]
    titled: dict[int, str] = {}
    if title_keys:
        rows = await fetch(
            "SELECT rowid, highlight(title_fts, 0, ?, ?) FROM title_fts"
            f" WHERE title_fts MATCH ? AND rowid IN ({_in(title_keys)})",
            [MARK_START, MARK_END, match, *title_keys],
        )
        titled = {r[0]: r[1] for r in rows}
    return [
        hit_of(h, records[h.session_id], snippets, titled.get(h.title.key) if h.title else None)
        for h in page
        if h.session_id in records
    ]
