"""Answer bodies that handlers build as plain objects, typed for the client and the OpenAPI document.

The live-answer test (tests/test_openapi.py) validates the real answers against these.
"""

from __future__ import annotations

import msgspec

from server.auth.guests import GuestOut
from server.schema.wire import MessageOut, SessionOut

__all__ = ["CancelOut", "GuestSessionOut", "NavigateOut", "ReadyOut", "RestoreOut", "StatusOut"]


class StatusOut(msgspec.Struct):
    """``{"status": ...}``: liveness, and a session warmed by prepare."""

    status: str


class ReadyOut(msgspec.Struct):
    status: str  # ready | not_ready
    checks: dict[str, str]


class NavigateOut(msgspec.Struct):
    """The active path after a branch switch."""

    items: list[MessageOut]


class CancelOut(msgspec.Struct):
    task_id: str
    status: str


class RestoreOut(msgspec.Struct):
    """A restore without a hint: only the active leaf moves."""

    active_leaf_id: str | None


class GuestSessionOut(SessionOut, kw_only=True):
    """A guest's new session with its tokens (POST /v1/guests/sessions)."""

    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str
    guest: GuestOut
