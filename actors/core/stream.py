"""What a subscription is to its reader (the SSE writer): batches of frames, or a signal.

Both the in-process Subscription (actors/session/fanout.py) and the cluster's Redis-backed one
(actors/cluster/streams.py) implement ``EventStream``; the edge writes either the same way.

A reader that is caught up may also hand its subscription a ``FrameSink`` (``follow``): the
session then writes new events into the sink itself, at the end of the loop iteration that
emitted them, and the reader's task sleeps until the sink refuses, the stream ends or a
heartbeat is due.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["CLOSED", "HEARTBEAT", "RESET", "Batch", "EventStream", "FrameSink", "Signal"]


class Signal:
    """A batch that is not frames: the stream ended, has nothing to say yet, or must reset."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


HEARTBEAT = Signal("HEARTBEAT")
CLOSED = Signal("CLOSED")
RESET = Signal("RESET")
Batch = list[bytes] | Signal


class FrameSink(Protocol):
    """Where a caught-up subscriber's frames go when the session writes them itself (a transport)."""

    def offer(self, frames: list[bytes]) -> bool:
        """Write ``frames`` now, or refuse them all (the transport is congested or closing):
        the subscriber then reads them by its cursor."""


class EventStream(Protocol):
    """One reader's position in a session's events: ``await next()`` gives frames or a Signal."""

    @property
    def cursor(self) -> int:
        """The id of the last event handed out."""

    def ready(self) -> bool:
        """Whether ``next()`` would answer at once (something to send, or the end)."""

    async def next(self, timeout: float | None, max_bytes: int = 1 << 20) -> Batch: ...  # noqa: ASYNC109

    def reset_cursor(self) -> int:
        """Where to go on after RESET."""

    def skip_to(self, cursor: int) -> None: ...

    def close(self) -> None: ...

    async def follow(self, sink: FrameSink, timeout: float) -> int | None:  # noqa: ASYNC109
        """If caught up, have the session write new events into ``sink`` until the sink refuses,
        the stream ends or must reset, or ``timeout`` passes; then return how many events went
        to the sink. None at once if not caught up (read ``next()``),
        or if this stream cannot be followed."""
