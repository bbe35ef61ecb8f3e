"""A bounded mailbox of (command, reply future) envelopes with a single reader: the actor."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from actors.core.commands import AnyCommand
from actors.core.errors import ActorStoppedError, MailboxFullError

__all__ = ["Envelope", "Mailbox"]


class Envelope:
    __slots__ = ("command", "reply")

    def __init__(self, command: AnyCommand, reply: asyncio.Future[Any] | None) -> None:
        self.command = command
        self.reply = reply


class Mailbox:
    """Bounded FIFO: a full mailbox refuses (503 with Retry-After) rather than queue without end.

    ``tell_internal`` bypasses the bound for the actor's own bookkeeping (one message per model
    turn), which must never be refused.
    """

    __slots__ = ("_items", "_size", "_waiter", "closed")

    def __init__(self, size: int) -> None:
        self._items: deque[Envelope] = deque()
        self._size = size
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False

    def __len__(self) -> int:
        return len(self._items)

    def tell(self, command: AnyCommand, reply: asyncio.Future[Any] | None = None) -> None:
        if self.closed:
            raise ActorStoppedError()
        if len(self._items) >= self._size:
            raise MailboxFullError()
        self._items.append(Envelope(command, reply))
        self._wake()

    def tell_internal(self, command: AnyCommand) -> None:
        if not self.closed:
            self._items.append(Envelope(command, None))
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Envelope:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()

    def close(self) -> list[Envelope]:
        """Refuse further commands; hand back what was still queued."""
        self.closed = True
        out = list(self._items)
        self._items.clear()
        return out
