"""What a subscription is to its reader (the SSE writer): batches of frames, or a signal.

Both the in-process Subscription (actors/session/fanout.py) and the cluster's Redis-backed one
(actors/cluster/streams.py) implement ``EventStream``; the edge writes either the same way.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["CLOSED", "HEARTBEAT", "RESET", "Batch", "EventStream", "Signal"]


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
