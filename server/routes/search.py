"""GET /v1/sessions/search: full-text search over titles and messages, every branch."""

from __future__ import annotations

from aiohttp import web

from actors.core.errors import InvalidRequestError
from actors.core.search import SearchQuery, SearchSort, terms
from server.appkeys import STORE
from server.auth.principal import principal_of
from server.routes.common import int_query
from server.routes.sessions import session_query
from server.schema.common import json_response
from server.schema.search import SearchList, search_result

__all__ = ["search_sessions"]

_SORTS: tuple[SearchSort, ...] = ("relevance", "last_active", "created")


async def search_sessions(request: web.Request) -> web.Response:
    q = request.query
    words = terms(q.get("q", ""))
    if not words:
        raise InvalidRequestError("q must hold at least one word")
    sort = q.get("sort", "relevance")
    if sort not in _SORTS:
        raise InvalidRequestError(f"sort must be one of {', '.join(_SORTS)}")
    limit = int_query(request, "limit")
    # The list's own filters, and who the caller may see, exactly as GET /v1/sessions has them.
    filters = session_query(request, limit=limit, offset=0)
    query = SearchQuery(
        words,
        filters,
        created_after=q.get("created_after"),
        created_before=q.get("created_before"),
        active_after=q.get("active_after"),
        active_before=q.get("active_before"),
        sort=sort,  # type: ignore[arg-type]  # checked against _SORTS above
        limit=limit,
        offset=int_query(request, "offset"),
    )
    hits = await request.app[STORE].search_sessions(query)
    principal = principal_of(request)
    if principal.session_id is not None:  # a session token finds at most its own session
        hits = [h for h in hits if h.session.id == principal.session_id]
    return json_response(SearchList([search_result(h) for h in hits[:limit]], len(hits) > limit))
