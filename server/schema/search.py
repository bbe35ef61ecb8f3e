"""Search: a session that matched, with where, and a page of them."""

from __future__ import annotations

import msgspec

from actors.core.search import SearchHit
from server.schema.sessions import SessionOut, session_out

__all__ = ["SearchList", "SearchResult", "Snippet", "search_result"]


class Snippet(msgspec.Struct):
    message_id: str
    text: str  # a passage of the message, the matching words in <mark>...</mark>


class SearchResult(msgspec.Struct):
    session: SessionOut
    score: float  # higher is better; for ordering within one answer only
    title: str | None  # the title with its matching words marked, if the title matched
    message_ids: list[str]  # the matching messages, best first (any branch)
    snippets: list[Snippet]  # passages of the best few


class SearchList(msgspec.Struct):
    items: list[SearchResult]
    has_more: bool


def search_result(hit: SearchHit) -> SearchResult:
    return SearchResult(
        session_out(hit.session),
        round(hit.score, 6),
        hit.title_snippet,
        hit.message_ids,
        [Snippet(mid, text) for mid, text in hit.snippets],
    )
