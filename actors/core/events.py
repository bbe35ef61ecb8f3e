"""Session events and the per-session EventLog.

An event is the Struct of its type; its data is its JSON, encoded once when it is made. The
core stores and passes on (seq, type, data): how an event goes on the wire is the edge's
business. For speed the log keeps, per event, the bytes the edge's frame encoder made of it
(injected, see ``EventLog``), so every subscriber and every replay shares one encoding.
No asyncio, no storage and no wire format in here.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import Any

import msgspec

from actors.core.tree import Node, Usage

__all__ = [
    "KEEP_NEWEST",
    "TERMINAL_EVENTS",
    "AnyEvent",
    "CheckpointCreated",
    "Event",
    "EventLog",
    "FrameEncoder",
    "MessageCompleted",
    "MessageDelta",
    "StreamClosed",
    "StreamReset",
    "TaskCancelled",
    "TaskCompleted",
    "TaskFailed",
    "TaskInterrupted",
    "TaskStarted",
    "ToolApprovalDecided",
    "ToolApprovalRequested",
    "ToolCall",
    "ToolResult",
    "decode_event",
    "delta_data",
    "delta_head",
    "encode_event",
    "event_type",
]


class Event(msgspec.Struct, frozen=True, tag_field="type"):
    """Base of all events; ``type`` on the wire is the SSE ``event:`` name."""


class TaskStarted(Event, frozen=True, tag="task.started"):
    task_id: str
    message_id: str
    reply_id: str


class MessageDelta(Event, frozen=True, tag="message.delta"):
    task_id: str
    message_id: str
    delta: str


class ToolCall(Event, frozen=True, tag="tool.call"):
    task_id: str
    call_id: str
    name: str
    arguments: dict[str, Any]
    client: bool = False  # the frontend runs it: the task waits for POST .../tool-calls/{id}/result


class ToolApprovalRequested(Event, frozen=True, tag="tool.approval_requested"):
    """The task waits until the call is approved or denied (POST .../tool-calls/{id}/approve|deny)."""

    task_id: str
    call_id: str
    name: str
    arguments: dict[str, Any]
    expires_at: float | None = None


class ToolApprovalDecided(Event, frozen=True, tag="tool.approval_decided"):
    task_id: str
    call_id: str
    approved: bool
    reason: str | None = None


class ToolResult(Event, frozen=True, tag="tool.result"):
    task_id: str
    call_id: str
    output: str
    is_error: bool = False


class MessageCompleted(Event, frozen=True, tag="message.completed"):
    task_id: str
    message: Node
    usage: Usage
    model: str | None = None


class CheckpointCreated(Event, frozen=True, tag="checkpoint.created"):
    checkpoint_id: str
    message_id: str


class TaskCompleted(Event, frozen=True, tag="task.completed"):
    task_id: str


class TaskFailed(Event, frozen=True, tag="task.failed"):
    task_id: str
    error: str


class TaskCancelled(Event, frozen=True, tag="task.cancelled"):
    task_id: str


class TaskInterrupted(Event, frozen=True, tag="task.interrupted"):
    task_id: str
    error: str = "the server stopped while this task was running"


class StreamReset(Event, frozen=True, tag="stream.reset"):
    reason: str
    last_event_id: int


class StreamClosed(Event, frozen=True, tag="stream.closed"):
    """The last event of a stream the server ends while the session goes on: its credential
    expired or was revoked (``reason``). Not in the session's log: one stream's business."""

    reason: str
    detail: str


AnyEvent = (
    TaskStarted
    | MessageDelta
    | ToolCall
    | ToolApprovalRequested
    | ToolApprovalDecided
    | ToolResult
    | MessageCompleted
    | CheckpointCreated
    | TaskCompleted
    | TaskFailed
    | TaskCancelled
    | TaskInterrupted
    | StreamReset
    | StreamClosed
)

TERMINAL_EVENTS = frozenset({"task.completed", "task.failed", "task.cancelled", "task.interrupted"})

FrameEncoder = Callable[[int, str, bytes], bytes]
"""(seq, type, data) -> the bytes a subscriber is sent for that event (the edge's wire format)."""

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AnyEvent)


def event_type(event: Event) -> str:
    """The event's type name (its tag: ``task.started``, ``message.delta``, ...)."""
    return type(event).__struct_config__.tag  # type: ignore[return-value]


def encode_event(event: Event) -> bytes:
    """The event's data: its JSON object, ``type`` first."""
    return _encoder.encode(event)


def decode_event(data: bytes) -> AnyEvent:
    return _decoder.decode(data)


def delta_head(task_id: str, message_id: str) -> bytes:
    """The data of a reply's deltas up to their text, made once per reply.

    A reply's deltas differ only in their text, so the turn keeps this and each token costs
    one string encoding (``delta_data``) instead of encoding the whole Struct again.
    """
    # msgspec writes the fields in order, delta last: cut its empty value '""}' off.
    return _encoder.encode(MessageDelta(task_id, message_id, ""))[:-3]


