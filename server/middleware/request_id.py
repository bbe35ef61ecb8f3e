"""Every request gets an id: the client's ``X-Request-ID``, or a new one; it is answered back and
written in the request's log line."""

from __future__ import annotations

import time

import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler

__all__ = ["REQUEST_ID", "request_id_middleware"]

REQUEST_ID = web.RequestKey("request_id", str)


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    rid = request.headers.get("X-Request-ID") or msgspec.json.encode(time.time_ns()).decode()[-12:]
    request[REQUEST_ID] = rid
    response = await handler(request)
    if not response.prepared:
        response.headers["X-Request-ID"] = rid
    return response
