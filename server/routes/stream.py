"""GET /v1/sessions/{id}/stream: replay after Last-Event-ID, then live."""

from __future__ import annotations

from aiohttp import web

from actors.core.commands import Subscribe
from server.appkeys import CONFIG
from server.routes.common import ask, last_event_id
from server.sse import stream_events
from server.tasks import admitted

__all__ = ["stream"]


async def stream(request: web.Request) -> web.StreamResponse:
    last_id = last_event_id(request)
    with admitted(request, starts_task=False, opens_stream=True):
        sub = await ask(request, Subscribe(last_event_id=last_id))
        return await stream_events(request, sub, request.app[CONFIG].streams, sub.reset_cursor)
