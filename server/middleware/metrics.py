"""Every request counted and timed by its route's template (never the raw path: bounded label
values), and every 429 counted by the limit that refused it."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web
from aiohttp.typedefs import Handler

from server.appkeys import METRICS
from server.auth.ratelimit import LimitReachedError
from server.middleware.problem import FAILURE
from server.routing import route_of

__all__ = ["metrics_middleware"]

# A method is the client's to name (any token): the label keeps the known ones, and "other".
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    metrics = request.app.get(METRICS)
    if metrics is None:
        return await handler(request)
    route = route_of(request)
    label = route.path if route is not None else "(unmatched)"
    method = request.method if request.method in _METHODS else "other"
    started = time.perf_counter()
    status = 500
    try:
        response: web.StreamResponse = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = 499  # the client left before the answer was complete (nginx's code for it)
        raise
    finally:
        metrics.child(metrics.http_requests, method, label, str(status)).inc()
        if status == 429:
            failure = request.get(FAILURE)
            # A 429 that no limit named would be a bug; it is still counted, so none is missed.
            metrics.rate_limited(failure.limit if isinstance(failure, LimitReachedError) else "unnamed")
        metrics.child(metrics.http_seconds, method, label).observe(time.perf_counter() - started)
