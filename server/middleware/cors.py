"""CORS: a frontend on another origin may call sessiond when ``[server] cors_origins`` names it.

Origins are matched exactly (scheme, host and port); none are allowed by default. A preflight
(``OPTIONS`` with ``Access-Control-Request-Method``) from an allowed origin is answered here,
before authentication: the browser sends it without credentials, so it would only ever get 401.
Every other answer to an allowed origin, streams and errors included, carries
``Access-Control-Allow-Origin``; the headers go on in ``on_response_prepare``, which runs for a
stream before its first byte as for any other response.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from server.config import ConfigError

__all__ = [
    "ALLOWED_HEADERS",
    "ALLOWED_METHODS",
    "EXPOSED_HEADERS",
    "MAX_AGE_SECONDS",
    "cors_middleware",
    "setup_cors",
]

ALLOWED_METHODS = "GET, POST, PUT, PATCH, DELETE"
# What a frontend sends: a session token, JSON, a version to match, a stream position, a retry
# key, and (a trusted backend-for-frontend on another origin) an API key.
ALLOWED_HEADERS = "Authorization, Content-Type, If-Match, Last-Event-ID, Idempotency-Key, X-API-Key, X-Request-ID"
# What a frontend reads: the version for If-Match, when to come back after a 503 or 429, and
# the request id to quote in a bug report.
EXPOSED_HEADERS = "ETag, Retry-After, X-Request-ID"
MAX_AGE_SECONDS = "600"

_ORIGINS = web.AppKey("cors_origins", frozenset)


def _checked(origins: Iterable[str]) -> frozenset[str]:
    out = set()
    for origin in origins:
        parts = urlsplit(origin)
        if origin == "*" or parts.scheme not in ("http", "https") or not parts.netloc or origin.rstrip("/") != (
            f"{parts.scheme}://{parts.netloc}"
        ):
            raise ConfigError(
                f"server.cors_origins: {origin!r} is not an origin; give each exactly, as the browser sends"
                " it (scheme://host[:port], no path, no wildcard)"
            )
        out.add(origin.rstrip("/").lower())
    return frozenset(out)


def _allowed(request: web.Request) -> str | None:
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is not None and origin.lower() in request.app[_ORIGINS]:
        return origin
    return None


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method == hdrs.METH_OPTIONS and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers:
        origin = _allowed(request)
        if origin is not None:
            return web.Response(
                status=204,
                headers={
                    hdrs.ACCESS_CONTROL_ALLOW_METHODS: ALLOWED_METHODS,
                    hdrs.ACCESS_CONTROL_ALLOW_HEADERS: ALLOWED_HEADERS,
                    hdrs.ACCESS_CONTROL_MAX_AGE: MAX_AGE_SECONDS,
                },
            )  # Allow-Origin and Vary are added on prepare, as for every answer
    return await handler(request)


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    # The answer depends on Origin: a cache must not give one origin's answer to another.
    response.headers.add(hdrs.VARY, hdrs.ORIGIN)
    origin = _allowed(request)
    if origin is not None:
        response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
        response.headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = EXPOSED_HEADERS


def setup_cors(app: web.Application, origins: Iterable[str]) -> None:
    """Allow ``origins`` (none: CORS stays off and nothing is added to any answer)."""
    allowed = _checked(origins)
    if not allowed:
        return
    app[_ORIGINS] = allowed
    app.middlewares.insert(0, cors_middleware)  # outermost: before authentication
    app.on_response_prepare.append(_on_prepare)
