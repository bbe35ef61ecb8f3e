"""Guests: the body of a guest session request, the session answered, a guest's usage."""

from __future__ import annotations

import msgspec

from actors.core.records import SessionRecord
from server.auth.guests import GuestOut
from server.auth.tokens import TokenPair
from server.schema.common import RequestBody
from server.schema.sessions import SessionTokensOut, session_out, token_fields

__all__ = ["GuestLimits", "GuestSessionBody", "GuestSessionOut", "GuestUsage", "guest_session_out"]


class GuestSessionBody(RequestBody):
    ip: str
    fingerprint: str | None = None
    # "ID.SIGNATURE" from the site's backend ([guests] id_secret): trusted before ip and fingerprint.
    signed_id: str | None = None
    agent_id: str | None = None
    namespace: str = "default"


class GuestSessionOut(SessionTokensOut, kw_only=True):
    """A guest's new session with its tokens (POST /v1/guests/sessions)."""

    guest: GuestOut


class GuestLimits(msgspec.Struct):
    messages_per_hour: int
    messages_per_day: int
    tokens_per_day: int


class GuestUsage(msgspec.Struct):
    guest_id: str
    messages_this_hour: int
    messages_today: int
    tokens_today: int
    limits: GuestLimits
    hour_resets_at: str
    day_resets_at: str


def guest_session_out(r: SessionRecord, pair: TokenPair, guest: GuestOut) -> GuestSessionOut:
    fields = msgspec.structs.asdict(session_out(r))
    return GuestSessionOut(**fields, **token_fields(pair), guest=guest)
