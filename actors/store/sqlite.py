"""SQLite store (the embedded default): WAL, one writer doing group commit.

Every ``commit()`` call enqueues its ops; the single writer takes everything queued, writes it
in one transaction (almost always a single statement, its rows as JSON for SQLite to unpack),
commits once, and only then resolves every waiting caller. The writer is a thread of its own
(``ThreadCommitter``) with a plain ``sqlite3`` connection that only it touches: it runs each
transaction whole and goes straight on to the next, while the event loop answers the callers of
the last one. Through aiosqlite, a statement at a time, each statement cost a round trip to the
loop, and under load every round trip waited for a turn of the busy loop, with the writer idle
meanwhile. Reads use a second connection (aiosqlite), which WAL lets proceed while the writer
holds its transaction. The writer's side (its connection, each commit's statements, the
checkpointer) is in ``sqlite_writer``.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import msgspec

from actors.core.records import (
    LoadedSession,
    Op,
    PutCheckpoint,
    PutMessage,
    PutSession,
    SessionQuery,
    SessionRecord,
    StoredEvent,
    decode_record,
)
from actors.core.retention import ExpiredRow, ExpiryQuery
from actors.core.search import SearchHit, SearchQuery
from actors.core.tree import Usage
from actors.core.webhooks import Delivery, DeliveryQuery, DeliveryStatus, EndpointHealth
from actors.store import outbox, shares_sqlite
from actors.store.auth_sqlite import SqliteAuthTables
from actors.store.batching import Rows, StoreClosedError, ThreadCommitter
from actors.store.expiry import SQLITE, expired_sessions
from actors.store.loading import loaded_session
from actors.store.migrations.sqlite import MIGRATIONS
from actors.store.search_sqlite import search_sessions, session_filters
from actors.store.sqlite_writer import DELETES, Checkpointer, connect_writer, write_batch
from actors.store.tables import (
    AgentRecord,
    ApiKeyRecord,
    DocumentRecord,
    ShareRecord,
)

__all__ = ["SqliteStore", "StoreClosedError"]

log = logging.getLogger("sessiond.store")


_enc = msgspec.json.Encoder()

_INSERT_NEW_SESSION = (
    "INSERT INTO sessions (id, namespace, end_user_id, last_active_at, body, due_at) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT(id) DO NOTHING"
)
# A session's activation read (actors/store/loading.py): one statement, one hop to the
# reader's thread.
_LOAD_SESSION = """
SELECT 0, 0, body, NULL, NULL FROM sessions WHERE id = ?1
UNION ALL SELECT 1, pos, body, NULL, NULL FROM messages WHERE session_id = ?1
UNION ALL SELECT 2, pos, body, NULL, NULL FROM checkpoints WHERE session_id = ?1
UNION ALL SELECT * FROM (
    SELECT 3, seq, NULL, data, type FROM events WHERE session_id = ?1 ORDER BY seq DESC LIMIT ?2
)
UNION ALL SELECT 4, pos, body, NULL, NULL FROM context_summaries WHERE session_id = ?1
UNION ALL SELECT 5, max(seq), NULL, NULL, NULL FROM events WHERE session_id = ?1
ORDER BY 1, 2
"""
_INSERT_MESSAGE = "INSERT INTO messages (id, session_id, body) VALUES (?, ?, ?)"
_INSERT_CHECKPOINT = "INSERT INTO checkpoints (id, session_id, body) VALUES (?, ?, ?)"


class SqliteStore(SqliteAuthTables):
    """The default Store: one SQLite file under the data dir."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: str = "FULL",
        max_batch: int = 2000,
        checkpoint_seconds: float = 0.0,
        wal_size_limit: int = -1,
        queue_size: int = 10000,
        on_commit: Callable[[float, int], None] | None = None,
    ) -> None:
        self.path = path
        self._synchronous = synchronous
        self._wal_size_limit = wal_size_limit  # bytes the log is cut back to when it starts again (-1: none)
        self._checkpointer = Checkpointer(path, checkpoint_seconds) if checkpoint_seconds > 0 else None
        self._committer = ThreadCommitter(
            self._write_batch, max_batch=max_batch, queue_size=queue_size, on_commit=on_commit
        )
        self.commit = self._committer.commit
        self.claim_epoch = self._committer.claim_epoch
        self._db: sqlite3.Connection | None = None  # the writer's: used on its thread only
        self._reader: aiosqlite.Connection | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(self.path, isolation_level=None)
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute(f"PRAGMA synchronous={self._synchronous}")
        await db.execute("PRAGMA busy_timeout=5000")
        await self._migrate(db)
        await db.close()
        self._db = connect_writer(self.path, self._synchronous, self._wal_size_limit)
        if self._checkpointer is not None:
            self._db.execute("PRAGMA wal_autocheckpoint=0")
            self._checkpointer.start()
        reader = await aiosqlite.connect(self.path, isolation_level=None)
        await reader.execute("PRAGMA busy_timeout=5000")
        await reader.execute("PRAGMA query_only=ON")
        self._reader = reader
        self._committer.start("sqlite-writer")

    @staticmethod
    async def _migrate(db: aiosqlite.Connection) -> None:
        async with db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        version = int(row[0]) if row else 0
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            await db.executescript(f"BEGIN;\n{script}\nPRAGMA user_version={number};\nCOMMIT;")
            log.info("store migrated to schema %d", number)

    async def aclose(self) -> None:
        await self._committer.aclose()  # the writer finishes what was queued before this
        if self._checkpointer is not None:
            await asyncio.to_thread(self._checkpointer.stop)
        if self._db is not None:
            self._db.close()  # its thread has ended
        if self._reader is not None:
            await self._reader.close()
        self._db = self._reader = None

    # -- writes (through the ThreadCommitter: ``self.commit``) --------------------------------

    def _write_batch(self, ops: list[Op]) -> dict[str, int]:
        """One group commit, on the writer's thread."""
        assert self._db is not None
        return write_batch(self._db, ops, self._checkpointer)

    async def insert_session(self, session: PutSession, rows: Sequence[PutMessage | PutCheckpoint]) -> bool:
        """One insert-only transaction; False (nothing written) if the session id is taken."""
        batch = Rows([session, *rows])

        async def insert(db: aiosqlite.Connection) -> bool:
            cur = await db.execute(_INSERT_NEW_SESSION, batch.sessions[0])
            if cur.rowcount == 0:
                return False
            # Rows left under this id by a session that no longer exists belong to nobody.
            for sql in DELETES[:-1]:
                await db.execute(sql, (session.id,))
            await db.executemany(_INSERT_MESSAGE, batch.messages)
            await db.executemany(_INSERT_CHECKPOINT, batch.checkpoints)
            return True

        return await self._transaction(insert)

    # -- reads -----------------------------------------------------------------------------

    async def ping(self) -> None:
        await self._all("SELECT 1", ())

    async def get_session(self, session_id: str) -> SessionRecord | None:
        rows = await self._all("SELECT body FROM sessions WHERE id = ?", (session_id,))
        return decode_record(rows[0][0]) if rows else None

    async def load_session(self, session_id: str, *, events: int) -> LoadedSession | None:
        return loaded_session(await self._all(_LOAD_SESSION, (session_id, events)))

    async def load_events(self, session_id: str, after: int, limit: int) -> list[StoredEvent]:
        rows = await self._all(
            "SELECT seq, type, data FROM events WHERE session_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (session_id, after, limit),
        )
        return [StoredEvent(seq, type_, bytes(data)) for seq, type_, data in rows]

    async def list_sessions(self, query: SessionQuery) -> list[SessionRecord]:
        where, params = session_filters(query)
        if query.after is not None:
            where.append("(last_active_at, id) < (?, ?)")
            params += list(query.after)
        sql = "SELECT body FROM sessions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY last_active_at DESC, id DESC LIMIT ? OFFSET ?"
        params += [query.limit, query.offset]
        return [decode_record(r[0]) for r in await self._all(sql, params)]

    async def search_sessions(self, query: SearchQuery) -> list[SearchHit]:
        return await search_sessions(self._all, query)

    async def expired_sessions(self, query: ExpiryQuery) -> list[ExpiredRow]:
        return await expired_sessions(self._all, SQLITE, query)

    async def document_linked_elsewhere(self, document_id: str, session_id: str) -> bool:
        rows = await self._all(
            "SELECT 1 FROM sessions, json_each(sessions.body, '$.documents') j"
            " WHERE j.value = ? AND sessions.id != ? LIMIT 1",
            (document_id, session_id),
        )
        return bool(rows)

    # -- API keys: rare writes, on a connection of their own so they never join (or roll back
    # with) a group-commit transaction that the writer holds open.

    async def put_api_key(self, key: ApiKeyRecord) -> None:
        await self._write_one(
            "INSERT INTO api_keys (id, name, secret_hash, created_at, revoked_at) VALUES (?, ?, ?, ?, ?)",
            (key.id, key.name, key.secret_hash, key.created_at, key.revoked_at),
        )

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        rows = await self._all(
            "SELECT id, name, secret_hash, created_at, revoked_at FROM api_keys WHERE id = ?", (key_id,)
        )
        return ApiKeyRecord(*rows[0]) if rows else None

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        rows = await self._all(
            "SELECT id, name, secret_hash, created_at, revoked_at FROM api_keys ORDER BY created_at", ()
        )
        return [ApiKeyRecord(*r) for r in rows]

    async def revoke_api_key(self, key_id: str, when: str) -> bool:
        changed = await self._write_one(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (when, key_id)
        )
        return changed > 0

    # -- share links: made in a transaction of their own (the bound per session is checked in
    # it), revoked on a connection of their own, like the API keys.

    async def put_share(self, share: ShareRecord, *, limit: int, now: float) -> bool:
        return await self._transaction(lambda db: shares_sqlite.put_share(db, share, limit, now))

    async def share_by_hash(self, token_hash: str, now: float) -> ShareRecord | None:
        return await shares_sqlite.share_by_hash(self._all, token_hash, now)

    async def list_shares(self, session_id: str, now: float) -> list[ShareRecord]:
        return await shares_sqlite.list_shares(self._all, session_id, now)

    async def delete_share(self, session_id: str, share_id: str) -> bool:
        return await shares_sqlite.delete_share(self._write_one, session_id, share_id)

    # -- agents, documents and usage per end user: rare writes, each on a connection of its own
    # (like the API keys), so they never join a group-commit batch.

    async def put_agent(self, agent: AgentRecord) -> None:
        await self._write_one(
            "INSERT INTO agents (id, created_at, body) VALUES (?, ?, ?)"
            " ON CONFLICT(id) DO UPDATE SET body = excluded.body",
            (agent.id, agent.created_at, msgspec.json.encode(agent).decode()),
        )

    async def get_agent(self, agent_id: str) -> AgentRecord | None:
        rows = await self._all("SELECT body FROM agents WHERE id = ?", (agent_id,))
        return msgspec.json.decode(rows[0][0], type=AgentRecord) if rows else None

    async def list_agents(self) -> list[AgentRecord]:
        rows = await self._all("SELECT body FROM agents ORDER BY created_at, id", ())
        return [msgspec.json.decode(r[0], type=AgentRecord) for r in rows]

    async def delete_agent(self, agent_id: str) -> bool:
        return await self._write_one("DELETE FROM agents WHERE id = ?", (agent_id,)) > 0

    async def put_document(self, doc: DocumentRecord, text: str) -> None:
        await self._write_one(
            "INSERT INTO documents (id, sha256, end_user_id, created_at, body, text, shared)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (doc.id, doc.sha256, doc.end_user_id, doc.created_at, msgspec.json.encode(doc).decode(), text, doc.shared),
        )

    async def get_document(self, document_id: str) -> DocumentRecord | None:
        rows = await self._all("SELECT body FROM documents WHERE id = ?", (document_id,))
        return msgspec.json.decode(rows[0][0], type=DocumentRecord) if rows else None

    async def list_documents(self, end_user_id: str | None, *, limit: int, offset: int) -> list[DocumentRecord]:
        """Newest first; for an end user, that user's documents and the shared ones (never a
        guest's or a session's)."""
        sql = "SELECT body FROM documents"
        params: list[Any] = []
        if end_user_id is not None:
            sql += " WHERE end_user_id = ? OR shared = 1"
            params.append(end_user_id)
        sql += " ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?"
        rows = await self._all(sql, [*params, limit, offset])
        return [msgspec.json.decode(r[0], type=DocumentRecord) for r in rows]

    async def document_texts(self, document_ids: Sequence[str]) -> list[tuple[DocumentRecord, str]]:
        """The documents among ``document_ids`` that exist, in that order, with their text."""
        if not document_ids:
            return []
        marks = ",".join("?" * len(document_ids))
        rows = await self._all(f"SELECT id, body, text FROM documents WHERE id IN ({marks})", list(document_ids))
        found = {r[0]: (msgspec.json.decode(r[1], type=DocumentRecord), r[2]) for r in rows}
        return [found[i] for i in document_ids if i in found]

    async def delete_document(self, document_id: str) -> bool:
        return await self._write_one("DELETE FROM documents WHERE id = ?", (document_id,)) > 0

    async def count_documents_with_hash(self, sha256: str) -> int:
        rows = await self._all("SELECT COUNT(*) FROM documents WHERE sha256 = ?", (sha256,))
        return int(rows[0][0])

    async def end_user_usage(self, end_user_id: str) -> tuple[int, Usage]:
        """(sessions, summed token usage) over the end user's existing sessions."""
        rows = await self._all(
            "SELECT COUNT(*), COALESCE(SUM(json_extract(body, '$.usage.prompt')), 0),"
            " COALESCE(SUM(json_extract(body, '$.usage.completion')), 0),"
            " COALESCE(SUM(json_extract(body, '$.usage.total')), 0) FROM sessions WHERE end_user_id = ?",
            (end_user_id,),
        )
        count, prompt, completion, total = rows[0]
        return int(count), Usage(int(prompt), int(completion), int(total))

    # -- the webhook outbox: rows come with the group commit; claims and outcomes are each a
    # transaction of their own (BEGIN IMMEDIATE), like the token writes above.

    async def claim_deliveries(self, owner: str, now: float, lease_seconds: float, limit: int) -> list[Delivery]:
        # Polled every [webhooks] poll_seconds: a read on the reader first, so an outbox with
        # nothing due never takes the write lock.
        if not await self._all(outbox.DUE_ANY, (now, now)):
            return []

        async def claim(db: aiosqlite.Connection) -> list[Delivery]:
            rows = await self._rows(db, outbox.CLAIM, (owner, now + lease_seconds, now, now, limit))
            return [outbox.delivery_of(r) for r in rows]

        return await self._transaction(claim)

    async def finish_delivery(
        self,
        delivery_id: str,
        owner: str,
        *,
        status: DeliveryStatus,
        attempts: int,
        next_attempt_at: float | None,
        last_error: str | None,
        last_status: int | None,
        delivered_at: float | None,
    ) -> bool:
        params = (status, attempts, next_attempt_at, last_error, last_status, delivered_at, delivery_id, owner)

        async def finish(db: aiosqlite.Connection) -> bool:
            cur = await db.execute(outbox.FINISH, params)
            return cur.rowcount > 0

        return await self._transaction(finish)

    async def release_deliveries(self, owner: str | None) -> int:
        async def release(db: aiosqlite.Connection) -> int:
            if owner is None:
                cur = await db.execute(outbox.RELEASE_ALL)
            else:
                cur = await db.execute(outbox.RELEASE_OWNER, (owner,))
            return cur.rowcount

        return await self._transaction(release)

    async def list_deliveries(self, query: DeliveryQuery) -> list[Delivery]:
        sql, params = outbox.list_sql(query)
        return [outbox.delivery_of(r) for r in await self._all(sql, params)]

    async def prune_deliveries(self, before: float) -> int:
        async def prune(db: aiosqlite.Connection) -> int:
            return (await db.execute(outbox.PRUNE, (before,))).rowcount

        return await self._transaction(prune)

    async def delivery_health(self, since: float) -> list[EndpointHealth]:
        return outbox.health_of(await self._all(outbox.HEALTH, (since,)))
