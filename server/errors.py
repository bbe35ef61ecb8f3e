"""One error type to application/problem+json (RFC 9457), for every failure a handler meets."""

from __future__ import annotations

import logging

import msgspec
from aiohttp import web

from actors.core.errors import SessiondError

__all__ = ["Problem", "problem_middleware", "problem_response"]

log = logging.getLogger("sessiond.http")


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


@web.middleware
async def problem_middleware(request: web.Request, handler: web.Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except SessiondError as exc:
        return problem_response(
            exc.status, exc.code, exc.title, exc.detail, retry_after=exc.retry_after, instance=request.path
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        resp = problem_response(exc.status, code, exc.reason, exc.text or exc.reason, instance=request.path)
        if "Allow" in exc.headers:  # a 405 says which methods would do
            resp.headers["Allow"] = exc.headers["Allow"]
        return resp
    except ConnectionResetError:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem_response(500, "internal_error", "Internal server error", "see the server log")
