"""What every session route does first: find the actor, check the caller may see it, ask."""

from __future__ import annotations

from typing import TypeVar

from aiohttp import web

from actors.core.commands import Command
from actors.core.errors import ActorStoppedError, InvalidRequestError
from actors.ports import SessionRef
from server.appkeys import REGISTRY
from server.auth.principal import authorize_session, principal_of

__all__ = ["ask", "bool_query", "if_match", "int_query", "session_actor"]

R = TypeVar("R")


async def session_actor(request: web.Request, session_id: str | None = None) -> SessionRef:
    """The actor of the route's session (or ``session_id``), if the caller may see it (else 404)."""
    if session_id is None:
        session_id = request.match_info["session_id"]
    actor = await request.app[REGISTRY].get(session_id)
    authorize_session(principal_of(request), session_id, actor.namespace, actor.end_user_id)
    return actor


async def ask(request: web.Request, command: Command[R], session_id: str | None = None) -> R:
    """Ask the caller's session; retried once when the actor was passivated meanwhile."""
    for attempt in (0, 1):
        actor = await session_actor(request, session_id)
        try:
            return await actor.ask(command)
        except ActorStoppedError:
            if attempt:
                raise
    raise AssertionError("unreachable")


def if_match(request: web.Request) -> int | None:
    """The session version in ``If-Match: "<version>"``; one that cannot match never will."""
    raw = request.headers.get("If-Match")
    if raw is None:
        return None
    value = raw.strip().removeprefix("W/").strip('"')
    return int(value) if value.isdigit() else -1


def int_query(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequestError(f"{name} must be an integer") from None
    if not lo <= value <= hi:
        raise InvalidRequestError(f"{name} must be between {lo} and {hi}")
    return value


_TRUE, _FALSE = ("1", "true", "yes"), ("", "0", "false", "no")


def bool_query(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "").lower()
    if value not in _TRUE and value not in _FALSE:
        raise InvalidRequestError(f"{name} must be true or false")
    return value in _TRUE
