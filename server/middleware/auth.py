"""Authentication at the edge: every /v1 request gets a Principal or a 401.

An API key (``X-API-Key``, or ``X-Client-ID`` + ``X-Client-Secret``) may do everything; with
``X-End-User-ID`` it acts for that end user only. A session access token
(``Authorization: Bearer eyJ...``, or ``?token=`` on the stream route only, since browsers cannot
set headers on an EventSource) grants its own session's conversation routes and nothing else:
another session answers 404, any other route 403. A refresh token is accepted by
``POST /v1/tokens/refresh`` alone, which authenticates it itself.
"""

from __future__ import annotations

import re

from aiohttp import web
from aiohttp.typedefs import Handler

from actors.core.errors import ForbiddenError, NotFoundError, UnauthorizedError
from server.appkeys import KEYRING, REGISTRY, TOKENS
from server.auth.principal import PRINCIPAL, Principal, authorize_session
from server.auth.tokens import REFRESH_PREFIX

__all__ = ["REFRESH_ROUTE", "TOKEN_ROUTES", "auth_middleware", "authenticate_bearer_key", "route_shape"]

REFRESH_ROUTE = "/v1/tokens/refresh"
_STREAM_ROUTE = "/v1/sessions/{}/stream"
_S = "/v1/sessions/{}"

# What a session token may do in its own session: converse, stream, read its history, work its
# branches, upload. Anything else (a route added later included) is refused: 403.
TOKEN_ROUTES = frozenset(
    {
        ("POST", f"{_S}/messages"),
        ("GET", f"{_S}/messages"),
        ("GET", f"{_S}/tree"),
        ("GET", _STREAM_ROUTE),
        ("POST", f"{_S}/messages/{{}}/edit"),
        ("POST", f"{_S}/messages/{{}}/regenerate"),
        ("POST", f"{_S}/navigate"),
        ("POST", f"{_S}/cancel"),
        ("GET", f"{_S}/checkpoints"),
        ("POST", f"{_S}/checkpoints/{{}}/restore"),
        ("POST", f"{_S}/upload"),
        ("GET", f"{_S}/documents"),
        # The protocol adapters (server/protocols): the same conversation, another wire.
        ("POST", "/v1/ai-sdk/chat"),
        ("GET", "/v1/ai-sdk/chat/{}/stream"),
        ("POST", "/v1/ai-sdk/chat/{}/stop"),
        ("GET", "/v1/ai-sdk/chat/{}/messages"),
        ("POST", "/v1/ag-ui"),
        ("GET", "/v1/ag-ui/{}/stream"),
    }
)

_PARAM = re.compile(r"\{[^}]*\}")


def route_shape(request: web.Request) -> str | None:
    """The matched route's path with its parameters blanked (``/v1/sessions/{}/stream``)."""
    resource = request.match_info.route.resource
    if resource is None:
        return None
    return _PARAM.sub("{}", resource.canonical)


async def _authenticate(request: web.Request, shape: str | None) -> Principal:
    h = request.headers
    if "X-API-Key" in h or "X-Client-ID" in h or "X-Client-Secret" in h:
        key_id = await request.app[KEYRING].verify(h.get("X-Client-ID"), h.get("X-Client-Secret"), h.get("X-API-Key"))
        if key_id is None:
            raise UnauthorizedError("the API key is not valid")
        return Principal(kind="key", key_id=key_id, end_user_id=h.get("X-End-User-ID") or None)
    token: str | None = None
    auth = h.get("Authorization")
    if auth is not None:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise UnauthorizedError("send Authorization: Bearer <access token>")
        token = value.strip()
    elif request.method == "GET" and shape == _STREAM_ROUTE:
        token = request.query.get("token") or None
    if token is None:
        raise UnauthorizedError(
            "send X-API-Key, or X-Client-ID with X-Client-Secret, or Authorization: Bearer <access token>"
        )
    if token.startswith(REFRESH_PREFIX):
        raise UnauthorizedError(f"a refresh token is accepted only by POST {REFRESH_ROUTE}")
    return await request.app[TOKENS].principal(token)


async def authenticate_bearer_key(request: web.Request) -> Principal:
    """For clients that can send a credential only as ``Authorization: Bearer`` (the OpenAI
    SDK's ``api_key``): an API key there is an API key; a session token (a JWT) is a token.
    ``X-API-Key`` and the other headers work as everywhere else."""
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value and value.count(".") != 2 and not value.startswith(REFRESH_PREFIX):
        h = request.headers
        if not ("X-API-Key" in h or "X-Client-ID" in h or "X-Client-Secret" in h):
            key_id = await request.app[KEYRING].verify(None, None, value)
            if key_id is None:
                raise UnauthorizedError("the API key is not valid")
            return Principal(kind="key", key_id=key_id, end_user_id=h.get("X-End-User-ID") or None)
    return await _authenticate(request, route_shape(request))


def _check_token_scope(request: web.Request, principal: Principal, shape: str | None) -> None:
    if request.match_info.http_exception is not None:
        return  # no such route: the router's 404 or 405 stands
    session_id = request.match_info.get("session_id")
    if session_id is not None and session_id != principal.session_id:
        raise NotFoundError(f"no session {session_id}")  # never 403: no existence oracle
    if (request.method, shape) not in TOKEN_ROUTES:
        raise ForbiddenError("a session token may only converse in its own session; this needs an API key")


async def _check_end_user(request: web.Request, principal: Principal) -> None:
    """Another user's session answers 404 before anything else about the request is looked at
    (its body included), on every session route, present and future."""
    session_id = request.match_info.get("session_id")
    if session_id is None or request.match_info.http_exception is not None:
        return
    actor = await request.app[REGISTRY].get(session_id)  # 404 if there is no such session
    authorize_session(principal, session_id, actor.namespace, actor.end_user_id)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/v1/"):
        return await handler(request)
    shape = route_shape(request)
    if shape == REFRESH_ROUTE:
        return await handler(request)  # it checks the refresh token itself
    principal = await _authenticate(request, shape)
    if principal.kind == "token":
        _check_token_scope(request, principal, shape)
    elif principal.end_user_id is not None:
        await _check_end_user(request, principal)
    request[PRINCIPAL] = principal
    return await handler(request)
