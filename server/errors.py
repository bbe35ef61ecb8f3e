"""The problem answer (RFC 9457): its body, and the response made of it (the middleware that
turns failures into it is server/middleware/problem.py)."""

from __future__ import annotations

import math
import time

import msgspec
from aiohttp import web

__all__ = ["OutageLog", "Problem", "http_code", "outage", "problem_response"]


class Problem(msgspec.Struct, omit_defaults=True):
    type: str
    title: str
    status: int
    detail: str
    code: str
    instance: str | None = None


_enc = msgspec.json.Encoder()

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    503: "unavailable",
}


def problem_response(
    status: int, code: str, title: str, detail: str, *, retry_after: int | None = None, instance: str | None = None
) -> web.Response:
    body = Problem(f"https://sessiond.dev/problems/{code}", title, status, detail, code, instance)
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return web.Response(
        status=status, body=_enc.encode(body), content_type="application/problem+json", headers=headers
    )


def http_code(status: int) -> str:
    """The problem code of an HTTP error the router raised itself (404, 405, 413...)."""
    return _HTTP_CODES.get(status, "http_error")


def outage(exc: BaseException) -> str | None:
    """What could not be reached, if ``exc`` says Redis or the database is unreachable."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return "Redis"
    if type(exc).__module__.startswith("asyncpg"):
        from actors.store.postgres import pg_outage

        return "PostgreSQL" if pg_outage(exc) else None
    if isinstance(exc, OSError | TimeoutError):
        return "the database or Redis"
    return None


class OutageLog:
    """When each unreachable dependency was last said to be so: a request that meets an outage
    logs one line, and the next one only ``every`` seconds later, not one per request."""

    def __init__(self, every: float = 10.0) -> None:
        self._every = every
        self._last: dict[str, float] = {}

    def due(self, what: str) -> bool:
        """Whether to log that ``what`` is unreachable now (and, if so, remember it)."""
        now = time.monotonic()
        if now - self._last.get(what, -math.inf) < self._every:
            return False
        self._last[what] = now
        return True
