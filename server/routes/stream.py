"""GET /v1/sessions/{id}/stream: replay after Last-Event-ID, then live."""

from __future__ import annotations

from aiohttp import web

from actors.core.commands import Subscribe
from actors.core.errors import BadHeaderError, InvalidRequestError
from server.appkeys import CONFIG
from server.middleware.auth import stream_recheck
from server.routes.common import ask
from server.sse import stream_events
from server.tasks import admitted

__all__ = ["stream"]

def _last_event_id(request: web.Request) -> int | None:
    raw = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    if raw is None or raw == "":
        return None
    if len(raw) > 18:  # bounded before int(): an event id is a count, never this long
        raise BadHeaderError("Last-Event-ID must be an event id this server sent")
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequestError("Last-Event-ID must be an event id this server sent") from None
    if value < 0:
        raise InvalidRequestError("Last-Event-ID must not be negative")
    return value


async def stream(request: web.Request) -> web.StreamResponse:
    last_id = _last_event_id(request)
    with admitted(request, starts_task=False, opens_stream=True):
        sub = await ask(request, Subscribe(last_event_id=last_id))
        return await stream_events(
            request, sub, request.app[CONFIG].streams, sub.reset_cursor, stream_recheck(request)
        )
