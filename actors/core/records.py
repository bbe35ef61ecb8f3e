"""Durable records: what the store keeps of a session, and the write operations on it.

Session data only; the edge's tables (keys, tokens, guests, agents, documents) are in
actors/store/tables.py.
"""

from __future__ import annotations

from typing import Any

import msgspec

from actors.core.retention import Retention, epoch_of
from actors.core.summary import ContextSummary
from actors.core.tree import Node, Usage

_enc = msgspec.json.Encoder()

__all__ = [
    "IDEMPOTENCY_WINDOW_SECONDS",
    "MAX_IDEMPOTENT_REQUESTS",
    "Checkpoint",
    "Claim",
    "ClientTool",
    "Fence",
    "ForkRef",
    "IdempotentRequest",
    "KeepEvents",
    "LoadedSession",
    "Op",
    "PutCheckpoint",
    "PutDelivery",
    "PutEvent",
    "PutMessage",
    "PutSession",
    "PutSummary",
    "RemoveSession",
    "RunningTask",
    "SessionQuery",
    "SessionRecord",
    "Stats",
    "StoredEvent",
    "TrimSession",
    "decode_record",
    "op_session",
]


class ClientTool(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A tool the frontend runs: the model may call it, and the task waits for its result."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = msgspec.field(default_factory=lambda: {"type": "object"})  # JSON Schema


class RunningTask(msgspec.Struct):
    """A task the store believes is running: found at activation, it was interrupted, unless
    it waits for a tool call's approval or result (then it goes on waiting)."""

    task_id: str
    message_id: str
    reply_id: str | None = None  # None while queued behind another task
    client_tools: list[ClientTool] = msgspec.field(default_factory=list)  # declared with its message


IDEMPOTENCY_WINDOW_SECONDS = 24 * 3600
"""How long an ``Idempotency-Key`` names its task: a repeat within this answers that task."""
MAX_IDEMPOTENT_REQUESTS = 64
"""Keys a session remembers at most (the oldest go first): the record is rewritten on every
commit, so this list must stay small; a client retries its last few requests, not its 65th."""


class IdempotentRequest(msgspec.Struct):
    """A request sent with an idempotency key, and the task it started.

    Kept in the session row, so it is durable in the same commit as the user message it added.
    """

    key: str
    fingerprint: str  # what was asked (the command without how it is delivered)
    task_id: str
    message_id: str  # the message the task answers
    cursor: int  # the event id just before the task's events
    created_at: float  # unix time
    end_seq: int | None = None  # the task's terminal event, once it ended
    error: str | None = None  # why it failed, if it did


class ForkRef(msgspec.Struct, frozen=True):
    """One end of a fork: the other session, and the message of the source it was forked at."""

    session_id: str
    message_id: str


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
    client_tools: list[ClientTool] = msgspec.field(default_factory=list)
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
    requests: list[IdempotentRequest] = msgspec.field(default_factory=list)  # newest last
    forked_from: ForkRef | None = None  # the session (and its message) this one was forked from
    forks: list[ForkRef] = msgspec.field(default_factory=list)  # sessions forked from this one
    # Retention of its own (actors/core/retention.py); a temporary session has none: it is
    # deleted once idle for the configured temporary TTL.
    retention: Retention | None = None
    temporary: bool = False
    # No event up to this id can be replayed any more (keep_latest removed them with the
    # messages they told of): a stream resuming below it is told stream.reset.
    event_floor: int = 0
    # The store may hold only the newest replay_events of this session's durable events
    # (KeepEvents removed the older ones): an activation that loads fewer, under a larger
    # replay_events, still starts its log at the oldest it loaded, never below.
    events_bounded: bool = False


class Checkpoint(msgspec.Struct):
    id: str
    message_id: str
    created_at: str
    label: str


class StoredEvent(msgspec.Struct):
    """A durable event: its id, its type and its data (the event's JSON, as sent)."""

    seq: int
    type: str
    data: bytes


class LoadedSession(msgspec.Struct):
    record: SessionRecord
    nodes: list[Node]
    checkpoints: list[Checkpoint]
    events: list[StoredEvent]  # the newest durable events, oldest first
    max_seq: int  # the highest durable event id
    summaries: list[ContextSummary] = msgspec.field(default_factory=list)  # hidden nodes, oldest first


class PutSession(msgspec.Struct):
    """Upsert of a session row, encoded when the op is made: later mutations do not leak in."""

    id: str
    namespace: str
    end_user_id: str | None
    last_active_at: str
    body: bytes
    # When the session's own retention is due (epoch seconds), indexed for the sweeper.
    due_at: float | None = None

    @classmethod
    def of(cls, r: SessionRecord) -> PutSession:
        due = epoch_of(r.last_active_at) + r.retention.ttl_seconds if r.retention is not None else None
        return cls(r.id, r.namespace, r.end_user_id, r.last_active_at, _enc.encode(r), due)


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


class PutSummary(msgspec.Struct):
    """Upsert of a hidden summary node, and removal of those of the session it replaces."""

    session_id: str
    id: str
    body: bytes
    drop: list[str] = msgspec.field(default_factory=list)

    @classmethod
    def of(cls, session_id: str, summary: ContextSummary, drop: list[str] | None = None) -> PutSummary:
        return cls(session_id, summary.id, _enc.encode(summary), drop or [])


class KeepEvents(msgspec.Struct):
    """Removal of a session's durable events but its newest ``newest``. An activation reads
    only the newest ``replay_events`` (a stream resuming from before them is told
    ``stream.reset``), so the older ones are never read again and would only take room: every
    answer's ``message.completed`` carries its whole text."""

    session_id: str
    newest: int  # at least 1


class RemoveSession(msgspec.Struct):
    """Removal of a session with everything it holds."""

    session_id: str


class TrimSession(msgspec.Struct):
    """Removal of some of a session's messages, checkpoints and context summaries, and of its
    durable events up to ``events_through`` (what keep_latest retention drops; the session row
    is written beside)."""

    session_id: str
    message_ids: list[str]
    checkpoint_ids: list[str]
    events_through: int
    summary_ids: list[str] = msgspec.field(default_factory=list)


class PutDelivery(msgspec.Struct):
    """A new webhook outbox row (actors/core/webhooks.py): committed with the event it announces,
    so the event and its delivery are durable together or not at all."""

    id: str  # the webhook-id every attempt sends
    endpoint: str
    session_id: str
    event_type: str
    body: bytes  # the JSON payload, as every attempt sends it
    created_at: float  # unix time


class Fence(msgspec.Struct):
    """The writer's lease epoch for ``session_id``: the store refuses the ops of this commit if
    the session's stored epoch is higher (another node has taken the session since)."""

    session_id: str
    epoch: int


class Claim(msgspec.Struct):
    """Advance ``session_id``'s lease epoch (an activation takes the session): the commit
    holding it answers the new epoch, and writes fenced with an older one are refused."""

    session_id: str


Op = (
    PutSession | PutMessage | PutCheckpoint | PutEvent | PutSummary | TrimSession | KeepEvents | RemoveSession
    | PutDelivery
    | Fence | Claim
)


_record_decoder = msgspec.json.Decoder(SessionRecord)


def decode_record(body: bytes | str) -> SessionRecord:
    """A session row's body (its JSON, as ``PutSession`` wrote it) as its record: the one decoder
    of every store, the activation read and the registry."""
    return _record_decoder.decode(body)


def op_session(op: Op) -> str:
    """The session an op writes to."""
    return op.id if isinstance(op, PutSession) else op.session_id


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

    __slots__ = (
        "activations", "crashes", "events", "evictions", "passivations", "replay_shed", "tasks_running",
        "tasks_started",
    )

    def __init__(self) -> None:
        self.events = 0
        self.activations = 0
        self.passivations = 0
        self.evictions = 0  # passivations asked for past [sessions] max_live or replay_memory_bytes
        self.replay_shed = 0  # bytes of busy sessions' replay logs dropped past replay_memory_bytes
        self.crashes = 0
        self.tasks_started = 0
        self.tasks_running = 0
