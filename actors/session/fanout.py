"""Fan-out of a session's events to its subscribers (in-process).

A subscriber holds no queue of its own: it keeps a cursor into the session's EventLog and
waits for news. Each wake-up takes everything appended since the cursor, so a subscriber
that is behind gets all of it in one batch (one ``write()``), and a subscriber that never
reads costs the server nothing but its cursor. One that falls below the log's floor is told
to reset; it never makes the producer wait.

Heartbeats cost no timer per wait: a subscriber with nothing to send asks its hub to wake
everyone at its heartbeat deadline, rounded up to the next whole second (a quarter of the
interval if that is shorter), and the hub keeps one timer for the earliest such deadline. A
busy stream moves its deadline forward on every batch and never sees the timer fire; an idle
one gets its heartbeat up to that rounding late.
(A per-wait ``asyncio.timeout`` costs a timer start and cancel on every wake-up: with
thousands of subscribers that was most of the cost of a delivery.)
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

from actors.core.events import EventLog
from actors.core.stream import CLOSED, HEARTBEAT, RESET, Batch

__all__ = ["CLOSED", "HEARTBEAT", "RESET", "Batch", "Hub", "Subscription"]


class Hub:
    """The per-session meeting point of one EventLog and its subscribers."""

    __slots__ = ("_beat", "_beat_at", "_purge_at", "_waiters", "closed", "log", "subscribers", "task_end_seq")

    def __init__(self, log: EventLog) -> None:
        self.log = log
        # One future per waiting subscriber, all resolved by the next notify(). Lighter than an
        # asyncio.Event, whose wait() also removes its future from a deque on the way out.
        self._waiters: list[asyncio.Future[None]] = []
        self._purge_at = 64
        self.subscribers = 0
        self.closed = False
        # task id -> seq of its terminal event: where a task-scoped stream stops.
        self.task_end_seq: dict[str, int] = {}
        self._beat: asyncio.TimerHandle | None = None
        self._beat_at = 0.0

    def notify(self) -> None:
        """Wake every current waiter; later waiters wait for the next notify."""
        waiters = self._waiters
        if waiters:
            self._waiters = []
            for fut in waiters:
                if not fut.done():  # a waiter cancelled since stays here until now
                    fut.set_result(None)

    async def wait(self) -> None:
        fut = asyncio.get_running_loop().create_future()
        waiters = self._waiters
        if len(waiters) >= self._purge_at:
            # Subscribers that left while waiting leave a cancelled future behind until the
            # next notify(); on a hub with no news for long, drop them now and then.
            self._waiters = waiters = [w for w in waiters if not w.done()]
            self._purge_at = 2 * len(waiters) + 64
        waiters.append(fut)
        await fut

    def wake_at(self, when: float) -> None:
        """Make sure waiters are woken at ``when`` (loop time) at the latest."""
        beat = self._beat
        if beat is not None:
            if self._beat_at <= when:
                return
            beat.cancel()
        self._beat_at = when
        self._beat = asyncio.get_running_loop().call_at(when, self._on_beat)

    def _on_beat(self) -> None:
        self._beat = None
        self.notify()

    def close(self) -> None:
        self.closed = True
        if self._beat is not None:
            self._beat.cancel()
            self._beat = None
        self.notify()

    def subscribe(
        self, cursor: int, *, task_id: str | None = None, on_reset: Callable[[], int] | None = None
    ) -> Subscription:
        return Subscription(self, cursor, task_id, on_reset)


class Subscription:
    """One reader of a Hub (an EventStream): ``await next()`` gives frames, HEARTBEAT, RESET or CLOSED."""

    __slots__ = ("_done", "_on_reset", "_open", "cursor", "hub", "task_id")

    def __init__(self, hub: Hub, cursor: int, task_id: str | None, on_reset: Callable[[], int] | None = None) -> None:
        self.hub = hub
        self.cursor = cursor
        self.task_id = task_id
        self._done = False
        self._open = True
        self._on_reset = on_reset
        hub.subscribers += 1

    def ready(self) -> bool:
        """Whether ``next()`` would answer at once (something to send, or the end)."""
        hub = self.hub
        return self._done or hub.closed or self.cursor < hub.log.last_seq or not hub.log.covers(self.cursor)

    def reset_cursor(self) -> int:
        """Where to go on after RESET (the session decides: its running task's start, or now)."""
        return self._on_reset() if self._on_reset is not None else self.hub.log.last_seq

    def close(self) -> None:
        if self._open:
            self._open = False
            self.hub.subscribers -= 1

    def skip_to(self, cursor: int) -> None:
        self.cursor = cursor

    async def next(self, timeout: float | None, max_bytes: int = 1 << 20) -> Batch:  # noqa: ASYNC109
        hub = self.hub
        log = hub.log
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        grain = min(1.0, timeout / 4) if timeout else 1.0  # deadlines share timers at this grain
        while True:
            if self._done:
                return CLOSED
            if not log.covers(self.cursor):
                return RESET
            seqs, frames = log.since(self.cursor)
            if frames:
                end = hub.task_end_seq.get(self.task_id) if self.task_id else None
                if end is not None and seqs[-1] >= end:
                    cut = next(i for i, s in enumerate(seqs) if s >= end) + 1
                    seqs, frames = seqs[:cut], frames[:cut]
                    self._done = True
                if len(frames) > 1:
                    frames = _cap(frames, max_bytes)
                self.cursor = seqs[len(frames) - 1]
                return frames
            if self.task_id and self.task_id in hub.task_end_seq:
                return CLOSED  # its task ended before we arrived past it
            if hub.closed:
                return CLOSED
            if deadline is not None:
                if asyncio.get_running_loop().time() >= deadline:
                    return HEARTBEAT
                hub.wake_at(math.ceil(deadline / grain) * grain)
            await hub.wait()


def _cap(frames: list[bytes], max_bytes: int) -> list[bytes]:
    """Keep a batch within ``max_bytes`` (at least one frame) so one write stays bounded."""
    total = 0
    for i, frame in enumerate(frames):
        total += len(frame)
        if total > max_bytes and i > 0:
            return frames[:i]
    return frames
