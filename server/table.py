"""Where each route is registered (server/table.py will hold every route once, with its facts)."""

from __future__ import annotations

from aiohttp import web

from server.routes import (
    agents,
    docs,
    documents,
    guests,
    messages,
    ops,
    sessions,
    stream,
    tokens,
    tools,
    transfer,
    usage,
    webpage,
)

__all__ = ["add_routes"]


def add_routes(app: web.Application) -> None:
    for module in (transfer, sessions, messages, stream, ops, docs, tokens, guests):
        app.router.add_routes(module.routes)
    for module in (agents, documents, tools, usage, webpage):
        app.router.add_routes(module.routes)
