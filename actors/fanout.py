"""Fan-out of a session's events to its subscribers (in-process).

A subscriber holds no queue of its own: it keeps a cursor into the session's EventLog and
waits for news. Each wake-up takes everything appended since the cursor, so a subscriber
that is behind gets all of it in one batch (one ``write()``), and a subscriber that never
reads costs the server nothing but its cursor. One that falls below the log's floor is told
to reset; it never makes the producer wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from actors.events import EventLog

__all__ = ["Hub", "Subscription", "Batch", "HEARTBEAT", "CLOSED", "RESET"]


class Hub:
    """The per-session meeting point of one EventLog and its subscribers."""

    __slots__ = ("log", "_news", "subscribers", "closed", "task_end_seq")

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self._news = asyncio.Event()
        self.subscribers = 0
        self.closed = False
        # task id -> seq of its terminal event: where a task-scoped stream stops.
        self.task_end_seq: dict[str, int] = {}

    def notify(self) -> None:
        # set() wakes every current waiter; clear() at once so later waiters block again.
        news = self._news
        news.set()
        news.clear()

    async def wait(self) -> None:
        await self._news.wait()

    def close(self) -> None:
        self.closed = True
        self.notify()

    def subscribe(
        self, cursor: int, *, task_id: str | None = None, on_reset: Callable[[], int] | None = None
    ) -> Subscription:
        return Subscription(self, cursor, task_id, on_reset)


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


HEARTBEAT = _Marker("HEARTBEAT")
CLOSED = _Marker("CLOSED")
RESET = _Marker("RESET")
Batch = list[bytes] | _Marker


class Subscription:
    """One reader of a Hub: ``await next()`` gives frames, HEARTBEAT, RESET or CLOSED."""

    __slots__ = ("hub", "cursor", "task_id", "_done", "_open", "_on_reset")

    def __init__(self, hub: Hub, cursor: int, task_id: str | None, on_reset: Callable[[], int] | None = None) -> None:
        self.hub = hub
        self.cursor = cursor
        self.task_id = task_id
        self._done = False
        self._open = True
        self._on_reset = on_reset
        hub.subscribers += 1

    def reset_cursor(self) -> int:
        """Where to go on after RESET (the session decides: its running task's start, or now)."""
        return self._on_reset() if self._on_reset is not None else self.hub.log.last_seq

    def close(self) -> None:
        if self._open:
            self._open = False
            self.hub.subscribers -= 1

    def skip_to(self, cursor: int) -> None:
        self.cursor = cursor

    async def next(self, timeout: float | None, max_bytes: int = 1 << 20) -> Batch:
        hub = self.hub
        log = hub.log
        while True:
            if self._done:
                return CLOSED
            if not log.covers(self.cursor):
                return RESET
            seqs, _types, frames = log.window(self.cursor)
            if frames:
                end = hub.task_end_seq.get(self.task_id) if self.task_id else None
                if end is not None and seqs[-1] >= end:
                    cut = next(i for i, s in enumerate(seqs) if s >= end) + 1
                    seqs, frames = seqs[:cut], frames[:cut]
                    self._done = True
                frames = _cap(frames, max_bytes)
                self.cursor = seqs[len(frames) - 1]
                return frames
            if self.task_id and self.task_id in hub.task_end_seq:
                return CLOSED  # its task ended before we arrived past it
            if hub.closed:
                return CLOSED
            try:
                async with asyncio.timeout(timeout):
                    await hub.wait()
            except TimeoutError:
                return HEARTBEAT


def _cap(frames: list[bytes], max_bytes: int) -> list[bytes]:
    """Keep a batch within ``max_bytes`` (at least one frame) so one write stays bounded."""
    total = 0
    for i, frame in enumerate(frames):
        total += len(frame)
        if total > max_bytes and i > 0:
            return frames[:i]
    return frames
