"""Adapters that speak the protocols frontends already use, over the same sessions.

``add_protocol_routes(app)`` registers every adapter's routes; each module keeps the facts of
its routes (summary, token allowed, starts a task, SSE) in a list beside its handlers.
"""

from __future__ import annotations

from aiohttp import web

from server.protocols.common import ProtocolRoute, add_protocol_table

__all__ = ["add_protocol_routes", "protocol_routes"]


def protocol_routes() -> list[ProtocolRoute]:
    """Every adapter route with its facts (summary, token, task, SSE, bodies)."""
    from server.protocols.ag_ui import AG_UI_ROUTES
    from server.protocols.ai_sdk import AI_SDK_ROUTES
    from server.protocols.openai_conversations import CONVERSATIONS_ROUTES
    from server.protocols.openai_responses import RESPONSES_ROUTES

    return [*AI_SDK_ROUTES, *AG_UI_ROUTES, *RESPONSES_ROUTES, *CONVERSATIONS_ROUTES]


def add_protocol_routes(app: web.Application) -> None:
    add_protocol_table(app, protocol_routes())
