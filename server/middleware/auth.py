"""Authentication at the edge: every /v1 request gets a Principal or a 401.

An API key (``X-API-Key``, or ``X-Client-ID`` + ``X-Client-Secret``) may do everything; with
``X-End-User-ID`` it acts for that end user only. A session access token
(``Authorization: Bearer eyJ...``, or ``?token=`` on the stream route only, since browsers cannot
set headers on an EventSource) grants its own session's conversation routes (``token=True`` in
server/table.py) and nothing else: another session answers 404, any other route 403. On a route
marked ``bearer_key`` an API key may also come as ``Authorization: Bearer``. A refresh
token is accepted by ``POST /v1/tokens/refresh`` alone, which authenticates it itself.

A route with ``{session_id}`` has its session looked up and authorized here, once, for every kind
of caller (``request[SESSION]``): the quota and the handler reuse it.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from actors.core.errors import ForbiddenError, NotFoundError, SessiondError, UnauthorizedError
from server.appkeys import KEYRING, REGISTRY, TOKENS
from server.auth.principal import PRINCIPAL, SESSION, Principal, authorize_session
from server.auth.tokens import REFRESH_PREFIX
from server.routing import Route, route_of

__all__ = [
    "REFRESH_ROUTE",
    "BadHeaderError",
    "auth_middleware",
]

REFRESH_ROUTE = "/v1/tokens/refresh"


class BadHeaderError(SessiondError):
    status, code, title = 400, "bad_header", "A request header is not valid"


def _end_user_header(request: web.Request) -> str | None:
    """The end user an API key acts for. Fail closed: a blank or repeated X-End-User-ID is a
    400, never "no end user" (which is the operator, who sees everything)."""
    values = request.headers.getall("X-End-User-ID", [])
    if not values:
        return None
    if len(values) > 1:
        raise BadHeaderError("send X-End-User-ID once")
    if not values[0].strip():
        raise BadHeaderError("X-End-User-ID is empty; leave the header out to act as the operator")
    return values[0]


async def _key(request: web.Request, client_id: str | None, secret: str | None, key: str | None) -> Principal:
    key_id = await request.app[KEYRING].verify(client_id, secret, key)
    if key_id is None:
        raise UnauthorizedError("the API key is not valid")
    return Principal(kind="key", key_id=key_id, end_user_id=_end_user_header(request))


async def _authenticate(request: web.Request, route: Route | None) -> Principal:
    h = request.headers
    if "X-API-Key" in h or "X-Client-ID" in h or "X-Client-Secret" in h:
        return await _key(request, h.get("X-Client-ID"), h.get("X-Client-Secret"), h.get("X-API-Key"))
    token: str | None = None
    auth = h.get("Authorization")
    if auth is not None:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise UnauthorizedError("send Authorization: Bearer <access token>")
        token = value.strip()
    elif request.method == "GET" and route is not None and route.token_in_query:
        token = request.query.get("token") or None
    if token is None:
        raise UnauthorizedError(
            "send X-API-Key, or X-Client-ID with X-Client-Secret, or Authorization: Bearer <access token>"
        )
    if route is not None and route.bearer_key and token.count(".") != 2 and not token.startswith(REFRESH_PREFIX):
        # A client that can send its credential only so (the OpenAI SDK's api_key): what is not
        # a JWT is an API key.
        return await _key(request, None, None, token)
    if token.startswith(("sk_", "sk-")):  # an API key where an access token goes
        raise UnauthorizedError("an API key goes in the X-API-Key header, not in Authorization: Bearer")
    if token.startswith(REFRESH_PREFIX):
        raise UnauthorizedError(f"a refresh token is accepted only by POST {REFRESH_ROUTE}")
    return await request.app[TOKENS].principal(token)


def _check_token_scope(request: web.Request, principal: Principal, route: Route) -> None:
    session_id = request.match_info.get("session_id")
    if session_id is not None and session_id != principal.session_id:
        raise NotFoundError(f"no session {session_id}")  # never 403: no existence oracle
    if not route.token:
        raise ForbiddenError("a session token may only converse in its own session; this needs an API key")


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    route = route_of(request)
    if route is None:
        if request.path.startswith("/v1/"):
            await _authenticate(request, None)  # credentials first; then the router's 404 or 405
        return await handler(request)
    if route.public or route.refresh:
        return await handler(request)  # the refresh route checks its refresh token itself
    principal = await _authenticate(request, route)
    if principal.kind == "token":
        _check_token_scope(request, principal, route)
    session_id = request.match_info.get("session_id")
    if session_id is not None:
        # The one look-up of the route's session: authorized here, before anything else about the
        # request is looked at (its body included), then reused by the quota and the handler.
        ref = await request.app[REGISTRY].get(session_id)  # 404 if there is no such session
        authorize_session(principal, session_id, ref.namespace, ref.end_user_id)
        request[SESSION] = ref
    request[PRINCIPAL] = principal
    return await handler(request)
