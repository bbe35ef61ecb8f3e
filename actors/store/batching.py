"""Group commit: one writer turns many concurrent writes into few transactions.

Every ``commit()`` call enqueues its ops and waits. The writer takes everything queued (up to
``max_batch`` ops), hands it to the store's ``write`` in one transaction, and only then
resolves every waiting caller; a failed transaction fails every caller in it. Ops of one call
keep their order and never straddle two transactions. The writer is a task of the event loop
for an awaitable ``write`` (``GroupCommitter``, PostgreSQL), or a thread of its own for a
blocking one (``ThreadCommitter``, SQLite); both answer their callers the same way
(``Committer``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from queue import SimpleQueue

from actors.batch import BatchQueue, QueueClosedError
from actors.core.errors import FencedError, StoreClosedError, StoreUnavailableError
from actors.core.records import (
    Claim,
    Fence,
    KeepEvents,
    Op,
    PutCheckpoint,
    PutDelivery,
    PutEvent,
    PutMessage,
    PutSession,
    PutSummary,
    RemoveSession,
    TrimSession,
    op_session,
)

__all__ = [
    "Committer", "GroupCommitter", "Rows", "StoreClosedError", "ThreadCommitter", "admitted", "claims", "fences",
    "stale",
]

log = logging.getLogger("sessiond.store")


def fences(ops: Sequence[Op]) -> dict[str, int]:
    """The lowest epoch each fenced session's ops in ``ops`` were written under."""
    out: dict[str, int] = {}
    for op in ops:
        if isinstance(op, Fence):
            out[op.session_id] = min(op.epoch, out.get(op.session_id, op.epoch))
    return out


def claims(ops: Sequence[Op]) -> list[str]:
    """The sessions whose lease epoch ``ops`` advance, in order."""
    return [op.session_id for op in ops if isinstance(op, Claim)]


def stale(ops: Sequence[Op], epochs: dict[str, int]) -> list[str]:
    """The sessions ``ops`` are fenced for whose stored epoch (in ``epochs``) is higher."""
    return [sid for sid, epoch in fences(ops).items() if epochs.get(sid, epoch) > epoch]


def admitted(ops: Sequence[Op], epochs: dict[str, int]) -> Sequence[Op]:
    """``ops`` without any op of a session whose fence is stale: each store writes only these.
    (Only an actor writes to an existing session, so every op of a refused session is stale.)"""
    refused = set(stale(ops, epochs))
    return [op for op in ops if op_session(op) not in refused] if refused else ops


class _Pending:
    __slots__ = ("fut", "ops")

    def __init__(self, ops: Sequence[Op], fut: asyncio.Future[dict[str, int]]) -> None:
        self.ops = ops
        self.fut = fut


class Committer:
    """What both writers of a store share: answering the callers of each batch.

    A batch's write commits it in one transaction: it applies the ``Claim`` ops first, leaves
    out every op of a session whose ``Fence`` is stale (``admitted``), and returns the stored
    lease epoch of every session a Claim names and of every fenced one whose epoch is higher
    (a store may return the others' too). A caller fenced for a session whose epoch is higher
    gets a ``FencedError`` (nothing of its commit was written). Ops of one call keep their
    order and never straddle two transactions; a failed transaction fails every caller in it.
    """

    def __init__(
        self,
        *,
        max_batch: int,
        on_commit: Callable[[float, int], None] | None = None,
        outage: Callable[[BaseException], bool] | None = None,
    ) -> None:
        # Which failures mean the database is unreachable: answered 503, logged once per outage.
        self._outage = outage or (lambda exc: isinstance(exc, OSError))
        self._failing_since: float | None = None
        self._failed_batches = 0
        self._max_batch = max_batch
        self.on_commit = on_commit
        self._closed = False

    async def commit(self, ops: Sequence[Op]) -> None:
        await self._commit(ops)

    async def claim_epoch(self, session_id: str) -> int | None:
        """Advance the session's lease epoch, in the next group commit; None: no such session."""
        return (await self._commit([Claim(session_id)])).get(session_id)

    async def _commit(self, ops: Sequence[Op]) -> dict[str, int]:
        raise NotImplementedError

    def _settle(
        self, batch: Sequence[_Pending], epochs: dict[str, int] | None, exc: Exception | None, seconds: float
    ) -> None:
        """Answer every caller of a batch: its commit's result, or the failure."""
        if exc is not None or epochs is None:
            error: BaseException = exc or StoreUnavailableError("the commit returned nothing")
            if exc is not None and self._outage(exc):
                # One line when the outage begins and a summary when it ends, not a
                # traceback per batch.
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                    log.error("store unreachable (%s: %s): writes answer 503 until it is back",
                              type(exc).__name__, exc)
                self._failed_batches += 1
                error = StoreUnavailableError(f"the database is unreachable ({type(exc).__name__})")
            else:
                log.error("store commit failed", exc_info=exc)
            for p in batch:
                if not p.fut.done():
                    p.fut.set_exception(error)
            return
        if self._failing_since is not None:
            log.warning("store reachable again after %.1f s (%d batches refused meanwhile)",
                        time.monotonic() - self._failing_since, self._failed_batches)
            self._failing_since, self._failed_batches = None, 0
        if self.on_commit is not None:
            self.on_commit(seconds, sum(len(p.ops) for p in batch))
        refused: set[str] = set()
        for p in batch:
            moved = stale(p.ops, epochs)
            refused.update(moved)
            if p.fut.done():
                continue
            if moved:
                detail = f"session {moved[0]} moved to another node; nothing was written"
                p.fut.set_exception(FencedError(detail))
            else:
                p.fut.set_result(epochs)
        for sid in sorted(refused):
            log.warning("write refused for session %s: another node owns it now (its lease epoch is %d)",
                        sid, epochs[sid])


