"""Session tokens: mint a pair for a session (API key), rotate a refresh token."""

from __future__ import annotations

from aiohttp import web

from actors.core.errors import UnauthorizedError
from server.appkeys import TOKENS
from server.auth.principal import principal_of, require_key
from server.routes.common import session_of
from server.schema.common import json_response

__all__ = ["mint_tokens", "refresh_tokens"]

async def mint_tokens(request: web.Request) -> web.Response:
    principal = principal_of(request)
    require_key(principal)
    pair = await request.app[TOKENS].issue(session_of(request).record, principal.key_id)
    return json_response(pair, headers={"Cache-Control": "no-store"})


async def refresh_tokens(request: web.Request) -> web.Response:
    scheme, _, value = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise UnauthorizedError("send Authorization: Bearer rt_... (a refresh token)")
    pair = await request.app[TOKENS].refresh(value.strip())
    return json_response(pair, headers={"Cache-Control": "no-store"})
