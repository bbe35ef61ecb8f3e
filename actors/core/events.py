"""Session events (the SSE vocabulary) and the per-session EventLog.

An event is encoded once, as a complete SSE frame, when it is appended; every subscriber
and every replay reuses those bytes. No asyncio and no storage in here.
"""

from __future__ import annotations

import bisect
from typing import Any

import msgspec

from actors.core.tree import Node, Usage

__all__ = [
    "TERMINAL_EVENTS",
    "AnyEvent",
    "CheckpointCreated",
    "Event",
    "EventLog",
    "MessageCompleted",
    "MessageDelta",
    "StreamReset",
    "TaskCancelled",
    "TaskCompleted",
    "TaskFailed",
    "TaskInterrupted",
    "TaskStarted",
    "ToolCall",
    "ToolResult",
    "decode_event",
    "encode_frame",
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


AnyEvent = (
    TaskStarted
    | MessageDelta
    | ToolCall
    | ToolResult
    | MessageCompleted
    | CheckpointCreated
    | TaskCompleted
    | TaskFailed
    | TaskCancelled
    | TaskInterrupted
    | StreamReset
)

TERMINAL_EVENTS = frozenset({"task.completed", "task.failed", "task.cancelled", "task.interrupted"})

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AnyEvent)
_prefix: dict[type[Event], bytes] = {}


def _type_of(event: Event) -> str:
    return type(event).__struct_config__.tag  # type: ignore[return-value]


# The frame of a delta up to its text, per reply: a reply's deltas differ only in id and
# text, so that part is encoded once per reply, not once per token. Keyed by the reply's
# message id and checked against the task id. Bounded: cleared when it holds more replies
# than any server streams at once.
_delta_heads: dict[str, tuple[str, bytes]] = {}
_DELTA_HEADS_MAX = 4096


def _delta_head(event: MessageDelta) -> bytes:
    if len(_delta_heads) >= _DELTA_HEADS_MAX:
        _delta_heads.clear()
    # msgspec writes the fields in order, delta last: cut its empty value '""}' off.
    body = _encoder.encode(MessageDelta(event.task_id, event.message_id, ""))
    head = b"event: message.delta\ndata: " + body[:-3]
    _delta_heads[event.message_id] = (event.task_id, head)
    return head


def encode_frame(seq: int, event: Event) -> bytes:
    """The whole SSE frame for ``event`` with id ``seq``: encoded once, shared by all."""
    cls = type(event)
    if cls is MessageDelta:
        # The hot path, once per token; the same bytes as the general case below.
        delta: MessageDelta = event  # type: ignore[assignment]
        cached = _delta_heads.get(delta.message_id)
        head = cached[1] if cached is not None and cached[0] == delta.task_id else _delta_head(delta)
        return b"id: %d\n%s%s}\n\n" % (seq, head, _encoder.encode(delta.delta))
    prefix = _prefix.get(cls)
    if prefix is None:
        prefix = _prefix[cls] = b"event: " + _type_of(event).encode() + b"\ndata: "
    return b"id: %d\n%s%s\n\n" % (seq, prefix, _encoder.encode(event))


def decode_event(data: bytes) -> AnyEvent:
    return _decoder.decode(data)


class EventLog:
    """Numbered events of one session, kept in memory up to ``retention``.

    ``floor`` is the id up to which the log no longer answers: a replay after an id below
    the floor cannot be served exactly and gets ``stream.reset``. Seqs increase strictly but
    need not be contiguous: a log reloaded from the store holds only the durable events, the
    deltas having been folded into their completed messages.
    """

    __slots__ = ("_frames", "_seqs", "_trim_at", "_types", "floor", "last_seq", "retention")

    def __init__(self, *, retention: int, floor: int = 0, last_seq: int = 0) -> None:
        self._seqs: list[int] = []
        self._frames: list[bytes] = []
        self._types: list[str] = []
        self.retention = retention
        self.floor = floor
        self.last_seq = last_seq
        # Trim in chunks so the amortised cost per append stays O(1).
        self._trim_at = retention + max(64, retention // 8)

    def __len__(self) -> int:
        return len(self._seqs)

    def append(self, seq: int, type_: str, frame: bytes) -> None:
        if seq <= self.last_seq:
            raise ValueError(f"event id {seq} is not above {self.last_seq}")
        self._seqs.append(seq)
        self._frames.append(frame)
        self._types.append(type_)
        self.last_seq = seq
        if len(self._seqs) >= self._trim_at:
            excess = len(self._seqs) - self.retention
            self.floor = self._seqs[excess - 1]
            del self._seqs[:excess], self._frames[:excess], self._types[:excess]

    def covers(self, after: int) -> bool:
        """Whether every servable event after ``after`` is still here."""
        return after >= self.floor

    def index_after(self, after: int) -> int:
        return bisect.bisect_right(self._seqs, after)

    def frames_from(self, index: int) -> list[bytes]:
        return self._frames[index:]

    def since(self, after: int) -> tuple[list[int], list[bytes]]:
        """Seqs and frames of every retained event after ``after`` (what a subscriber sends)."""
        i = bisect.bisect_right(self._seqs, after)
        return self._seqs[i:], self._frames[i:]

    def window(self, after: int) -> tuple[list[int], list[str], list[bytes]]:
        """Seqs, types and frames of every retained event after ``after``."""
        i = bisect.bisect_right(self._seqs, after)
        return self._seqs[i:], self._types[i:], self._frames[i:]