class GroupCommitter(Committer):
    """The single writer of a store whose writes are awaitable (PostgreSQL): a task of the
    event loop that takes everything queued (up to ``max_batch`` ops), hands it to ``write``
    in one transaction, and only then answers every caller."""

    def __init__(
        self,
        write: Callable[[list[Op]], Awaitable[dict[str, int]]],
        *,
        max_batch: int,
        queue_size: int,
        on_commit: Callable[[float, int], None] | None = None,
        outage: Callable[[BaseException], bool] | None = None,
    ) -> None:
        super().__init__(max_batch=max_batch, on_commit=on_commit, outage=outage)
        self._write = write
        self._queue: BatchQueue[_Pending] = BatchQueue(queue_size)
        self._task: asyncio.Task[None] | None = None

    def start(self, name: str) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=name)

    async def _commit(self, ops: Sequence[Op]) -> dict[str, int]:
        if self._closed:
            raise StoreClosedError("store is closed")
        fut: asyncio.Future[dict[str, int]] = asyncio.get_running_loop().create_future()
        try:
            await self._queue.put(_Pending(ops, fut))
        except QueueClosedError:
            raise StoreClosedError("store is closed") from None
        return await fut

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
            started = time.perf_counter()
            try:
                epochs = await self._write([op for p in batch for op in p.ops])
            except Exception as exc:
                self._settle(batch, None, exc, 0.0)
            else:
                self._settle(batch, epochs, None, time.perf_counter() - started)


class ThreadCommitter(Committer):
    """Group commit driven by a thread of its own, for a store whose writes are blocking calls
    (SQLite). The thread takes everything queued, writes it in one transaction and goes straight
    on to the next batch, while the event loop answers the callers of the one before: no turn of
    a busy loop lies between two commits, nor between a commit and the thread. ``write`` runs on
    that thread only. Callers wait for room once ``queue_size`` commits are pending."""

    def __init__(
        self,
        write: Callable[[list[Op]], dict[str, int]],
        *,
        max_batch: int,
        queue_size: int,
        on_commit: Callable[[float, int], None] | None = None,
        outage: Callable[[BaseException], bool] | None = None,
    ) -> None:
        super().__init__(max_batch=max_batch, on_commit=on_commit, outage=outage)
        self._write_sync = write
        self._inbox: SimpleQueue[_Pending | None] = SimpleQueue()
        self._room = asyncio.Semaphore(queue_size)
        self._thread: threading.Thread | None = None
        self._ended: asyncio.Future[None] | None = None
        self._loop_ref: asyncio.AbstractEventLoop | None = None

    def start(self, name: str) -> None:
        loop = asyncio.get_running_loop()
        self._loop_ref = loop
        self._ended = loop.create_future()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    async def _commit(self, ops: Sequence[Op]) -> dict[str, int]:
        if self._closed:
            raise StoreClosedError("store is closed")
        await self._room.acquire()
        if self._closed:
            self._room.release()
            raise StoreClosedError("store is closed")
        fut: asyncio.Future[dict[str, int]] = asyncio.get_running_loop().create_future()
        self._inbox.put(_Pending(ops, fut))
        return await fut

    async def aclose(self) -> None:
        """Stop taking writes; the thread finishes everything queued before this."""
        if self._closed:
            return
        self._closed = True
        if self._thread is None or self._ended is None:
            return
        self._inbox.put(None)
        await self._ended

    def _run(self) -> None:
        loop = self._loop_ref
        assert loop is not None and self._ended is not None
        inbox, ending = self._inbox, False
        while not ending:
            first = inbox.get()
            if first is None:
                break
            batch, n = [first], len(first.ops)
            while n < self._max_batch and not inbox.empty():
                item = inbox.get_nowait()
                if item is None:
                    ending = True
                    break
                batch.append(item)
                n += len(item.ops)
            started = time.perf_counter()
            try:
                epochs, error = self._write_sync([op for p in batch for op in p.ops]), None
            except Exception as exc:
                epochs, error = None, exc
            loop.call_soon_threadsafe(self._answer, batch, epochs, error, time.perf_counter() - started)
        loop.call_soon_threadsafe(self._ended.set_result, None)

    def _answer(
        self, batch: list[_Pending], epochs: dict[str, int] | None, exc: Exception | None, seconds: float
    ) -> None:
        for _ in batch:
            self._room.release()
        self._settle(batch, epochs, exc, seconds)


