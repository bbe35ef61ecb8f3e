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

Direct writes. A subscriber that is caught up can ``follow`` with a FrameSink (its transport):
it leaves the waiters and joins the hub's followers. The first ``notify()`` of a loop iteration
schedules one call, at the end of that iteration, that hands every follower all the frames
after its cursor: one write per follower per iteration however many events the producer
emitted in it, a flag test per event, and no task woken per event. The
follower's task sleeps until the sink refuses (a congested or closing transport), its task's
stream ends, the log no longer covers it, the hub closes or its heartbeat is due; it then reads
by its cursor again, which stands exactly after the last frame the sink took, and follows again
once it has caught up. Order, loss and duplicates are the cursor's business in both modes.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable

from actors.core.events import EventLog
from actors.core.stream import CLOSED, HEARTBEAT, RESET, Batch, FrameSink

__all__ = ["CLOSED", "HEARTBEAT", "RESET", "Batch", "Hub", "Subscription"]

_log = logging.getLogger("sessiond.fanout")


class Hub:
    """The per-session meeting point of one EventLog and its subscribers."""

    __slots__ = (
        "_beat",
        "_beat_at",
        "_followers",
        "_purge_at",
        "_pushing",
        "_waiters",
        "closed",
        "log",
        "subscribers",
        "task_end_seq",
    )

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
        # Subscriptions whose frames the hub writes (a dict: ordered, O(1) removal).
        self._followers: dict[Subscription, None] = {}
        # The call that hands followers their frames, at most one pending per loop iteration.
        self._pushing: asyncio.Handle | None = None

    @property
    def followers(self) -> int:
        """Subscribers the hub writes to directly now."""
        return len(self._followers)

    def notify(self) -> None:
        """Have new frames handed to every follower at the end of this loop iteration; wake
        every current waiter (later waiters wait for the next notify)."""
        if self._followers and self._pushing is None:
            self._pushing = asyncio.get_running_loop().call_soon(self._push_all)
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

    def _push_all(self) -> None:
        """Hand each follower what was appended since its cursor, once per loop iteration."""
        self._pushing = None
        last = self.log.last_seq
        refused: list[Subscription] | None = None
        for sub in self._followers:
            if sub.cursor < last:
                try:
                    ok = sub._push()
                except Exception:
                    # A sink that fails must not keep the others from their frames: this one
                    # reads by its cursor again and meets the error in its own write.
                    _log.exception("a stream's direct write failed")
                    ok = False
                if not ok:
                    if refused is None:
                        refused = []
                    refused.append(sub)
        if refused is not None:
            for sub in refused:
                sub._unfollow()

    def _on_beat(self) -> None:
        self._beat = None
        if self._followers:
            now = asyncio.get_running_loop().time()
            due = [sub for sub in self._followers if sub._until <= now + _EARLY]
            for sub in due:
                sub._unfollow()
            if self._followers:
                self.wake_at(min(sub._wake_at for sub in self._followers))
        self.notify()

    def close(self) -> None:
        self.closed = True
        if self._beat is not None:
            self._beat.cancel()
            self._beat = None
        for sub in list(self._followers):
            sub._unfollow()
        if self._pushing is not None:
            self._pushing.cancel()
            self._pushing = None
        self.notify()

    def subscribe(
        self, cursor: int, *, task_id: str | None = None, on_reset: Callable[[], int] | None = None
    ) -> Subscription:
        return Subscription(self, cursor, task_id, on_reset)


class Subscription:
    """One reader of a Hub (an EventStream): ``await next()`` gives frames, HEARTBEAT, RESET or CLOSED."""

    __slots__ = (
        "_done",
        "_handed",
        "_on_reset",
        "_open",
        "_sink",
        "_until",
        "_wake",
        "_wake_at",
        "cursor",
        "hub",
        "task_id",
    )

    def __init__(self, hub: Hub, cursor: int, task_id: str | None, on_reset: Callable[[], int] | None = None) -> None:
        self.hub = hub
        self.cursor = cursor
        self.task_id = task_id
        self._done = False
        self._open = True
        self._on_reset = on_reset
        # While following: the sink, the future its task sleeps on, the deadline of the sleep
        # (and the timer tick it is rounded up to), and how many events the sink took.
        self._sink: FrameSink | None = None
        self._wake: asyncio.Future[None] | None = None
        self._until = 0.0
        self._wake_at = 0.0
        self._handed = 0
        hub.subscribers += 1

    def ready(self) -> bool:
        """Whether ``next()`` would answer at once (something to send, or the end)."""
        hub = self.hub
        return self._done or hub.closed or self.cursor < hub.log.last_seq or not hub.log.covers(self.cursor)

    def reset_cursor(self) -> int:
        """Where to go on after RESET (the session decides: its running task's start, or now)."""
        return self._on_reset() if self._on_reset is not None else self.hub.log.last_seq

    def close(self) -> None:
        if self._sink is not None:
            self._unfollow()
        if self._open:
            self._open = False
            self.hub.subscribers -= 1

    async def follow(self, sink: FrameSink, timeout: float) -> int | None:  # noqa: ASYNC109
        """Have ``notify()`` write new frames into ``sink`` until it refuses, the stream ends or
        resets, or ``timeout`` passes; the number of events the sink took, or None at once if
        this subscriber is not caught up (``next()`` has something to say)."""
        hub = self.hub
        if self.ready() or self._sink is not None or (self.task_id is not None and self.task_id in hub.task_end_seq):
            return None
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        grain = min(1.0, timeout / 4) if timeout > 0 else 1.0
        self._sink = sink
        self._wake = fut
        self._handed = 0
        self._until = loop.time() + timeout
        self._wake_at = math.ceil(self._until / grain) * grain
        hub._followers[self] = None
        hub.wake_at(self._wake_at)
        try:
            await fut
        finally:
            if self._wake is fut:  # cancelled while following
                self._unfollow()
        return self._handed

    def _push(self) -> bool:
        """Hand the sink the frames after the cursor; False if this follower must stop."""
        log = self.hub.log
        if not log.covers(self.cursor):
            return False  # next() says RESET
        seqs, frames = log.since(self.cursor)
        done = False
        if self.task_id is not None:
            end = self.hub.task_end_seq.get(self.task_id)
            if end is not None and seqs[-1] >= end:
                cut = next(i for i, s in enumerate(seqs) if s >= end) + 1
                seqs, frames = seqs[:cut], frames[:cut]
                done = True
        sink = self._sink
        assert sink is not None
        if not sink.offer(frames):
            return False  # next() takes them by the cursor
        self.cursor = seqs[-1]
        self._handed += len(frames)
        if done:
            self._done = True
            return False
        return True

    def _unfollow(self) -> None:
        """Stop following: wake the task, which reads by its cursor again."""
        self.hub._followers.pop(self, None)
        fut = self._wake
        self._sink = self._wake = None
        if fut is not None and not fut.done():
            fut.set_result(None)

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


# A timer may fire this much before its time (the loop's clock resolution).
_EARLY = 0.002


def _cap(frames: list[bytes], max_bytes: int) -> list[bytes]:
    """Keep a batch within ``max_bytes`` (at least one frame) so one write stays bounded."""
    total = 0
    for i, frame in enumerate(frames):
        total += len(frame)
        if total > max_bytes and i > 0:
            return frames[:i]
    return frames
