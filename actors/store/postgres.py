"""PostgreSQL store (cluster mode): asyncpg, the same records and the same group-commit contract.

Several sessiond nodes share one database. As in SQLite, one writer task per node takes every
queued write, runs it in one transaction (one ``executemany`` per statement) and only then
resolves the waiting callers. The schema is versioned like SQLite's: numbered steps, the
number kept in the database (here in ``sessiond_schema``, under an advisory lock so two nodes
starting together migrate once).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg
import msgspec

from actors.records import (
    ApiKeyRecord,
    Checkpoint,
    DeleteSession,
    LoadedSession,
    Op,
    PutCheckpoint,
    PutEvent,
    PutMessage,
    PutSession,
    SessionQuery,
    SessionRecord,
    StoredEvent,
)
from actors.store.sqlite import StoreClosedError
from actors.tree import Node

__all__ = ["PostgresStore", "PG_MIGRATIONS"]

log = logging.getLogger("sessiond.store")

_dec_record = msgspec.json.Decoder(SessionRecord)
_dec_node = msgspec.json.Decoder(Node)
_dec_checkpoint = msgspec.json.Decoder(Checkpoint)

# Step N here matches step N of the SQLite MIGRATIONS (same tables, Postgres types).
PG_MIGRATIONS: list[str] = [
    """
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        namespace TEXT NOT NULL,
        end_user_id TEXT,
        last_active_at TEXT NOT NULL,
        body JSONB NOT NULL
    );
    CREATE INDEX sessions_by_activity ON sessions (last_active_at DESC, id DESC);
    CREATE INDEX sessions_by_user ON sessions (namespace, end_user_id, last_active_at DESC);
    CREATE TABLE messages (
        pos BIGSERIAL PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        session_id TEXT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX messages_by_session ON messages (session_id, pos);
    CREATE TABLE checkpoints (
        pos BIGSERIAL PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        session_id TEXT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX checkpoints_by_session ON checkpoints (session_id, pos);
    CREATE TABLE events (
        session_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        type TEXT NOT NULL,
        frame BYTEA NOT NULL,
        PRIMARY KEY (session_id, seq)
    );
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        secret_hash TEXT NOT NULL,
        created_at TEXT NOT NULL,
        revoked_at TEXT
    );
    """,
]

_UPSERT_SESSION = (
    "INSERT INTO sessions (id, namespace, end_user_id, last_active_at, body) VALUES ($1, $2, $3, $4, $5::jsonb)"
    " ON CONFLICT (id) DO UPDATE SET namespace = excluded.namespace, end_user_id = excluded.end_user_id,"
    " last_active_at = excluded.last_active_at, body = excluded.body"
)
_UPSERT_MESSAGE = (
    "INSERT INTO messages (id, session_id, body) VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE SET body = excluded.body"
)
_UPSERT_CHECKPOINT = (
    "INSERT INTO checkpoints (id, session_id, body) VALUES ($1, $2, $3)"
    " ON CONFLICT (id) DO UPDATE SET body = excluded.body"
)
_INSERT_EVENT = (
    "INSERT INTO events (session_id, seq, type, frame) VALUES ($1, $2, $3, $4)"
    " ON CONFLICT (session_id, seq) DO UPDATE SET type = excluded.type, frame = excluded.frame"
)
_DELETES = [
    "DELETE FROM messages WHERE session_id = $1",
    "DELETE FROM checkpoints WHERE session_id = $1",
    "DELETE FROM events WHERE session_id = $1",
    "DELETE FROM sessions WHERE id = $1",
]
_MIGRATION_LOCK = 0x5E55_10D  # advisory lock id: one node migrates at a time


class _Pending:
    __slots__ = ("ops", "fut")

    def __init__(self, ops: Sequence[Op], fut: asyncio.Future[None]) -> None:
        self.ops = ops
        self.fut = fut


class PostgresStore:
    """The shared Store of a cluster: one PostgreSQL database."""

    def __init__(
        self,
        dsn: str,
        *,
        max_batch: int = 2000,
        queue_size: int = 10000,
        pool_size: int = 8,
        on_commit: Callable[[float, int], None] | None = None,
    ) -> None:
        self.dsn = dsn
        self.path = dsn  # what `sessiond serve` names when it says where a key is kept
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue(queue_size)
        self._pool_size = pool_size
        self._on_commit = on_commit
        self._pool: asyncpg.Pool | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closed = False

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=self._pool_size)
        async with self._pool.acquire() as conn:
            await self._migrate(conn)
        self._writer = asyncio.get_running_loop().create_task(self._write_loop(), name="postgres-writer")

    @staticmethod
    async def _migrate(conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute("CREATE TABLE IF NOT EXISTS sessiond_schema (version INTEGER NOT NULL)")
            version = await conn.fetchval("SELECT version FROM sessiond_schema")
            if version is None:
                await conn.execute("INSERT INTO sessiond_schema (version) VALUES (0)")
                version = 0
            for number, script in enumerate(PG_MIGRATIONS[version:], start=version + 1):
                await conn.execute(script)
                await conn.execute("UPDATE sessiond_schema SET version = $1", number)
                log.info("store migrated to schema %d", number)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            await self._queue.put(None)
            await self._writer
        if self._pool is not None:
            await self._pool.close()

    # -- writes ----------------------------------------------------------------------------

    async def commit(self, ops: Sequence[Op]) -> None:
        if self._closed:
            raise StoreClosedError("store is closed")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(ops, fut))
        await fut

    async def _write_loop(self) -> None:
        queue = self._queue
        while True:
            first = await queue.get()
            if first is None:
                return
            batch = [first]
            count = len(first.ops)
            closing = False
            while count < self._max_batch and not queue.empty():
                item = queue.get_nowait()
                if item is None:
                    closing = True
                    break
                batch.append(item)
                count += len(item.ops)
            started = time.perf_counter()
            try:
                await self._write([op for p in batch for op in p.ops])
            except Exception as exc:
                log.exception("store commit failed")
                for p in batch:
                    if not p.fut.done():
                        p.fut.set_exception(exc)
            else:
                if self._on_commit is not None:
                    self._on_commit(time.perf_counter() - started, count)
                for p in batch:
                    if not p.fut.done():
                        p.fut.set_result(None)
            if closing:
                return

    async def _write(self, ops: list[Op]) -> None:
        sessions: list[tuple[Any, ...]] = []
        messages: list[tuple[Any, ...]] = []
        checkpoints: list[tuple[Any, ...]] = []
        events: list[tuple[Any, ...]] = []
        deletes: list[tuple[str]] = []
        for op in ops:
            match op:
                case PutSession():
                    sessions.append((op.id, op.namespace, op.end_user_id, op.last_active_at, op.body.decode()))
                case PutMessage():
                    messages.append((op.id, op.session_id, op.body.decode()))
                case PutCheckpoint():
                    checkpoints.append((op.id, op.session_id, op.body.decode()))
                case PutEvent(session_id=sid, event=ev):
                    events.append((sid, ev.seq, ev.type, ev.frame))
                case DeleteSession(session_id=sid):
                    deletes.append((sid,))
        assert self._pool is not None
        async with self._pool.acquire() as conn, conn.transaction():
            for sql, rows in (
                (_UPSERT_SESSION, sessions),
                (_UPSERT_MESSAGE, messages),
                (_UPSERT_CHECKPOINT, checkpoints),
                (_INSERT_EVENT, events),
            ):
                if rows:
                    await conn.executemany(sql, rows)
            # Deletes go last: a late write racing a delete must not resurrect the session.
            for sql in _DELETES if deletes else ():
                await conn.executemany(sql, deletes)

    # -- reads -----------------------------------------------------------------------------

    async def _fetch(self, sql: str, *params: Any) -> list[asyncpg.Record]:
        assert self._pool is not None
        return list(await self._pool.fetch(sql, *params))

    async def ping(self) -> None:
        await self._fetch("SELECT 1")

    async def get_session(self, session_id: str) -> SessionRecord | None:
        rows = await self._fetch("SELECT body::text FROM sessions WHERE id = $1", session_id)
        return _dec_record.decode(rows[0][0]) if rows else None

    async def load_session(self, session_id: str, *, events: int) -> LoadedSession | None:
        record = await self.get_session(session_id)
        if record is None:
            return None
        nodes = await self._fetch("SELECT body FROM messages WHERE session_id = $1 ORDER BY pos", session_id)
        cps = await self._fetch("SELECT body FROM checkpoints WHERE session_id = $1 ORDER BY pos", session_id)
        evs = await self._fetch(
            "SELECT seq, type, frame FROM events WHERE session_id = $1 ORDER BY seq DESC LIMIT $2", session_id, events
        )
        evs.reverse()
        max_seq = await self._fetch("SELECT max(seq) FROM events WHERE session_id = $1", session_id)
        return LoadedSession(
            record=record,
            nodes=[_dec_node.decode(r[0]) for r in nodes],
            checkpoints=[_dec_checkpoint.decode(r[0]) for r in cps],
            events=[StoredEvent(r[0], r[1], bytes(r[2])) for r in evs],
            max_seq=int(max_seq[0][0] or 0),
        )

    async def load_events(self, session_id: str, after: int, limit: int) -> list[StoredEvent]:
        rows = await self._fetch(
            "SELECT seq, type, frame FROM events WHERE session_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            session_id, after, limit,
        )
        return [StoredEvent(r[0], r[1], bytes(r[2])) for r in rows]

    async def list_sessions(self, query: SessionQuery) -> list[SessionRecord]:
        where: list[str] = []
        params: list[Any] = []

        def param(value: Any) -> str:
            params.append(value)
            return f"${len(params)}"

        if query.namespace is not None:
            where.append(f"namespace = {param(query.namespace)}")
        if query.end_user_id is not None:
            where.append(f"end_user_id = {param(query.end_user_id)}")
        for key, value in query.metadata.items():
            # ->> renders booleans as true/false and numbers as their text, like the SQLite store.
            where.append(f"body->'metadata'->>{param(key)} = {param(value)}")
        if query.after is not None:
            a, b = query.after
            where.append(f"(last_active_at, id) < ({param(a)}, {param(b)})")
        sql = "SELECT body::text FROM sessions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY last_active_at DESC, id DESC LIMIT {param(query.limit)} OFFSET {param(query.offset)}"
        return [_dec_record.decode(r[0]) for r in await self._fetch(sql, *params)]

    # -- API keys ------------------------------------------------------------------------------

    async def put_api_key(self, key: ApiKeyRecord) -> None:
        assert self._pool is not None
        await self._pool.execute(
            "INSERT INTO api_keys (id, name, secret_hash, created_at, revoked_at) VALUES ($1, $2, $3, $4, $5)",
            key.id, key.name, key.secret_hash, key.created_at, key.revoked_at,
        )

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        rows = await self._fetch(
            "SELECT id, name, secret_hash, created_at, revoked_at FROM api_keys WHERE id = $1", key_id
        )
        return ApiKeyRecord(*rows[0]) if rows else None

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        rows = await self._fetch("SELECT id, name, secret_hash, created_at, revoked_at FROM api_keys ORDER BY created_at")
        return [ApiKeyRecord(*r) for r in rows]

    async def revoke_api_key(self, key_id: str, when: str) -> bool:
        assert self._pool is not None
        status = await self._pool.execute(
            "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL", when, key_id
        )
        return str(status).endswith(" 1")
