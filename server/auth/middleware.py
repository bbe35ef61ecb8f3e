"""Authentication at the edge: every /v1 request gets a Principal or a 401."""

from __future__ import annotations

from aiohttp import web

from actors.errors import UnauthorizedError
from server.auth.principal import Principal
from server.state import KEYRING

__all__ = ["auth_middleware", "PRINCIPAL", "principal_of"]

PRINCIPAL = web.RequestKey("principal", Principal)


def principal_of(request: web.Request) -> Principal:
    return request[PRINCIPAL]


@web.middleware
async def auth_middleware(request: web.Request, handler: web.Handler) -> web.StreamResponse:
    if not request.path.startswith("/v1/"):
        return await handler(request)
    h = request.headers
    key_id = await request.app[KEYRING].verify(
        h.get("X-Client-ID"), h.get("X-Client-Secret"), h.get("X-API-Key")
    )
    if key_id is None:
        raise UnauthorizedError("send X-API-Key, or X-Client-ID with X-Client-Secret")
    end_user = h.get("X-End-User-ID") or None
    request[PRINCIPAL] = Principal(kind="key", key_id=key_id, end_user_id=end_user)
    return await handler(request)
