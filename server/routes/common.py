"""What session routes share: the session the auth middleware resolved, asking it, query values."""

from __future__ import annotations

import base64
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from actors.core.commands import Command
from actors.core.errors import ActorStoppedError, BadHeaderError, InvalidRequestError
from actors.ports import SessionRef
from server.appkeys import REGISTRY
from server.auth.principal import SESSION, authorize_session, principal_of
from server.routing import route_of

__all__ = [
    "ask",
    "bool_query",
    "decode_cursor",
    "encode_cursor",
    "idempotency_key",
    "if_match",
    "int_query",
    "last_event_id",
    "look_up",
    "session_of",
]

R = TypeVar("R")
K = TypeVar("K")


def session_of(request: web.Request) -> SessionRef:
    """The route's session, found and authorized once per request by the auth middleware."""
    return request[SESSION]


async def look_up(request: web.Request, session_id: str) -> SessionRef:
    """Session ``session_id``, if the caller may see it (else 404, never 403: no existence oracle)."""
    ref = await request.app[REGISTRY].get(session_id)
    authorize_session(principal_of(request), session_id, ref.namespace, ref.end_user_id)
    return ref


async def ask(request: web.Request, command: Command[R], session_id: str | None = None) -> R:
    """Ask the route's session (or ``session_id``); once more, looked up again, if the actor was
    stopped meanwhile (passivated, or moved to another node)."""
    ref = session_of(request) if session_id is None else await look_up(request, session_id)
    try:
        return await ref.ask(command)
    except ActorStoppedError:
        ref = await look_up(request, ref.id)
        if session_id is None:
            request[SESSION] = ref
        return await ref.ask(command)


# A version is a count of changes: 18 digits are far more than any session reaches, and a
# longer header is refused before int() (which refuses past 4 300 digits with an error of its own).
_MAX_VERSION_DIGITS = 18


def if_match(request: web.Request) -> int | None:
    """The session version in ``If-Match: "<version>"``; one that cannot match never will."""
    raw = request.headers.get("If-Match")
    if raw is None:
        return None
    value = raw.strip().removeprefix("W/").strip('"')
    if len(value) > _MAX_VERSION_DIGITS:
        raise BadHeaderError(f'If-Match must be a session version: "<version>", at most {_MAX_VERSION_DIGITS} digits')
    return int(value) if value.isdigit() and value.isascii() else -1


def idempotency_key(request: web.Request, client_message_id: str | None) -> str | None:
    """The request's ``Idempotency-Key`` header or the body's ``client_message_id`` (one, or both equal)."""
    header = request.headers.get("Idempotency-Key")
    if header is not None and client_message_id is not None and header != client_message_id:
        raise InvalidRequestError("Idempotency-Key and client_message_id differ")
    key = header if header is not None else client_message_id
    if key is not None and not (0 < len(key) <= 255 and key.isascii() and key.isprintable()):
        raise InvalidRequestError("an idempotency key is 1 to 255 printable ASCII characters")
    return key


def last_event_id(request: web.Request) -> int | None:
    """The ``Last-Event-ID`` header or ``last_event_id`` query value: where a stream resumes."""
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


def int_query(request: web.Request, name: str) -> int:
    """Query parameter ``name``, within the bounds and with the default its Route declares."""
    route = route_of(request)
    assert route is not None, "only a matched route has query parameters"
    schema = route.param(name).schema
    default, lo, hi = int(schema["default"]), int(schema["minimum"]), int(schema["maximum"])
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


def encode_cursor(*key: Any) -> str:
    """An opaque page cursor: the listing's sort key of the last item it gave out."""
    return base64.urlsafe_b64encode(msgspec.json.encode(key)).decode()


def decode_cursor(cursor: str, key: type[K]) -> K:
    """The sort key an ``encode_cursor`` cursor holds, as ``key`` (a tuple type); anything else
    the client made up is a 400."""
    try:
        return msgspec.json.decode(base64.urlsafe_b64decode(cursor.encode()), type=key)
    except (ValueError, msgspec.DecodeError):
        raise InvalidRequestError("cursor is not one this server gave out") from None
