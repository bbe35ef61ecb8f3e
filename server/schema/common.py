"""What every resource's schema shares: the request-body base, decode_body and json_response."""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from actors.core.errors import InvalidRequestError, PayloadTooLargeError, SessiondError
from server.appkeys import CONFIG

__all__ = ["BadJsonError", "BodyTimeoutError", "RequestBody", "body_deadline", "decode_body", "json_response"]

T = TypeVar("T")


class RequestBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A JSON request body: unknown fields are refused (422), so a typo never passes silently."""


class BadJsonError(SessiondError):
    status, code, title = 400, "bad_json", "The body is not valid JSON"


class BodyTimeoutError(SessiondError):
    status, code, title = 408, "body_timeout", "The request body did not arrive in time"


def body_deadline(request: web.Request, limit: int) -> float:
    """Seconds the body of ``request`` may take: [server] body_timeout_seconds, plus its length
    (or ``limit`` when it is chunked) at min_body_bytes_per_second. A client trickling its body
    would otherwise hold a socket, and a handler, for as long as it likes."""
    server = request.app[CONFIG].server
    length = request.content_length if request.content_length is not None else limit
    rate = server.min_body_bytes_per_second
    return server.body_timeout_seconds + (min(length, limit) / rate if rate > 0 else 0.0)


_encoder = msgspec.json.Encoder()
# One decoder per body type, made at first use (msgspec's advice: reuse them).
_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}


async def decode_body(request: web.Request, type_: type[T], *, empty_ok: bool = True) -> T:
    """The one place that turns a request body into a typed value (or a 400/413/422)."""
    try:
        if request.content.is_eof():
            # All of it came already (a small body arrives with its headers): no wait to bound,
            # and no timer to start and cancel on every request.
            raw = await request.read()
        else:
            deadline = body_deadline(request, request.client_max_size)
            try:
                async with asyncio.timeout(deadline):
                    raw = await request.read()
            except TimeoutError:
                raise BodyTimeoutError(f"the body did not arrive within {deadline:.0f} s") from None
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLargeError(f"the body is larger than {request.client_max_size} bytes") from None
    if not raw.strip():
        if not empty_ok:
            raise InvalidRequestError("a JSON body is required")
        raw = b"{}"
    decoder = _decoders.get(type_)
    if decoder is None:
        decoder = _decoders[type_] = msgspec.json.Decoder(type_)
    try:
        return decoder.decode(raw)  # type: ignore[no-any-return]
    except msgspec.ValidationError as exc:
        raise InvalidRequestError(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise BadJsonError(str(exc)) from None
    except RecursionError:
        # JSON nested past the decoder's depth (~1 000 levels): the client's mistake, not ours.
        raise BadJsonError("the JSON nests too deeply") from None


def json_response(value: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=_encoder.encode(value), status=status, content_type="application/json", headers=headers)
