"""Operations: liveness and readiness."""

from __future__ import annotations

from aiohttp import web

from server.state import REGISTRY, STORE
from server.wire import json_response

__all__ = ["routes"]

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    checks: dict[str, str] = {}
    ok = request.app[REGISTRY].accepting
    try:
        await request.app[STORE].ping()
        checks["store"] = "ok"
    except Exception as exc:
        checks["store"] = f"error: {exc}"
        ok = False
    body = {"status": "ready" if ok else "not_ready", "checks": checks}
    return json_response(body, status=200 if ok else 503)
