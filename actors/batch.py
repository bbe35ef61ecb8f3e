"""BatchQueue: a bounded queue whose single reader takes everything queued at once.

Writers ``put`` (waiting for room) or ``put_nowait`` (``asyncio.QueueFull`` when full); the
reader loops ``async for batch in q.batches(n)``. ``close()`` ends it: the reader still gets
what was queued before, then the loop ends; no sentinel value travels through the queue
(trio's channels end by ``aclose()`` the same way).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Generic, TypeVar

__all__ = ["BatchQueue", "QueueClosedError"]

T = TypeVar("T")


class QueueClosedError(Exception):
    """The queue was closed by its owner before the item could be queued."""


class BatchQueue(Generic[T]):
    """Bounded FIFO with one batch reader (see the module docstring)."""

    __slots__ = ("_getter", "_items", "_maxsize", "_putters", "closed")

    def __init__(self, maxsize: int) -> None:
        self._items: deque[T] = deque()
        self._maxsize = maxsize
        self._getter: asyncio.Future[None] | None = None
        self._putters: deque[asyncio.Future[None]] = deque()
        self.closed = False

    def __len__(self) -> int:
        return len(self._items)

    def put_nowait(self, item: T) -> None:
        if self.closed:
            raise QueueClosedError("the queue is closed")
        if len(self._items) >= self._maxsize:
            raise asyncio.QueueFull
        self._items.append(item)
        getter = self._getter
        if getter is not None and not getter.done():
            getter.set_result(None)

    async def put(self, item: T) -> None:
        """Queue ``item``, waiting while the queue is full."""
        while len(self._items) >= self._maxsize and not self.closed:
            fut = asyncio.get_running_loop().create_future()
            self._putters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                self._wake_putters()  # the room this putter may have been given goes to the next
                raise
        self.put_nowait(item)

    def close(self) -> None:
        """No more items: the reader ends after what is queued; waiting writers fail."""
        self.closed = True
        getter = self._getter
        if getter is not None and not getter.done():
            getter.set_result(None)
        while self._putters:
            fut = self._putters.popleft()
            if not fut.done():
                fut.set_result(None)

    def _wake_putters(self) -> None:
        room = self._maxsize - len(self._items)
        while self._putters and room > 0:
            fut = self._putters.popleft()
            if not fut.done():
                fut.set_result(None)
                room -= 1

    async def batches(self, max_n: int, cost: Callable[[T], int] | None = None) -> AsyncIterator[list[T]]:
        """Everything queued, up to ``max_n`` (items, or ``cost`` units: a batch takes one
        more item while below it), until closed and empty."""
        items = self._items
        while True:
            while not items:
                if self.closed:
                    return
                self._getter = asyncio.get_running_loop().create_future()
                try:
                    await self._getter
                finally:
                    self._getter = None
            first = items.popleft()
            batch = [first]
            n = cost(first) if cost is not None else 1
            while items and n < max_n:
                item = items.popleft()
                batch.append(item)
                n += cost(item) if cost is not None else 1
            self._wake_putters()
            yield batch
