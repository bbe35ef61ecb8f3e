"""A bounded mailbox of (command, reply future) envelopes with a single reader: the actor."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar, cast

from actors.core.commands import Command, MailboxCommand, TurnCommand
from actors.core.errors import ActorStoppedError, MailboxFullError

__all__ = ["Envelope", "Mailbox"]

R = TypeVar("R")


class Envelope(Generic[R]):
    """A command and the future its reply goes to (None: nobody waits)."""

    __slots__ = ("command", "reply")

    def __init__(self, command: MailboxCommand, reply: asyncio.Future[R] | None) -> None:
        self.command = command
        self.reply = reply


class Mailbox:
    """Bounded FIFO: a full mailbox refuses (503 with Retry-After) rather than queue without end.

    ``tell_internal`` bypasses the bound for the actor's own turn (a few messages per model
    turn), which must never be refused.
    """

    __slots__ = ("_items", "_size", "_waiter", "closed")

    def __init__(self, size: int) -> None:
        # Envelopes of every reply type: the actor answers each with its command's R.
        self._items: deque[Envelope[object]] = deque()
        self._size = size
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False

    def __len__(self) -> int:
        return len(self._items)

    def tell(self, command: Command[R], reply: asyncio.Future[R] | None = None) -> None:
        if self.closed:
            raise ActorStoppedError()
        if len(self._items) >= self._size:
            raise MailboxFullError()
        # Erased here: every Command class is one of MailboxCommand (the actor's dispatch ends
        # in assert_never), and the actor answers each with its command's R.
        self._put(cast("Envelope[object]", Envelope(cast("MailboxCommand", command), reply)))

    def tell_internal(self, command: TurnCommand, reply: asyncio.Future[None] | None = None) -> None:
        """Queue a message of the actor's own turn; after close, a waiting reply fails."""
        if self.closed:
            if reply is not None and not reply.done():
                reply.set_exception(ActorStoppedError())
            return
        self._put(cast("Envelope[object]", Envelope(command, reply)))

    def _put(self, envelope: Envelope[object]) -> None:
        self._items.append(envelope)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Envelope[object]:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()

    def close(self) -> list[Envelope[object]]:
        """Refuse further commands; hand back what was still queued."""
        self.closed = True
        out = list(self._items)
        self._items.clear()
        return out