def delta_data(head: bytes, delta: str) -> bytes:
    """The data of one delta of the reply whose ``delta_head`` is ``head``: the same bytes
    as ``encode_event(MessageDelta(...))``."""
    return b"%s%s}" % (head, _encoder.encode(delta))


# The byte bound never drops the newest this many events, however large: a publish appends a
# batch of events (an answer's end is three, its message.completed maybe megabytes) before any
# subscriber is handed one, and must not push its own first events out of the log.
KEEP_NEWEST = 64


class EventLog:
    """Numbered events of one session, kept in memory up to ``retention`` of them and
    ``retention_bytes`` of their frames (past it only by the newest ``KEEP_NEWEST``).

    ``append(seq, type, data)`` keeps ``frame(seq, type, data)``, the bytes subscribers are
    sent: ``frame`` is the edge's encoder, injected so that the core knows no wire format and
    an event is still encoded once, not once per subscriber.

    ``floor`` is the id up to which the log no longer answers: a replay after an id below
    the floor cannot be served exactly and gets ``stream.reset``. Seqs increase strictly but
    need not be contiguous: a log reloaded from the store holds only the durable events, the
    deltas having been folded into their completed messages.
    """

    __slots__ = (
        "_bytes", "_frame", "_frames", "_keep_bytes", "_seqs", "_trim_at", "floor", "last_seq", "retention",
        "retention_bytes",
    )

    def __init__(
        self, *, frame: FrameEncoder, retention: int, retention_bytes: int = 1 << 62, floor: int = 0,
        last_seq: int = 0,
    ) -> None:
        self._frame = frame
        self._seqs: list[int] = []
        self._frames: list[bytes] = []
        self._bytes = 0  # of the frames kept
        self.retention = retention
        self.retention_bytes = retention_bytes
        self.floor = floor
        self.last_seq = last_seq
        # Trim in chunks so the amortised cost per append stays O(1): past the count bound by an
        # eighth of it (64 at least), or past the byte bound, down to an eighth below it.
        self._trim_at = retention + max(64, retention // 8)
        self._keep_bytes = retention_bytes - retention_bytes // 8

    def __len__(self) -> int:
        return len(self._seqs)

    @property
    def size(self) -> int:
        """Bytes of the frames kept."""
        return self._bytes

    def append(self, seq: int, type_: str, data: bytes) -> None:
        if seq <= self.last_seq:
            raise ValueError(f"event id {seq} is not above {self.last_seq}")
        frame = self._frame(seq, type_, data)
        self._seqs.append(seq)
        self._frames.append(frame)
        self._bytes += len(frame)
        self.last_seq = seq
        if len(self._seqs) >= self._trim_at or self._bytes > self.retention_bytes:
            self._trim()

    def _trim(self) -> None:
        """Drop the oldest events past either bound (never the newest ``KEEP_NEWEST`` for
        bytes); the floor follows."""
        excess = max(0, len(self._frames) - self.retention)
        size = self._bytes - sum(map(len, self._frames[:excess]))
        self._drop_oldest(excess, size, self._keep_bytes if size > self.retention_bytes else size)

    def shed(self, max_bytes: int) -> int:
        """Drop the oldest events until at most ``max_bytes`` of frames are left, never the
        newest ``KEEP_NEWEST``; the floor follows. Returns the bytes dropped."""
        return self._drop_oldest(0, self._bytes, max_bytes)

    def _drop_oldest(self, excess: int, size: int, max_bytes: int) -> int:
        """Drop the oldest ``excess`` events (``size`` bytes are left without them), and more
        while over ``max_bytes`` and more than ``KEEP_NEWEST`` are left; the bytes dropped."""
        frames = self._frames
        while size > max_bytes and excess < len(frames) - KEEP_NEWEST:
            size -= len(frames[excess])
            excess += 1
        if not excess:
            return 0
        self.floor = max(self.floor, self._seqs[excess - 1])
        del self._seqs[:excess], frames[:excess]
        dropped, self._bytes = self._bytes - size, size
        return dropped

    def forget_through(self, seq: int) -> None:
        """Drop every event up to ``seq``: no replay from below it can be served any more."""
        i = bisect.bisect_right(self._seqs, seq)
        self._bytes -= sum(map(len, self._frames[:i]))
        del self._seqs[:i], self._frames[:i]
        self.floor = max(self.floor, seq)
        self.last_seq = max(self.last_seq, seq)

    def covers(self, after: int) -> bool:
        """Whether every servable event after ``after`` is still here."""
        return after >= self.floor

    def since(self, after: int) -> tuple[list[int], list[bytes]]:
        """Seqs and frames of every retained event after ``after`` (what a subscriber sends)."""
        i = bisect.bisect_right(self._seqs, after)
        return self._seqs[i:], self._frames[i:]
