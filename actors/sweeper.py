"""The retention sweeper: finds the sessions whose retention is due and has each one act on it.

Every ``interval`` seconds it asks the store for at most ``batch`` due sessions (an indexed
query per rule: actors/store/expiry.py) and sends each an ``ExpireSession`` through the
registry, so the session's own actor deletes or trims it, on whichever node owns it (a
session live on another node gets the command forwarded there). A session with a task
running or waiting, an open stream or a command waiting answers ``busy`` and is left for a
later sweep; no answer is ever cut short. The registry runs it among its own tasks.

In cluster mode only the node holding the ``retention`` lock sweeps; it holds the lock while it
lives (renewed at every sweep) and gives it back when it drains.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import msgspec

from actors.core.commands import ExpireSession
from actors.core.errors import NotFoundError, SessiondError
from actors.core.records import SessionRecord
from actors.core.retention import ExpiryQuery, RetentionRules
from actors.ports import SessionRef, SessionStore

__all__ = ["RetentionStats", "SweepLock", "Sweeper", "SweeperSettings"]

log = logging.getLogger("sessiond.retention")


class SweeperSettings(msgspec.Struct, frozen=True, kw_only=True):
    interval: float = 60.0  # seconds between sweeps; 0 turns the sweeper off
    batch: int = 100  # sessions one sweep acts on at most
    rules: RetentionRules = msgspec.field(default_factory=RetentionRules)


class SweepLock(Protocol):
    """The cluster's one-sweeper-at-a-time role (actors.cluster.leases.NamedLock)."""

    async def hold(self) -> bool: ...

    async def release(self) -> None: ...


class RetentionStats:
    """Counters /metrics reads."""

    __slots__ = ("busy", "deleted", "errors", "messages_trimmed", "skipped", "sweeps", "trimmed")

    def __init__(self) -> None:
        self.sweeps = 0  # sweeps done by this node
        self.skipped = 0  # sweeps left to the node holding the lock
        self.deleted = 0
        self.trimmed = 0
        self.messages_trimmed = 0
        self.busy = 0  # due, but in use: asked again at a later sweep
        self.errors = 0


class Sweeper:
    """One per server (see the module docstring)."""

    def __init__(
        self,
        get: Callable[[str], Awaitable[SessionRef]],
        store: SessionStore,
        settings: SweeperSettings,
        *,
        on_deleted: Callable[[SessionRecord], Awaitable[None]] | None = None,
        lock: SweepLock | None = None,
    ) -> None:
        self._get = get
        self._store = store
        self.settings = settings
        self._on_deleted = on_deleted
        self._lock = lock
        self.stats = RetentionStats()
        self._failing = False
        # Sessions found in use (or not due after all), left out of the query until the time
        # given, so that they cannot fill every batch; at most `batch` of them.
        self._postponed: dict[str, float] = {}

    async def run(self) -> None:
        if self.settings.interval <= 0:
            return
        try:
            while True:
                await asyncio.sleep(self.settings.interval)
                try:
                    await self.sweep()
                    if self._failing:
                        log.warning("retention sweeps work again")
                        self._failing = False
                except Exception as exc:
                    self.stats.errors += 1
                    if not self._failing:  # one line per outage, not one per sweep
                        self._failing = True
                        log.error("retention sweep failed (%s: %s); retrying", type(exc).__name__, exc)
        finally:
            if self._lock is not None:
                try:
                    await asyncio.wait_for(self._lock.release(), 2)
                except Exception:
                    pass  # it lapses by itself

    async def sweep(self) -> int:
        """One sweep; returns how many sessions were deleted or trimmed."""
        if self._lock is not None and not await self._lock.hold():
            self.stats.skipped += 1
            return 0
        rules = self.settings.rules
        now = time.time()
        self._postponed = {sid: until for sid, until in self._postponed.items() if until > now}
        rows = await self._store.expired_sessions(
            ExpiryQuery(now=now, rules=rules, limit=self.settings.batch, skip=tuple(self._postponed))
        )
        done = 0
        for row in rows:
            command = ExpireSession(rules.configured(row.namespace, row.agent_id), rules.temporary_ttl_seconds)
            try:
                ref = await self._get(row.id)
                result = await ref.ask(command)
            except NotFoundError:
                continue  # deleted meanwhile
            except SessiondError as exc:
                # Stopping, changing hands, its mailbox full: a later sweep asks again.
                self.stats.busy += 1
                self._postpone(row.id, now)
                log.debug("retention of session %s postponed: %s", row.id, exc)
                continue
            match result.outcome:
                case "deleted":
                    self.stats.deleted += 1
                    done += 1
                    if self._on_deleted is not None and result.record is not None:
                        try:
                            await self._on_deleted(result.record)
                        except Exception:
                            self.stats.errors += 1
                            log.exception("cleaning up after deleted session %s failed", row.id)
                case "trimmed":
                    self.stats.trimmed += 1
                    self.stats.messages_trimmed += result.removed
                    done += 1
                case "busy":
                    self.stats.busy += 1
                    self._postpone(row.id, now)
                case "kept":
                    self._postpone(row.id, now)
        self.stats.sweeps += 1
        return done

    def _postpone(self, session_id: str, now: float) -> None:
        """Leave ``session_id`` out of the next sweeps' query for a few intervals (at least 1 s)."""
        if len(self._postponed) >= self.settings.batch:
            del self._postponed[min(self._postponed, key=self._postponed.__getitem__)]
        self._postponed[session_id] = now + max(5 * self.settings.interval, 1.0)
