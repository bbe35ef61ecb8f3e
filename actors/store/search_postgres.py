"""Search in the PostgreSQL store: tsvector expression indexes over message content and titles.

GIN indexes on ``to_tsvector('simple', ...)`` of the rows themselves (schema steps 6 and 12): no
table or trigger to keep in step, the index changes in the transaction that writes the row. The
'simple' configuration splits and lowercases without stemming, as SQLite's unicode61 does. As on
SQLite, an answer being written (status ``running``) is not searchable until it ends.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from actors.core.records import decode_record
from actors.core.search import MARK_END, MARK_START, MAX_MATCHES, Match, SearchHit, SearchQuery, hit_of, rank_hits

__all__ = ["search_sessions"]


_Fetch = Callable[..., Awaitable[list[Any]]]

# The indexed expressions, written exactly as the indexes of schema steps 6 and 12 are. The headline
# options are constants of this module, written into the SQL as literals.
_CONTENT = "to_tsvector('simple'::regconfig, (m.body::jsonb)->>'content')"
# The content index's predicate (settled messages only; an answer being written is not searchable).
_SETTLED = "((m.body::jsonb)->>'status') IS DISTINCT FROM 'running'"
_TITLE = "to_tsvector('simple'::regconfig, COALESCE(s.body->>'title', ''))"
_HEADLINE = f"StartSel={MARK_START}, StopSel={MARK_END}, MaxWords=24, MinWords=8, MaxFragments=1"
_WHOLE = f"StartSel={MARK_START}, StopSel={MARK_END}, HighlightAll=true"  # a title is shown whole


async def search_sessions(fetch: _Fetch, query: SearchQuery) -> list[SearchHit]:
    """As the SQLite store's: sessions matching every word, ranked, a page of them (+1)."""
    if not query.terms:
        return []
    params: list[Any] = [" ".join(query.terms)]

    def param(value: Any) -> str:
        params.append(value)
        return f"${len(params)}"

    f = query.filters
    where: list[str] = []
    if f.namespace is not None:
        where.append(f"s.namespace = {param(f.namespace)}")
    if f.end_user_id is not None:
        where.append(f"s.end_user_id = {param(f.end_user_id)}")
    for key, value in f.metadata.items():
        where.append(f"s.body->'metadata'->>{param(key)} = {param(value)}")
    for sql, bound in (
        ("s.body->>'created_at' >= {}", query.created_after),
        ("s.body->>'created_at' < {}", query.created_before),
        ("s.last_active_at >= {}", query.active_after),
        ("s.last_active_at < {}", query.active_before),
    ):
        if bound is not None:
            where.append(sql.format(param(bound)))
    cond = "".join(f" AND {w}" for w in where)
    limit = param(MAX_MATCHES)
    # Ranking reads the rows' tsvectors only; headlines are made for the page alone, below.
    messages = await fetch(
        f"SELECT m.session_id, m.id, ts_rank({_CONTENT}, q), m.pos"
        " FROM messages m JOIN sessions s ON s.id = m.session_id, plainto_tsquery('simple'::regconfig, $1) q"
        f" WHERE {_SETTLED} AND {_CONTENT} @@ q{cond} ORDER BY 3 DESC LIMIT {limit}",
        *params,
    )
    titles = await fetch(
        f"SELECT s.id, NULL, ts_rank({_TITLE}, q), 0"
        " FROM sessions s, plainto_tsquery('simple'::regconfig, $1) q"
        f" WHERE {_TITLE} @@ q{cond} ORDER BY 3 DESC LIMIT {limit}",
        *params,
    )
    matches = [Match(r[0], r[1], float(r[2]), int(r[3])) for r in (*messages, *titles)]
    order = None
    if query.sort != "relevance":
        ids = list({m.session_id for m in matches})
        rows = await fetch(
            "SELECT id, body->>'created_at', last_active_at FROM sessions WHERE id = ANY($1::text[])", ids
        )
        order = {r[0]: (r[1], r[2]) for r in rows}
    page = rank_hits(matches, query, order)[query.offset : query.offset + query.limit + 1]
    if not page:
        return []
    ids = [h.session_id for h in page]
    rows = await fetch(
        f"SELECT id, body::text, ts_headline('simple'::regconfig, COALESCE(body->>'title', ''),"
        f" plainto_tsquery('simple'::regconfig, $2), '{_WHOLE}') FROM sessions WHERE id = ANY($1::text[])",
        ids, params[0],
    )
    records = {r[0]: decode_record(r[1]) for r in rows}
    titled = {r[0]: r[2] for r in rows}
    keys = [k for h in page for k in h.snippet_keys()]
    snippets: dict[int, str] = {}
    if keys:
        rows = await fetch(
            "SELECT pos, ts_headline('simple'::regconfig, (body::jsonb)->>'content',"
            f" plainto_tsquery('simple'::regconfig, $2), '{_HEADLINE}') FROM messages WHERE pos = ANY($1::bigint[])",
            keys, params[0],
        )
        snippets = {int(r[0]): r[1] for r in rows}
    return [
        hit_of(h, records[h.session_id], snippets, titled[h.session_id] if h.title else None)
        for h in page
        if h.session_id in records
    ]
