"""Sessions: the bodies of create, patch, copy and merge, and a session as answered."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from actors.core.records import ForkRef, SessionRecord
from actors.core.retention import Retention
from actors.core.tree import Usage
from server.auth.tokens import TokenPair
from server.schema.common import RequestBody
from server.schema.tools import ClientToolBody

__all__ = [
    "CopyBody",
    "CreateSessionBody",
    "ForkBody",
    "MergeBody",
    "PatchSessionBody",
    "SessionList",
    "SessionOut",
    "SessionTokensOut",
    "session_out",
    "session_tokens_out",
    "token_fields",
]


class CreateSessionBody(RequestBody):
    agent_id: str | None = None
    system_prompt: str | None = None
    title: str | None = None
    namespace: str = "default"
    end_user_id: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    context: dict[str, Any] = msgspec.field(default_factory=dict)
    tools: list[str] = msgspec.field(default_factory=list)
    with_token: bool = False
    # Retention of its own (else its agent's or namespace's configured rule), or temporary:
    # deleted once idle for [retention] temporary_ttl_seconds. Not both.
    retention: Retention | None = None
    temporary: bool = False


class PatchSessionBody(RequestBody):
    title: str | msgspec.UnsetType | None = msgspec.UNSET
    metadata: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    context: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    tools: list[str] | msgspec.UnsetType = msgspec.UNSET
    client_tools: Annotated[list[ClientToolBody], msgspec.Meta(max_length=64)] | msgspec.UnsetType = msgspec.UNSET
    retention: Retention | msgspec.UnsetType | None = msgspec.UNSET  # null: back to the configured rule
    temporary: bool | msgspec.UnsetType = msgspec.UNSET


class CopyBody(RequestBody):
    title: str | None = None


class ForkBody(RequestBody):
    message_id: str  # the last message of the fork's history: any message, on any branch
    title: str | None = None  # None: the source's title


class MergeBody(RequestBody):
    session_ids: list[str]
    title: str | None = None


class SessionOut(msgspec.Struct):
    id: str
    agent_id: str | None
    namespace: str
    end_user_id: str | None
    title: str | None
    metadata: dict[str, Any]
    context: dict[str, Any]
    tools: list[str]
    is_guest: bool
    status: str
    created_at: str
    last_active_at: str
    message_count: int
    usage: Usage
    version: int
    system_prompt: str | None = None
    forked_from: ForkRef | None = None  # the session and message this one was forked from
    forks: list[ForkRef] = msgspec.field(default_factory=list)  # the sessions forked from this one
    retention: Retention | None = None  # its own rule (null: its agent's or namespace's, if any)
    temporary: bool = False


class SessionTokensOut(SessionOut, kw_only=True):
    """A new session with its first token pair (``with_token: true``)."""

    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str


class SessionList(msgspec.Struct):
    items: list[SessionOut]
    next_cursor: str | None


def _fields(r: SessionRecord) -> dict[str, Any]:
    return {
        "id": r.id,
        "agent_id": r.agent_id,
        "namespace": r.namespace,
        "end_user_id": r.end_user_id,
        "title": r.title,
        "metadata": r.metadata,
        "context": r.context,
        "tools": r.tools,
        "is_guest": r.is_guest,
        "status": "running" if r.running else "idle",
        "created_at": r.created_at,
        "last_active_at": r.last_active_at,
        "message_count": r.message_count,
        "usage": r.usage,
        "version": r.version,
        "system_prompt": r.system_prompt,
        "forked_from": r.forked_from,
        "forks": r.forks,
        "retention": r.retention,
        "temporary": r.temporary,
    }


def session_out(r: SessionRecord) -> SessionOut:
    return SessionOut(**_fields(r))


def token_fields(pair: TokenPair) -> dict[str, Any]:
    """The fields a pair adds to a session's answer (its session id is the session's own)."""
    return {
        "access_token": pair.access_token,
        "refresh_token": pair.refresh_token,
        "expires_in": pair.expires_in,
        "token_type": pair.token_type,
    }


def session_tokens_out(r: SessionRecord, pair: TokenPair) -> SessionTokensOut:
    return SessionTokensOut(**_fields(r), **token_fields(pair))
