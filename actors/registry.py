"""Registry: activates, passivates, supervises and drains the session actors.

A virtual-actor directory: ``get(id)`` brings a session to life from the store on demand,
idle actors are passivated (snapshot, stop, forget) so memory is spent only on sessions in
use, a crashed actor is counted and restarted from the store, and ``drain()`` stops them
all in order on shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, cast

from actors.cluster.forward import RemoteSession
from actors.cluster.node import Cluster
from actors.core.commands import AnyCommand, Command, Passivate, Shutdown, TaskCommand
from actors.core.errors import ActorStoppedError, ConflictError, NotFoundError, UnavailableError
from actors.core.events import FrameEncoder
from actors.core.export import SessionExport, from_export, remap_ids
from actors.core.ids import new_id, utcnow
from actors.core.records import (
    LoadedSession,
    PutCheckpoint,
    PutMessage,
    PutSession,
    SessionRecord,
    Stats,
    decode_record,
)
from actors.core.tree import Node
from actors.core.webhooks import Outbox
from actors.ports import Provider, SessionRef, SessionStore
from actors.session.actor import ActorSettings, SessionActor
from actors.tasks import Spawner

__all__ = ["Registry"]

log = logging.getLogger("sessiond.registry")

# Sessions created here and not used yet, kept so that the first use starts the actor at once
# (``create``): at most this many, holding at most this many bytes of bodies (a caller's large
# system prompts cannot make it grow), the oldest forgotten first (it then activates as any other).
_FRESH_MEMORY = 1024
_FRESH_BYTES = 4 << 20


# How often the live actors' replay logs are held to [sessions] replay_memory_bytes, in seconds.
_MEMORY_EVERY = 1.0


def _water_level(sizes: list[int], target: int) -> int:
    """The largest ``c`` with ``sum(min(s, c) for s in sizes) <= target`` (``sizes`` from the
    largest down)."""
    rest = sum(sizes)
    for i, size in enumerate(sizes):
        rest -= size  # what the logs below this one hold
        level = (target - rest) // (i + 1)
        if level >= (sizes[i + 1] if i + 1 < len(sizes) else 0):
            return max(0, min(level, size))
    return 0


class Registry:
    """One per server; owns every actor task and the sweeper."""

    def __init__(
        self,
        store: SessionStore,
        provider: Provider,
        *,
        settings: ActorSettings,
        idle_seconds: float,
        frame: FrameEncoder,
        max_live: int = 1 << 62,
        replay_memory_bytes: int = 1 << 62,
        stats: Stats | None = None,
        cluster: Cluster | None = None,
        outbox: Outbox | None = None,
    ) -> None:
        self.store = store
        self.outbox = outbox  # webhooks: every actor writes its events' deliveries with them
        self.frame = frame  # the edge's wire format, for every actor's EventLog
        self.provider = provider
        self.settings = settings
        self.idle_seconds = idle_seconds
        # Past max_live live actors (and a sixteenth more, so this is rare), the quiet ones used
        # longest ago are passivated down to it, however recently (``_evict``).
        self.max_live = max_live
        self._evict_at = max_live + max(1, max_live // 16)
        self._evicting: set[str] = set()  # told to passivate early (_evict, shed_memory), not stopped yet
        # Bytes of replay log all live actors keep together, at most (``shed_memory``).
        self.replay_memory_bytes = replay_memory_bytes
        # Cluster mode: asked before a task another node forwarded here starts (the edge's
        # admission of this node's load; it raises to refuse). None: every one starts.
        self.admit_task: Callable[[], None] | None = None
        self.stats = stats or Stats()
        self._actors: dict[str, SessionActor] = {}
        self._activating: dict[str, asyncio.Future[SessionRef]] = {}
        # id -> the body its creation committed, until its first activation (``create``).
        self._fresh: dict[str, bytes] = {}
        self._fresh_bytes = 0
        # The sweeper, the lease renewer, restarts and lease releases.
        self._tasks = Spawner()
        self.cluster = cluster
        self.accepting = True
        # Loops that run while the registry does, among its tasks (the retention sweeper).
        self._background: list[tuple[Callable[[], Coroutine[Any, Any, None]], str]] = []

    def __len__(self) -> int:
        return len(self._actors)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._actors

    def actors(self) -> list[SessionActor]:
        return list(self._actors.values())

    # -- life cycle ------------------------------------------------------------------------

    def supervise(self, run: Callable[[], Coroutine[Any, Any, None]], *, name: str) -> None:
        """Run ``run()`` from ``start()`` until ``drain()``, as one of the registry's own tasks."""
        self._background.append((run, name))

    async def start(self) -> None:
        self._tasks.spawn(self._sweep(), name="registry-sweeper")
        self._tasks.spawn(self._bound_memory(), name="registry-memory")
        for run, name in self._background:
            self._tasks.spawn(run(), name=name)
        if self.cluster is not None:
            await self.cluster.start(self._serve_forwarded)
            self._tasks.spawn(self._renew_leases(), name="registry-leases")

    async def drain(self) -> None:
        """Stop accepting, interrupt running tasks, flush every actor, close its streams."""
        if not self.accepting:
            return
        self.accepting = False
        await self._tasks.aclose()
        actors = list(self._actors.values())
        await asyncio.gather(*(self._shutdown(a) for a in actors), return_exceptions=True)
        if self.cluster is not None:
            # Leases go back at once, so another node can take these sessions without waiting.
            await asyncio.gather(*(self.cluster.leases.release(a.id) for a in actors), return_exceptions=True)
            await self.cluster.aclose()

    @staticmethod
    async def _shutdown(actor: SessionActor) -> None:
        try:
            await actor.ask(Shutdown())
        except ActorStoppedError:
            pass
        await actor.wait_stopped()

    # -- activation ------------------------------------------------------------------------

    async def create(self, record: SessionRecord) -> SessionRecord:
        """Persist a new session; its actor starts on first use.

        That first use needs neither a claim nor a load: the session's creation is its first
        activation. Its row starts at lease epoch 0 and only an actor writes to a session, so
        until then the store holds exactly what was committed here, and epoch 0 is this
        process's: a later activation (after passivation, a restart, or by another process on
        the same database) claims the next epoch, and fences out an actor of epoch 0 as any
        other stale one. Not in cluster mode, where a session lives where its lease is.
        """
        if not self.accepting:
            raise UnavailableError("the server is shutting down")
        put = PutSession.of(record)
        await self.store.commit([put])
        if self.cluster is None and len(put.body) <= _FRESH_BYTES:
            fresh = self._fresh
            fresh[record.id] = put.body
            self._fresh_bytes += len(put.body)
            while len(fresh) > _FRESH_MEMORY or self._fresh_bytes > _FRESH_BYTES:
                self._fresh_bytes -= len(fresh.pop(next(iter(fresh))))
        return record

    @staticmethod
    def new_record(**fields: Any) -> SessionRecord:
        now = utcnow()
        fields.setdefault("id", new_id("ses"))
        return SessionRecord(created_at=now, last_active_at=now, **fields)

    async def import_session(self, doc: SessionExport, *, new_id: bool = False, **fields: Any) -> SessionRecord:
        """Store a session from its exported form (fresh ids with ``new_id``); ``fields``
        override the session's own (e.g. the importer's end user)."""
        if not self.accepting:
            raise UnavailableError("the server is shutting down")
        if new_id:
            doc = remap_ids(doc)
        record, nodes, checkpoints = from_export(doc)
        for name, value in fields.items():
            setattr(record, name, value)
        conflict = ConflictError(f"session {record.id} exists already; import with new_id=true for a copy")
        if record.id in self._actors:
            raise conflict
        rows: list[PutMessage | PutCheckpoint] = [PutMessage.of(record.id, n) for n in nodes]
        rows += [PutCheckpoint.of(record.id, c) for c in checkpoints]
        # Insert-only, in one transaction: a session that exists (or an import of the same id
        # racing this one) is never written to, so exactly one of two imports of an id wins.
        if not await self.store.insert_session(PutSession.of(record), rows):
            raise conflict
        return record

    async def create_from_nodes(self, record: SessionRecord, nodes: list[Node]) -> SessionRecord:
        """A new session holding ``nodes`` (parents first), the last one active."""
        record.active_leaf_id = nodes[-1].id if nodes else None
        record.message_count = len(nodes)
        await self.store.commit([*(PutMessage.of(record.id, n) for n in nodes), PutSession.of(record)])
        return record

    async def get(self, session_id: str) -> SessionRef:
        """The session, live: its actor here (activated if need be) or its owner's, remote."""
        actor = self._actors.get(session_id)
        if actor is not None and actor.is_alive:
            return actor
        if not self.accepting:
            raise UnavailableError("the server is shutting down")
        pending = self._activating.get(session_id)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[SessionRef] = asyncio.get_running_loop().create_future()
        self._activating[session_id] = fut
        try:
            found = await (self._locate(session_id) if self.cluster is not None else self._activate(session_id))
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: waiters re-raise it, nobody else needs to
            raise
        else:
            fut.set_result(found)
            return found
        finally:
            del self._activating[session_id]

    async def _activate(self, session_id: str) -> SessionActor:
        # Claim first, load second: whatever an earlier activation (on another node, say one
        # that stalled past its lease) commits from now on is refused, and what it committed
        # before is in what we load.
        body = self._fresh.pop(session_id, None)
        epoch: int | None
        loaded: LoadedSession | None
        if body is not None:  # created here and not used since (``create``)
            self._fresh_bytes -= len(body)
            epoch = 0
            loaded = LoadedSession(record=decode_record(body), nodes=[], checkpoints=[], events=[], max_seq=0)
        else:
            epoch = await self.store.claim_epoch(session_id)
            loaded = await self.store.load_session(session_id, events=self.settings.replay_events) if epoch else None
        if loaded is None or epoch is None:
            raise NotFoundError(f"no session {session_id}")
        actor = SessionActor(
            loaded,
            store=self.store,
            provider=self.provider,
            settings=self.settings,
            stats=self.stats,
            on_stop=self._stopped,
            frame=self.frame,
            sink=self.cluster.streams.publish if self.cluster is not None else None,
            guard=self.cluster.leases.holds if self.cluster is not None else None,
            epoch=epoch,
            outbox=self.outbox,
        )
        if self.cluster is not None:
            await self.cluster.streams.catch_up(session_id, loaded.events)
        await actor.start()
        self._actors[session_id] = actor
        self.stats.activations += 1
        if len(self._actors) - len(self._evicting) > self._evict_at:
            self._evict(keep=actor)
        return actor

    def _evict(self, *, keep: SessionActor) -> None:
        """Passivate the quiet actors used longest ago (no stream, no turn, not even one parked
        on tool calls, nothing queued) until max_live are left: a caller who reads many
        sessions must not hold them all in memory for idle_seconds. Busy ones stay, past the
        bound if need be (streams and tasks have bounds of their own)."""
        evicting = self._settle_evicting()
        for actor in self._quiet(keep)[: len(self._actors) - len(evicting) - self.max_live]:
            self._passivate_early(actor)

    def _quiet(self, keep: SessionActor | None = None) -> list[SessionActor]:
        """The quiet actors not told to passivate yet, used longest ago first (``keep`` left out)."""
        evicting = self._evicting
        return sorted(
            (a for a in self._actors.values() if a is not keep and a.id not in evicting and a.is_quiet()),
            key=lambda a: a.last_activity,
        )

    def _passivate_early(self, actor: SessionActor) -> bool:
        """Tell a quiet actor to passivate now (whether it was told: a full or stopping one is
        not quiet after all)."""
        try:
            actor.tell(Passivate(0))
        except Exception:
            return False
        self._evicting.add(actor.id)
        return True

    def _settle_evicting(self) -> set[str]:
        """The actors told to passivate that have not answered yet: one that refused (a command
        came first) and stays live is one like any other again."""
        evicting = self._evicting
        for sid in list(evicting):
            actor = self._actors.get(sid)
            if actor is not None and actor.is_alive and actor.mailbox_depth == 0:
                evicting.discard(sid)
        return evicting

    def replay_bytes(self) -> int:
        """Bytes of event frames the live actors keep for replay, together."""
        return sum(a.log.size for a in self._actors.values())

    def shed_memory(self) -> int:
        """Bring the live actors' replay logs under ``replay_memory_bytes`` when they are past
        it: down to an eighth below it, first by passivating the quiet actors used longest ago
        (as ``_evict``), then, if the busy ones alone hold more, by dropping the oldest events
        of the largest logs down to a size they all keep. The bytes it frees or will free."""
        budget = self.replay_memory_bytes
        evicting = self._settle_evicting()
        sizes = {sid: a.log.size for sid, a in self._actors.items() if sid not in evicting}
        total = sum(sizes.values())
        if total <= budget:
            return 0
        target = budget - budget // 8
        freed = 0
        for actor in self._quiet():
            if total - freed <= target:
                return freed
            if self._passivate_early(actor):
                freed += sizes.pop(actor.id)
        if total - freed <= target:
            return freed
        # The busy ones: the largest logs are cut to the one size c at which they fit together.
        cap = _water_level(sorted(sizes.values(), reverse=True), target)
        for sid, size in sizes.items():
            if size > cap:
                shed = self._actors[sid].shed_replay(cap)
                freed += shed
                self.stats.replay_shed += shed
        return freed

    async def _bound_memory(self) -> None:
        while True:
            await asyncio.sleep(_MEMORY_EVERY)
            try:
                self.shed_memory()
            except Exception:  # the next round tries again; the bound must not stop for good
                log.exception("bounding the replay logs' memory failed")

    # -- supervision -----------------------------------------------------------------------

    def _stopped(self, actor: SessionActor, crash: BaseException | None) -> None:
        if self._actors.get(actor.id) is actor:
            del self._actors[actor.id]
        if actor.stop_reason == "passivated":
            self.stats.passivations += 1
        if actor.id in self._evicting:
            self._evicting.discard(actor.id)
            self.stats.evictions += actor.stop_reason == "passivated"
        if self.cluster is not None and self.accepting and actor.stop_reason not in ("lease lost", "fenced"):
            self._tasks.spawn(self.cluster.leases.release(actor.id), name=f"lease-release:{actor.id}")
        if crash is None:
            return
        self.stats.crashes += 1
        if self.accepting:
            # Restart from the store at once, so a turn the crash cut off is reported
            # interrupted to whoever reconnects, without waiting for the next command.
            self._tasks.spawn(self._restart(actor.id), name=f"restart:{actor.id}")

    # -- cluster ---------------------------------------------------------------------------

    async def _locate(self, session_id: str) -> SessionRef:
        """Activate here if we win the lease; else the session lives on its owner."""
        cluster = self.cluster
        assert cluster is not None
        for _ in range(5):
            if await cluster.leases.acquire(session_id):
                try:
                    return await self._activate(session_id)
                except BaseException:
                    await cluster.leases.release(session_id)
                    raise
            owner = await cluster.leases.owner(session_id)
            if owner == cluster.node_id:
                return await self._activate(session_id)
            if owner is not None:
                record = await self.store.get_session(session_id)
                if record is None:
                    raise NotFoundError(f"no session {session_id}")
                return cluster.remote(record, owner)
            # The lease went away between our two questions: ask again.
        raise UnavailableError(f"session {session_id} is changing hands; retry shortly")

    async def _serve_forwarded(self, session_id: str, command: AnyCommand) -> object:
        target = await self.get(session_id)
        if isinstance(target, RemoteSession):
            raise ActorStoppedError(f"session {session_id} lives on {target.owner} now")
        if self.admit_task is not None and isinstance(command, TaskCommand) and command.starts_task:
            self.admit_task()  # the asking node admitted it against its own load, not this one's
        # The reply goes back on the wire as is: its type matters only to the asking node.
        return await target.ask(cast("Command[object]", command))

    async def _renew_leases(self) -> None:
        cluster = self.cluster
        assert cluster is not None
        interval = cluster.settings.lease_ms / 3000
        failing_since: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            try:
                lost = await cluster.leases.renew(list(self._actors))
            except Exception as exc:
                if failing_since is None:  # one line per outage, not one per renewal
                    failing_since = loop.time()
                    log.error("renewing session leases failed (%s: %s); retrying", type(exc).__name__, exc)
                continue
            if failing_since is not None:
                log.warning("session leases renewed again after %.1f s", loop.time() - failing_since)
                failing_since = None
            for session_id in lost:
                actor = self._actors.get(session_id)
                if actor is not None:
                    # Another node may own it now: stop at once, writing nothing more.
                    log.error("lease on session %s lost; stopping its actor here", session_id)
                    actor.abort("lease lost")

    async def _restart(self, session_id: str) -> None:
        try:
            await self.get(session_id)
        except NotFoundError:
            pass
        except Exception:
            log.exception("restarting session %s failed", session_id)

    async def _sweep(self) -> None:
        interval = max(self.idle_seconds / 2, 0.05)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            idle = [a for a in self._actors.values() if a.is_idle(now, self.idle_seconds)]
            for actor in idle:
                try:
                    actor.tell(Passivate(self.idle_seconds))
                except Exception:  # full or stopping: it is not idle after all
                    continue
