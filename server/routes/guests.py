"""Guests: a backend asks for a session for its anonymous visitor; lookups and usage."""

from __future__ import annotations

import time

from aiohttp import web

from actors.core.errors import InvalidRequestError, NotFoundError
from server.appkeys import CONFIG, GUESTS, LIMITER, REGISTRY, TOKENS
from server.auth.guests import guest_out, normalize_ip, verify_signed_id
from server.auth.principal import principal_of, require_key
from server.quota import guest_subject
from server.schema.common import decode_body, json_response
from server.schema.guests import GuestLimits, GuestSessionBody, GuestUsage, guest_session_out

__all__ = ["create_guest_session", "find_guest", "guest_usage"]

def _rfc3339(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


async def create_guest_session(request: web.Request) -> web.Response:
    principal = principal_of(request)
    require_key(principal, for_end_user=False)
    body = await decode_body(request, GuestSessionBody, empty_ok=False)
    ip = normalize_ip(body.ip)
    settings = request.app[CONFIG].guests
    signed = verify_signed_id(settings.id_secret, body.signed_id) if body.signed_id is not None else None
    guest, _ = await request.app[GUESTS].find_or_create(body.namespace, ip, body.fingerprint or None, signed=signed)
    registry = request.app[REGISTRY]
    record = registry.new_record(
        namespace=guest.namespace, agent_id=body.agent_id, is_guest=True, guest_id=guest.id
    )
    await registry.create(record)
    pair = await request.app[TOKENS].issue(record, principal.key_id)
    out = guest_session_out(record, pair, guest_out(guest))
    return json_response(out, status=201, headers={"Cache-Control": "no-store"})


async def find_guest(request: web.Request) -> web.Response:
    require_key(principal_of(request), for_end_user=False)
    q = request.query
    ip = normalize_ip(q["ip"]) if q.get("ip") else None
    fingerprint = q.get("fingerprint") or None
    if ip is None and fingerprint is None:
        raise InvalidRequestError("give ip, fingerprint or both")
    guest = await request.app[GUESTS].find(q.get("namespace") or "default", ip, fingerprint)
    if guest is None:
        raise NotFoundError("no guest matches")
    return json_response(guest_out(guest))


async def guest_usage(request: web.Request) -> web.Response:
    require_key(principal_of(request), for_end_user=False)
    guest_id = request.match_info["guest_id"]
    guest = await request.app[GUESTS].get(guest_id)
    if guest is None:
        raise NotFoundError(f"no guest {guest_id}")
    now = time.time()
    s = guest_subject(request.app[CONFIG].limits, guest.id)
    counts = await request.app[LIMITER].counts(s.name, now)
    return json_response(
        GuestUsage(
            guest_id=guest.id,
            messages_this_hour=counts.messages_this_hour,
            messages_today=counts.messages_today,
            tokens_today=counts.tokens_today,
            limits=GuestLimits(s.messages_per_hour, s.messages_per_day, s.tokens_per_day),
            hour_resets_at=_rfc3339((now // 3600 + 1) * 3600),
            day_resets_at=_rfc3339((now // 86400 + 1) * 86400),
        )
    )
