"""Durable records: what the store keeps of a session, and the write operations on it."""

from __future__ import annotations

from typing import Any

import msgspec

from actors.core.tree import Node, Usage

_enc = msgspec.json.Encoder()

__all__ = [
    "AgentRecord",
    "ApiKeyRecord",
    "Checkpoint",
    "DeleteSession",
    "DocumentRecord",
    "GuestRecord",
    "LoadedSession",
    "Op",
    "PutCheckpoint",
    "PutEvent",
    "PutMessage",
    "PutSession",
    "RefreshOutcome",
    "RefreshTokenRecord",
    "RouteEntry",
    "RunningTask",
    "SessionQuery",
    "SessionRecord",
    "Stats",
    "StoredEvent",
    "TokenFamilyRecord",
]


class RunningTask(msgspec.Struct):
    """A task the store believes is running: found at activation, it was interrupted."""

    task_id: str
    message_id: str
    reply_id: str | None = None  # None while queued behind another task


class SessionRecord(msgspec.Struct):
    """One session row: everything but its messages, checkpoints and events."""

    id: str
    namespace: str
    created_at: str
    last_active_at: str
    end_user_id: str | None = None
    agent_id: str | None = None
    title: str | None = None
    system_prompt: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    context: dict[str, Any] = msgspec.field(default_factory=dict)
    tools: list[str] = msgspec.field(default_factory=list)
    is_guest: bool = False
    guest_id: str | None = None
    active_leaf_id: str | None = None
    version: int = 1
    # Every event id ever handed out is <= seq_reserved (written before it is used), so a
    # restart after a crash continues above it and never reuses an id.
    seq_reserved: int = 0
    usage: Usage = msgspec.field(default_factory=Usage)
    message_count: int = 0
    running: list[RunningTask] = msgspec.field(default_factory=list)
    documents: list[str] = msgspec.field(default_factory=list)  # linked document ids


class Checkpoint(msgspec.Struct):
    id: str
    message_id: str
    created_at: str
    label: str


class StoredEvent(msgspec.Struct):
    seq: int
    type: str
    frame: bytes


class LoadedSession(msgspec.Struct):
    record: SessionRecord
    nodes: list[Node]
    checkpoints: list[Checkpoint]
    events: list[StoredEvent]  # the newest durable events, oldest first
    max_seq: int  # the highest durable event id


class PutSession(msgspec.Struct):
    """Upsert of a session row, encoded when the op is made: later mutations do not leak in."""

    id: str
    namespace: str
    end_user_id: str | None
    last_active_at: str
    body: bytes

    @classmethod
    def of(cls, r: SessionRecord) -> PutSession:
        return cls(r.id, r.namespace, r.end_user_id, r.last_active_at, _enc.encode(r))


class PutMessage(msgspec.Struct):
    session_id: str
    id: str
    body: bytes

    @classmethod
    def of(cls, session_id: str, node: Node) -> PutMessage:
        return cls(session_id, node.id, _enc.encode(node))


class PutCheckpoint(msgspec.Struct):
    session_id: str
    id: str
    body: bytes

    @classmethod
    def of(cls, session_id: str, cp: Checkpoint) -> PutCheckpoint:
        return cls(session_id, cp.id, _enc.encode(cp))


class PutEvent(msgspec.Struct):
    session_id: str
    event: StoredEvent


class DeleteSession(msgspec.Struct):
    session_id: str


Op = PutSession | PutMessage | PutCheckpoint | PutEvent | DeleteSession


class SessionQuery(msgspec.Struct):
    namespace: str | None = None
    end_user_id: str | None = None
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    limit: int = 20
    offset: int = 0
    # (last_active_at, id) of the last item of the previous page
    after: tuple[str, str] | None = None


class Stats:
    """Plain counters the actors bump and the server exports (no metrics library in here)."""

    __slots__ = ("activations", "crashes", "events", "passivations", "tasks_running", "tasks_started")

    def __init__(self) -> None:
        self.events = 0
        self.activations = 0
        self.passivations = 0
        self.crashes = 0
        self.tasks_started = 0
        self.tasks_running = 0


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


class RefreshOutcome(msgspec.Struct):
    """What presenting a refresh token did: ``rotated``, ``reused`` (family revoked), ``expired``
    or ``unknown``."""

    status: str
    family: TokenFamilyRecord | None = None


class GuestRecord(msgspec.Struct):
    """An anonymous visitor, found again by IP or browser fingerprint until it expires."""

    id: str
    namespace: str
    created_at: str
    expires_at: float  # epoch seconds
