"""Admission control: past the configured load, new work is refused fast with 503 + Retry-After.

An overloaded event loop does not fail loudly: it serves everything a little later, and new
connections starve first (their first event arrives seconds late while established streams
still look fine). So the server counts what it carries, running model tasks and open SSE
streams, and refuses new work beyond ``[admission]`` limits instead of accepting it and
serving it late. Refusals cost one dictionary look-up and one small response.

What counts as new work:

* a request that starts a task (send, edit, regenerate, restore with a hint) while
  ``max_running_tasks`` tasks are running;
* a request that opens a stream (``GET .../stream``, or one of the above with
  ``"stream": true``) while ``max_open_streams`` streams are open.

A stream is also counted against whoever opens it: its token's grant, its guest, its end user
and its session each hold at most ``max_streams_per_*`` streams (429 past that), so one caller
cannot take every slot of the global cap, which stays the last line.

Everything else (reads, cancel, create, delete) is always admitted: it is cheap, and cancel
is how load goes down.

Both counts move at admission, before any await, so a burst of requests arriving together
cannot all take the last place (the registry's own count of running tasks moves only once
an actor has started the task: under load, a loop turn or more later). Admission is checked
where the body is already decoded (server/tasks.py), since whether a request starts a task or
opens a stream depends on it (``stream``, a restore's ``hint``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

from actors.core.errors import OverloadedError
from server.auth.ratelimit import LimitReachedError
from server.config import AdmissionSection

__all__ = ["Admission", "Holder", "HolderKind"]

HolderKind = Literal["token", "guest", "end_user", "session"]
Holder = tuple[HolderKind, str]
"""Who a stream counts against: a token's grant (its family: refreshing does not free a slot),
a guest, an end user or a session, with its id."""

_NAMES: dict[HolderKind, str] = {"token": "token", "guest": "guest", "end_user": "end user", "session": "session"}


class Admission:
    """The limits, and what the server carries: open streams and admitted task requests."""

    __slots__ = ("_held", "open_streams", "refused", "settings", "task_requests")

    def __init__(self, settings: AdmissionSection) -> None:
        self.settings = settings
        self.open_streams = 0
        # Requests admitted to start a task and not answered yet. A streamed send is answered
        # when its task ends, a plain one when it has ended, so this follows the running tasks
        # the HTTP API started, but moves at admission, before the actor has started the task.
        self.task_requests = 0
        self.refused = 0
        self._held: dict[Holder, int] = {}  # open streams per holder; a holder with none is dropped

    def _cap(self, kind: HolderKind) -> int:
        return getattr(self.settings, f"max_streams_per_{kind}")  # type: ignore[no-any-return]

    def streams_of(self, holder: Holder) -> int:
        return self._held.get(holder, 0)

    def task_load(self, tasks_running: int) -> int:
        """Running tasks as admission sees them: the registry's count can lag a burst of
        admitted requests (not started yet) and can lead them (a client left mid-stream)."""
        return max(tasks_running, self.task_requests)

    def check_task(self, tasks_running: int) -> None:
        """For a task a node was asked by another (cluster mode): 503 ``overloaded`` if this node
        runs as many as it takes. The asking node admitted the request, against its own load."""
        limits = self.settings
        if self.task_load(tasks_running) >= limits.max_running_tasks:
            self.refused += 1
            raise OverloadedError(
                f"{limits.max_running_tasks} tasks are running on the session's node, the most it takes at once",
                retry_after=limits.retry_after_seconds,
            )

    @contextmanager
    def enter(
        self, tasks_running: int, *, starts_task: bool, opens_stream: bool, holders: Sequence[Holder] = ()
    ) -> Iterator[None]:
        """Admit one request (503 ``overloaded`` if it would go past a limit) for the ``with`` body.

        Not async, on purpose: the check and the increment happen with no await between them,
        so requests arriving together cannot all take the last place.
        """
        limits = self.settings
        if starts_task and self.task_load(tasks_running) >= limits.max_running_tasks:
            self.refused += 1
            raise OverloadedError(
                f"{limits.max_running_tasks} tasks are running, the most this server takes at once",
                retry_after=limits.retry_after_seconds,
            )
        if opens_stream and self.open_streams >= limits.max_open_streams:
            self.refused += 1
            raise OverloadedError(
                f"{limits.max_open_streams} streams are open, the most this server holds at once",
                retry_after=limits.retry_after_seconds,
            )
        held = holders if opens_stream else ()
        for holder in held:
            cap = self._cap(holder[0])
            if cap > 0 and self._held.get(holder, 0) >= cap:
                self.refused += 1
                raise LimitReachedError(
                    f"this {_NAMES[holder[0]]} has {cap} streams open, the most it may hold at once",
                    limit=f"max_streams_per_{holder[0]}",
                    retry_after=limits.retry_after_seconds,
                )
        # Counted from admission to the end of the response.
        self.task_requests += starts_task
        self.open_streams += opens_stream
        for holder in held:
            self._held[holder] = self._held.get(holder, 0) + 1
        try:
            yield
        finally:
            self.task_requests -= starts_task
            self.open_streams -= opens_stream
            for holder in held:
                left = self._held[holder] - 1
                if left:
                    self._held[holder] = left
                else:
                    del self._held[holder]