class Rows:
    """A batch of ops as rows per table, in the order each store writes them: upserts of
    sessions, messages, checkpoints, events and summaries, then the summaries replaced, then what
    retention trims and the old events a session no longer needs (``KeepEvents``), then deletes
    (so a late write racing a delete can never resurrect the session). Webhook outbox rows are a
    table of their own, which a session's delete leaves alone (its ``session.deleted`` delivery
    is one of them)."""

    __slots__ = (
        "checkpoints", "deletes", "deliveries", "events", "keep_events", "messages", "sessions", "summaries",
        "summary_drops", "trim_checkpoints", "trim_events", "trim_messages",
    )

    def __init__(self, ops: Sequence[Op]) -> None:
        # id, namespace, end_user_id, last_active_at, body, due_at
        self.sessions: list[tuple[str, str, str | None, str, str, float | None]] = []
        self.messages: list[tuple[str, str, str]] = []
        self.checkpoints: list[tuple[str, str, str]] = []
        self.events: list[tuple[str, int, str, bytes]] = []
        self.summaries: list[tuple[str, str, str]] = []
        self.summary_drops: list[tuple[str, str]] = []
        self.trim_messages: list[tuple[str, str]] = []  # (session_id, id)
        self.trim_checkpoints: list[tuple[str, str]] = []
        self.trim_events: list[tuple[str, int]] = []  # (session_id, through seq)
        self.keep_events: list[tuple[str, int]] = []  # (session_id, how many of the newest stay)
        self.deletes: list[tuple[str]] = []
        # id, endpoint, session_id, event_type, body, created_at (also its first next_attempt_at)
        self.deliveries: list[tuple[str, str, str, str, bytes, float]] = []
        for op in ops:
            match op:
                case PutSession():
                    self.sessions.append(
                        (op.id, op.namespace, op.end_user_id, op.last_active_at, op.body.decode(), op.due_at)
                    )
                case PutMessage():
                    self.messages.append((op.id, op.session_id, op.body.decode()))
                case PutCheckpoint():
                    self.checkpoints.append((op.id, op.session_id, op.body.decode()))
                case PutEvent(session_id=sid, event=ev):
                    self.events.append((sid, ev.seq, ev.type, ev.data))
                case PutSummary():
                    self.summaries.append((op.id, op.session_id, op.body.decode()))
                    self.summary_drops += [(op.session_id, d) for d in op.drop]
                case TrimSession(session_id=sid):
                    self.trim_messages += [(sid, m) for m in op.message_ids]
                    self.trim_checkpoints += [(sid, c) for c in op.checkpoint_ids]
                    self.trim_events.append((sid, op.events_through))
                    self.summary_drops += [(sid, d) for d in op.summary_ids]
                case KeepEvents(session_id=sid, newest=n):
                    self.keep_events.append((sid, n))
                case RemoveSession(session_id=sid):
                    self.deletes.append((sid,))
                case PutDelivery():
                    self.deliveries.append((op.id, op.endpoint, op.session_id, op.event_type, op.body, op.created_at))
                case Fence() | Claim():
                    pass  # applied by the store before the rows are written
