"""The edge's tables: API keys, session tokens, guests, share links, agents and documents.

Kept by the same stores as the sessions (one database), but no session actor reads them:
they belong to the HTTP edge (server/auth) and the agent side (actors/agent).
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = [
    "AgentRecord",
    "ApiKeyRecord",
    "DocumentRecord",
    "GuestRecord",
    "RefreshLimit",
    "RefreshOutcome",
    "RefreshStatus",
    "RefreshTokenRecord",
    "RouteEntry",
    "ShareRecord",
    "TokenFamilyRecord",
]

RefreshStatus = Literal["rotated", "reused", "expired", "unknown", "rate_limited"]


class ApiKeyRecord(msgspec.Struct):
    id: str
    name: str
    secret_hash: str
    created_at: str
    revoked_at: str | None = None


# -- agents and documents -------------------------------------------------------------------


class RouteEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One step of a model route: a provider (``[providers.NAME]``) and a model it serves
    (None: the provider's own ``model``)."""

    provider: str
    model: str | None = None


class AgentRecord(msgspec.Struct, kw_only=True):
    """An agent: the system prompt, model route, tools and temperature a session talks to."""

    id: str
    name: str
    system_prompt: str = ""
    model: list[RouteEntry] = msgspec.field(default_factory=list)
    tools: list[str] = msgspec.field(default_factory=list)
    temperature: float | None = None
    approval: Literal["always", "never"] = "never"  # "always": every tool call waits for a person
    source: str = "api"  # "config" (config.toml, read-only) | "api"
    created_at: str = ""
    updated_at: str = ""


class DocumentRecord(msgspec.Struct, kw_only=True):
    """An uploaded file: kept under the data dir by the hash of its content, text extracted."""

    id: str
    name: str  # the uploaded file name, for display only (never used as a path)
    size: int
    content_type: str
    kind: str  # txt | md | json | csv | html | pdf
    sha256: str
    created_at: str
    # The owner: the end user it was uploaded for, else the guest, else the session it was
    # uploaded into; with none of them it is ``shared`` (an operator's explicit choice).
    end_user_id: str | None = None
    chars: int = 0  # length of the extracted text
    guest_id: str | None = None
    session_id: str | None = None
    shared: bool = False


# -- tokens and guests ----------------------------------------------------------------------


class TokenFamilyRecord(msgspec.Struct):
    """One grant of session tokens: every access and refresh token rotated from it shares it.

    Revoking the family (a reused refresh token, the session deleted) ends all of them.
    """

    id: str
    session_id: str
    namespace: str
    created_at: str
    end_user_id: str | None = None
    guest_id: str | None = None
    key_id: str | None = None  # the API key that minted it (per-key limits follow its tokens)
    revoked_at: str | None = None


class RefreshTokenRecord(msgspec.Struct):
    """A refresh token, known only by the hash of its secret."""

    hash: str
    family_id: str
    created_at: str
    expires_at: float  # epoch seconds
    used_at: str | None = None


class RefreshLimit(msgspec.Struct, frozen=True):
    """At most ``at_most`` tokens of a family made after ``since`` (a ``utcnow()`` timestamp)."""

    since: str
    at_most: int


class RefreshOutcome(msgspec.Struct):
    """What presenting a refresh token did: ``rotated``, ``reused`` (family revoked), ``expired``
    or ``unknown``."""

    status: RefreshStatus
    family: TokenFamilyRecord | None = None


class GuestRecord(msgspec.Struct):
    """An anonymous visitor, found again by IP or browser fingerprint until it expires."""

    id: str
    namespace: str
    created_at: str
    expires_at: float  # epoch seconds


# -- share links ----------------------------------------------------------------------------


class ShareRecord(msgspec.Struct, kw_only=True):
    """A read-only link to a session's conversation, known only by the hash of its token.

    It shows the path from the root to ``message_id`` (the active leaf when it was made), so
    what is written afterwards is not shared.
    """

    id: str
    session_id: str
    token_hash: str
    created_at: str
    message_id: str | None = None  # None: the session had no message when the link was made
    expires_at: float | None = None  # epoch seconds; None: until revoked
