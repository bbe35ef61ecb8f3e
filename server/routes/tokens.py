"""Session tokens: mint a pair for a session (API key), rotate a refresh token."""

from __future__ import annotations

from aiohttp import web

from actors.core.errors import NotFoundError, UnauthorizedError
from server.appkeys import STORE, TOKENS
from server.auth.principal import authorize_session, principal_of, require_key
from server.middleware.auth import REFRESH_ROUTE
from server.schema.common import json_response

__all__ = ["routes"]

routes = web.RouteTableDef()


@routes.post("/v1/sessions/{session_id}/tokens")
async def mint_tokens(request: web.Request) -> web.Response:
    principal = principal_of(request)
    require_key(principal)
    session_id = request.match_info["session_id"]
    record = await request.app[STORE].get_session(session_id)
    if record is None:
        raise NotFoundError(f"no session {session_id}")
    authorize_session(principal, record.id, record.namespace, record.end_user_id)
    pair = await request.app[TOKENS].issue(record, principal.key_id)
    return json_response(pair, headers={"Cache-Control": "no-store"})


@routes.post(REFRESH_ROUTE)
async def refresh_tokens(request: web.Request) -> web.Response:
    scheme, _, value = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise UnauthorizedError("send Authorization: Bearer rt_... (a refresh token)")
    pair = await request.app[TOKENS].refresh(value.strip())
    return json_response(pair, headers={"Cache-Control": "no-store"})
