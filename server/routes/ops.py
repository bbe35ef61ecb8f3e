"""Operations: liveness, readiness and metrics."""

from __future__ import annotations

import asyncio

from aiohttp import web

from actors.core.errors import NotFoundError, UnauthorizedError
from server.appkeys import CONFIG, KEYRING, METRICS, REGISTRY, STORE
from server.metrics import CONTENT_TYPE
from server.schema.common import json_response
from server.schema.ops import ReadyOut, StatusOut

__all__ = ["healthz", "metrics", "readyz"]

async def healthz(request: web.Request) -> web.Response:
    return json_response(StatusOut("ok"))


async def readyz(request: web.Request) -> web.Response:
    checks: dict[str, str] = {}
    ok = request.app[REGISTRY].accepting
    try:
        await request.app[STORE].ping()
        checks["store"] = "ok"
    except Exception as exc:
        checks["store"] = f"error: {exc}"
        ok = False
    cluster = request.app[REGISTRY].cluster
    if cluster is not None:
        # API.md: ready means the store and Redis are reachable; without Redis this node can
        # neither prove a lease nor fan out an event.
        try:
            await asyncio.wait_for(cluster.redis.ping(), 2)
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"error: {exc or type(exc).__name__}"
            ok = False
    return json_response(ReadyOut("ready" if ok else "not_ready", checks), status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    registry = request.app.get(METRICS)
    if registry is None:
        raise NotFoundError("metrics are turned off ([metrics] enabled = false)")
    if request.app[CONFIG].metrics.require_api_key:
        h = request.headers
        key = await request.app[KEYRING].verify(h.get("X-Client-ID"), h.get("X-Client-Secret"), h.get("X-API-Key"))
        if key is None:
            raise UnauthorizedError("GET /metrics needs X-API-Key here ([metrics] require_api_key = true)")
    return web.Response(body=registry.render(), headers={"Content-Type": CONTENT_TYPE})
