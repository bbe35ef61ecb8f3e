"""Every failure a handler meets becomes application/problem+json (RFC 9457), or a 4XX in the
protocol's own shape on a route that speaks another protocol (``Route.errors``)."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from actors.core.errors import DependencyUnavailableError, SessiondError
from server.appkeys import OUTAGES
from server.errors import http_code, outage, problem_response
from server.logs import redact_path
from server.routing import route_of

__all__ = ["FAILURE", "problem_middleware"]

log = logging.getLogger("sessiond.http")

# The error a problem answer was made from, for the middlewares outside this one (metrics).
FAILURE = web.RequestKey("failure", SessiondError)


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except SessiondError as exc:
        request[FAILURE] = exc
        route = route_of(request)
        if route is not None and route.errors is not None and exc.status < 500:
            return route.errors.render(exc)
        return problem_response(
            exc.status, exc.code, exc.title, exc.detail, retry_after=exc.retry_after, instance=request.path
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        resp = problem_response(exc.status, http_code(exc.status), exc.reason, exc.text or exc.reason,
                                instance=request.path)
        if "Allow" in exc.headers:  # a 405 says which methods would do
            resp.headers["Allow"] = exc.headers["Allow"]
        return resp
    except ConnectionResetError:
        raise
    except Exception as exc:
        what = outage(exc)
        if what is not None:
            # Redis or the database is away: the client retries; the log says so in one line.
            outages = request.config_dict.get(OUTAGES)
            if outages is None or outages.due(what):
                log.warning("%s unreachable (%s: %s): answering 503", what, type(exc).__name__, exc)
            err = DependencyUnavailableError(f"{what} is unreachable; retry shortly")
            request[FAILURE] = err
            return problem_response(
                err.status, err.code, err.title, err.detail, retry_after=err.retry_after, instance=request.path
            )
        log.exception("unhandled error on %s %s", request.method, redact_path(request.path))
        return problem_response(500, "internal_error", "Internal server error", "see the server log")
