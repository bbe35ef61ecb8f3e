"""Token usage per end user (``GET /v1/usage?end_user_id=``)."""

from __future__ import annotations

from aiohttp import web

from actors.core.errors import InvalidRequestError, NotFoundError
from server.appkeys import STORE
from server.auth.principal import principal_of
from server.schema.common import json_response
from server.schema.usage import EndUserUsage

__all__ = ["end_user_usage"]

async def end_user_usage(request: web.Request) -> web.Response:
    principal = principal_of(request)
    end_user = request.query.get("end_user_id") or principal.end_user_id
    if end_user is None:
        raise InvalidRequestError("end_user_id is required")
    if principal.end_user_id is not None and end_user != principal.end_user_id:
        raise NotFoundError(f"no end user {end_user}")  # acting for one user: no other is visible
    sessions, usage = await request.app[STORE].end_user_usage(end_user)
    return json_response(EndUserUsage(end_user, sessions, usage))
