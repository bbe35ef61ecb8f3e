"""Group commit: one writer task turns many concurrent writes into few transactions.

Every ``commit()`` call enqueues its ops and waits. The writer takes everything queued (up to
``max_batch`` ops), hands it to the store's ``write`` in one transaction, and only then
resolves every waiting caller; a failed transaction fails every caller in it. Ops of one call
keep their order and never straddle two transactions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from actors.batch import BatchQueue, QueueClosedError
from actors.core.errors import StoreClosedError, StoreUnavailableError
from actors.core.records import (
    Op,
    PutCheckpoint,
    PutDelivery,
    PutEvent,
    PutMessage,
    PutSession,
    PutSummary,
    RemoveSession,
)

__all__ = ["GroupCommitter", "Rows", "StoreClosedError"]

log = logging.getLogger("sessiond.store")


class _Pending:
    __slots__ = ("fut", "ops")

    def __init__(self, ops: Sequence[Op], fut: asyncio.Future[None]) -> None:
        self.ops = ops
        self.fut = fut


class GroupCommitter:
    """The single writer of one store."""

    def __init__(
        self,
        write: Callable[[list[Op]], Awaitable[None]],
        *,
        max_batch: int,
        queue_size: int,
        on_commit: Callable[[float, int], None] | None = None,
        outage: Callable[[BaseException], bool] | None = None,
    ) -> None:
        self._write = write
        # Which failures mean the database is unreachable: answered 503, logged once per outage.
        self._outage = outage or (lambda exc: isinstance(exc, OSError))
        self._failing_since: float | None = None
        self._failed_batches = 0
        self._max_batch = max_batch
        self._queue: BatchQueue[_Pending] = BatchQueue(queue_size)
        self.on_commit = on_commit
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def start(self, name: str) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=name)

    async def commit(self, ops: Sequence[Op]) -> None:
        if self._closed:
            raise StoreClosedError("store is closed")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            await self._queue.put(_Pending(ops, fut))
        except QueueClosedError:
            raise StoreClosedError("store is closed") from None
        await fut

    async def aclose(self) -> None:
        """Stop taking writes; the writer finishes everything queued before this."""
        if self._closed:
            return
        self._closed = True
        self._queue.close()
        if self._task is not None:
            await self._task

    async def _loop(self) -> None:
        async for batch in self._queue.batches(self._max_batch, cost=lambda p: len(p.ops)):
            count = sum(len(p.ops) for p in batch)
            started = time.perf_counter()
            try:
                await self._write([op for p in batch for op in p.ops])
            except Exception as exc:
                error: BaseException = exc
                if self._outage(exc):
                    # One line when the outage begins and a summary when it ends, not a
                    # traceback per batch.
                    if self._failing_since is None:
                        self._failing_since = time.monotonic()
                        log.error("store unreachable (%s: %s): writes answer 503 until it is back",
                                  type(exc).__name__, exc)
                    self._failed_batches += 1
                    error = StoreUnavailableError(f"the database is unreachable ({type(exc).__name__})")
                else:
                    log.exception("store commit failed")
                for p in batch:
                    if not p.fut.done():
                        p.fut.set_exception(error)
            else:
                if self._failing_since is not None:
                    log.warning("store reachable again after %.1f s (%d batches refused meanwhile)",
                                time.monotonic() - self._failing_since, self._failed_batches)
                    self._failing_since, self._failed_batches = None, 0
                if self.on_commit is not None:
                    self.on_commit(time.perf_counter() - started, count)
                for p in batch:
                    if not p.fut.done():
                        p.fut.set_result(None)


class Rows:
    """A batch of ops as rows per table, in the order each store writes them: upserts of
    sessions, messages, checkpoints, events and summaries, then the summaries replaced, then
    deletes (so a late write racing a delete can never resurrect the session). Webhook outbox
    rows are a table of their own, which a session's delete leaves alone (its
    ``session.deleted`` delivery is one of them)."""

    __slots__ = (
        "checkpoints", "deletes", "deliveries", "events", "messages", "sessions", "summaries", "summary_drops",
    )

    def __init__(self, ops: Sequence[Op]) -> None:
        self.sessions: list[tuple[str, str, str | None, str, str]] = []
        self.messages: list[tuple[str, str, str]] = []
        self.checkpoints: list[tuple[str, str, str]] = []
        self.events: list[tuple[str, int, str, bytes]] = []
        self.summaries: list[tuple[str, str, str]] = []
        self.summary_drops: list[tuple[str, str]] = []
        self.deletes: list[tuple[str]] = []
        # id, endpoint, session_id, event_type, body, created_at (also its first next_attempt_at)
        self.deliveries: list[tuple[str, str, str, str, bytes, float]] = []
        for op in ops:
            match op:
                case PutSession():
                    self.sessions.append((op.id, op.namespace, op.end_user_id, op.last_active_at, op.body.decode()))
                case PutMessage():
                    self.messages.append((op.id, op.session_id, op.body.decode()))
                case PutCheckpoint():
                    self.checkpoints.append((op.id, op.session_id, op.body.decode()))
                case PutEvent(session_id=sid, event=ev):
                    self.events.append((sid, ev.seq, ev.type, ev.data))
                case PutSummary():
                    self.summaries.append((op.id, op.session_id, op.body.decode()))
                    self.summary_drops += [(op.session_id, d) for d in op.drop]
                case RemoveSession(session_id=sid):
                    self.deletes.append((sid,))
                case PutDelivery():
                    self.deliveries.append((op.id, op.endpoint, op.session_id, op.event_type, op.body, op.created_at))
