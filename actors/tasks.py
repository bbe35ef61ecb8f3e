"""Spawner: the one owner of a component's background tasks (aiojobs' Scheduler, in small).

Every task started through it is kept until it ends, its failure is logged (never lost as
"exception was never retrieved"), and ``aclose()`` cancels what is left and waits for it, so
nothing outlives the component that started it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

__all__ = ["Spawner"]

log = logging.getLogger("sessiond.tasks")


class Spawner:
    """A set of owned tasks: ``spawn(coro, name=...)``, then ``await aclose()`` once."""

    __slots__ = ("_closed", "_tasks")

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def closed(self) -> bool:
        return self._closed

    def spawn(self, coro: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task[None]:
        if self._closed:
            coro.close()  # never awaited, and says so without a RuntimeWarning
            raise RuntimeError(f"cannot spawn {name}: the spawner is closed")
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("task %s failed", task.get_name(), exc_info=exc)

    async def aclose(self) -> None:
        """Refuse new tasks, cancel the running ones and wait until every one has ended."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
