"""PostgreSQL store (cluster mode): asyncpg, the same records and the same group-commit contract.

Several sessiond nodes share one database. As in SQLite, one writer task per node takes every
queued write, runs it in one transaction (one ``executemany`` per statement) and only then
resolves the waiting callers. The schema is versioned like SQLite's: numbered steps, the
number kept in the database (here in ``sessiond_schema``, under an advisory lock so two nodes
starting together migrate once).

Writes whose check and change must be atomic across nodes (rotating a refresh token, finding or
creating a guest) each run in a transaction of their own that first takes a lock: the token
family's row (``SELECT ... FOR UPDATE``), or advisory locks on the guest's witnesses; those
tables are auth_postgres.py, a base of the store, and pg_base.py the helpers both share.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]
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
from actors.store import outbox, shares_postgres
from actors.store.auth_postgres import PgAuthTables
from actors.store.batching import GroupCommitter, Rows, admitted, claims, fences
from actors.store.expiry import POSTGRES, expired_sessions
from actors.store.loading import loaded_session
from actors.store.migrations.postgres import PG_MIGRATIONS
from actors.store.pg_base import jsonb, pg_param, pg_text, row_count
from actors.store.search_postgres import search_sessions
from actors.store.tables import (
    AgentRecord,
    ApiKeyRecord,
    DocumentRecord,
    ShareRecord,
)

__all__ = ["PG_MIGRATIONS", "PostgresStore", "pg_outage"]

log = logging.getLogger("sessiond.store")

_dec_agent = msgspec.json.Decoder(AgentRecord)
_dec_document = msgspec.json.Decoder(DocumentRecord)
_enc = msgspec.json.Encoder()


_UPSERT_SESSION = (
    "INSERT INTO sessions (id, namespace, end_user_id, last_active_at, body, due_at)"
    " VALUES ($1, $2, $3, $4, $5::jsonb, $6)"
    " ON CONFLICT (id) DO UPDATE SET namespace = excluded.namespace, end_user_id = excluded.end_user_id,"
    " last_active_at = excluded.last_active_at, body = excluded.body, due_at = excluded.due_at"
)
# A session's activation read (actors/store/loading.py): one statement, one round trip.
_LOAD_SESSION = """
SELECT 0 AS part, 0::bigint AS k, body::text AS text, NULL::bytea AS data, NULL::text AS type
    FROM sessions WHERE id = $1
UNION ALL SELECT 1, pos, body, NULL, NULL FROM messages WHERE session_id = $1
UNION ALL SELECT 2, pos, body, NULL, NULL FROM checkpoints WHERE session_id = $1
UNION ALL (SELECT 3, seq, NULL, data, type FROM events WHERE session_id = $1 ORDER BY seq DESC LIMIT $2)
UNION ALL SELECT 4, pos, body, NULL, NULL FROM context_summaries WHERE session_id = $1
UNION ALL SELECT 5, max(seq), NULL, NULL, NULL FROM events WHERE session_id = $1
ORDER BY 1, 2
"""
_LOCK_EPOCHS = "SELECT id, lease_epoch FROM sessions WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE"
_CLAIM_EPOCH = "UPDATE sessions SET lease_epoch = lease_epoch + 1 WHERE id = $1 RETURNING lease_epoch"
_UPSERT_MESSAGE = (
    "INSERT INTO messages (id, session_id, body) VALUES ($1, $2, $3)"
    " ON CONFLICT (session_id, id) DO UPDATE SET body = excluded.body"
)
_UPSERT_CHECKPOINT = (
    "INSERT INTO checkpoints (id, session_id, body) VALUES ($1, $2, $3)"
    " ON CONFLICT (session_id, id) DO UPDATE SET body = excluded.body"
)
_INSERT_NEW_SESSION = (
    "INSERT INTO sessions (id, namespace, end_user_id, last_active_at, body, due_at)"
    " VALUES ($1, $2, $3, $4, $5::jsonb, $6)"
    " ON CONFLICT (id) DO NOTHING"
)
_UPSERT_SUMMARY = (
    "INSERT INTO context_summaries (id, session_id, body) VALUES ($1, $2, $3)"
    " ON CONFLICT (session_id, id) DO UPDATE SET body = excluded.body"
)
_DROP_SUMMARY = "DELETE FROM context_summaries WHERE session_id = $1 AND id = $2"
_INSERT_MESSAGE = "INSERT INTO messages (id, session_id, body) VALUES ($1, $2, $3)"
_INSERT_CHECKPOINT = "INSERT INTO checkpoints (id, session_id, body) VALUES ($1, $2, $3)"
_INSERT_EVENT = (
    "INSERT INTO events (session_id, seq, type, data) VALUES ($1, $2, $3, $4)"
    " ON CONFLICT (session_id, seq) DO UPDATE SET type = excluded.type, data = excluded.data"
)
_TRIMS = (
    "DELETE FROM messages WHERE session_id = $1 AND id = $2",
    "DELETE FROM checkpoints WHERE session_id = $1 AND id = $2",
    "DELETE FROM events WHERE session_id = $1 AND seq <= $2",
)
# A session's events but its newest $2 (none if it has no more), by its primary key.
_KEEP_EVENTS = (
    "DELETE FROM events WHERE session_id = $1 AND seq <"
    " (SELECT seq FROM events WHERE session_id = $1 ORDER BY seq DESC OFFSET $2 - 1 LIMIT 1)"
)
_DELETES = [
    "DELETE FROM context_summaries WHERE session_id = $1",
    "DELETE FROM messages WHERE session_id = $1",
    "DELETE FROM checkpoints WHERE session_id = $1",
    "DELETE FROM events WHERE session_id = $1",
    shares_postgres.DELETE_SHARES,
    "DELETE FROM sessions WHERE id = $1",
]
_INSERT_DELIVERY = outbox.pg(outbox.INSERT_DELIVERY)
_CLAIM = outbox.pg(outbox.CLAIM_PG)
_FINISH = outbox.pg(outbox.FINISH)
_RELEASE_OWNER = outbox.pg(outbox.RELEASE_OWNER)
_PRUNE = outbox.pg(outbox.PRUNE)
_HEALTH = outbox.pg(outbox.HEALTH)
_MIGRATION_LOCK = 0x5E55_10D  # advisory lock id: one node migrates at a time


def _without_password(dsn: str) -> str:
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    userinfo, _, hostport = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=userinfo.partition(":")[0] + "@" + hostport))


def pg_outage(exc: BaseException) -> bool:
    """Whether ``exc`` means PostgreSQL could not be reached (not that it refused the write)."""
    # OperatorIntervention: "the database is starting up", "terminating connection due to
    # administrator command" (a restart).
    return isinstance(
        exc,
        OSError
        | TimeoutError
        | asyncpg.PostgresConnectionError
        | asyncpg.InterfaceError
        | asyncpg.exceptions.OperatorInterventionError,
    )


class PostgresStore(PgAuthTables):
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
        # What `sessiond serve` names when it says where a key is kept: never with the password.
        self.path = _without_password(dsn)
        self._committer = GroupCommitter(
            self._write, max_batch=max_batch, queue_size=queue_size, on_commit=on_commit, outage=pg_outage
        )
        self.commit = self._committer.commit
        self.claim_epoch = self._committer.claim_epoch
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=self._pool_size)
        async with self._pool.acquire() as conn:
            await self._migrate(conn)
        self._committer.start("postgres-writer")

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
        await self._committer.aclose()  # the writer finishes what was queued before this
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    # -- writes (through the GroupCommitter: ``self.commit``) ---------------------------------

    @staticmethod
    def _sessions(rows: Rows) -> list[tuple[Any, ...]]:
        return [
            (pg_text(a), pg_text(ns), pg_param(eu), at, jsonb(body.encode()) if "\\u0000" in body else body, due)
            for a, ns, eu, at, body, due in rows.sessions
        ]

    @staticmethod
    def _children(table: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
        return [(pg_text(a), pg_text(b), body) for a, b, body in table]

    @staticmethod
    def _messages(table: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
        # A message's JSON may escape U+0000, which the search index (JSONB of the body) refuses:
        # the whole commit, every caller's in it, failed on one such message.
        return [(pg_text(a), pg_text(b), jsonb(body.encode()) if "\\u0000" in body else body) for a, b, body in table]

    async def _write(self, ops: list[Op]) -> dict[str, int]:
        assert self._pool is not None
        async with self._pool.acquire() as conn, conn.transaction():
            epochs: dict[str, int] = {}
            for sid in claims(ops):
                epoch = await conn.fetchval(_CLAIM_EPOCH, pg_text(sid))
                if epoch is not None:
                    epochs[sid] = int(epoch)
            fenced = fences(ops)
            if fenced:
                # The rows stay locked to the end: a node taking one of these sessions now
                # (a Claim) waits for this transaction, then loads what it wrote.
                by_text = {pg_text(sid): sid for sid in fenced}
                for row in await conn.fetch(_LOCK_EPOCHS, sorted(by_text)):
                    epochs[by_text[row[0]]] = int(row[1])
            rows = Rows(admitted(ops, epochs))
            sessions = self._sessions(rows)
            messages = self._messages(rows.messages)
            checkpoints = self._children(rows.checkpoints)
            events = [(pg_text(sid), seq, type_, data) for sid, seq, type_, data in rows.events]
            summaries = self._children(rows.summaries)
            summary_drops = [(pg_text(sid), pg_text(i)) for sid, i in rows.summary_drops]
            deletes = [(pg_text(sid),) for (sid,) in rows.deletes]
            tables: tuple[tuple[str, Sequence[tuple[Any, ...]]], ...] = (
                (_UPSERT_SESSION, sessions),
                (_UPSERT_MESSAGE, messages),
                (_UPSERT_CHECKPOINT, checkpoints),
                (_INSERT_EVENT, events),
                (_UPSERT_SUMMARY, summaries),
                (_DROP_SUMMARY, summary_drops),
            )
            for sql, table in tables:
                if table:
                    await conn.executemany(sql, table)
            trims: tuple[list[tuple[str, str]], list[tuple[str, str]], list[tuple[str, int]]] = (
                [(pg_text(a), pg_text(b)) for a, b in rows.trim_messages],
                [(pg_text(a), pg_text(b)) for a, b in rows.trim_checkpoints],
                [(pg_text(a), n) for a, n in rows.trim_events],
            )
            for sql, trim in zip(_TRIMS, trims, strict=True):
                if trim:
                    await conn.executemany(sql, trim)
            if rows.keep_events:
                await conn.executemany(_KEEP_EVENTS, [(pg_text(sid), n) for sid, n in rows.keep_events])
            # Deletes go last: a late write racing a delete must not resurrect the session.
            for sql in _DELETES if deletes else ():
                await conn.executemany(sql, deletes)
            if rows.deliveries:
                await conn.executemany(_INSERT_DELIVERY, [
                    (d_id, endpoint, pg_text(sid), type_, body, at, at)
                    for d_id, endpoint, sid, type_, body, at in rows.deliveries
                ])
        return epochs

    async def insert_session(self, session: PutSession, rows: Sequence[PutMessage | PutCheckpoint]) -> bool:
        """One insert-only transaction; False (nothing written) if the session id is taken."""
        batch = Rows([session, *rows])

        async def insert(conn: asyncpg.Connection) -> bool:
            # A concurrent import of the same id waits here for ours to end, then inserts nothing.
            if row_count(await conn.execute(_INSERT_NEW_SESSION, *self._sessions(batch)[0])) == 0:
                return False
            # Rows left under this id by a session that no longer exists belong to nobody.
            for sql in _DELETES[:-1]:
                await conn.execute(sql, pg_text(session.id))
            if batch.messages:
                await conn.executemany(_INSERT_MESSAGE, self._messages(batch.messages))
            if batch.checkpoints:
                await conn.executemany(_INSERT_CHECKPOINT, self._children(batch.checkpoints))
            return True

        return await self._transaction(insert)

    # -- reads -----------------------------------------------------------------------------

    async def ping(self) -> None:
        await self._fetch("SELECT 1")

    async def get_session(self, session_id: str) -> SessionRecord | None:
        rows = await self._fetch("SELECT body::text FROM sessions WHERE id = $1", session_id)
        return decode_record(rows[0][0]) if rows else None

    async def load_session(self, session_id: str, *, events: int) -> LoadedSession | None:
        return loaded_session(await self._fetch(_LOAD_SESSION, session_id, events))

    async def load_events(self, session_id: str, after: int, limit: int) -> list[StoredEvent]:
        rows = await self._fetch(
            "SELECT seq, type, data FROM events WHERE session_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
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
        return [decode_record(r[0]) for r in await self._fetch(sql, *params)]

    async def search_sessions(self, query: SearchQuery) -> list[SearchHit]:
        return await search_sessions(self._fetch, query)

    async def expired_sessions(self, query: ExpiryQuery) -> list[ExpiredRow]:
        async def fetch(sql: str, params: list[Any]) -> list[Any]:
            return await self._fetch(sql, *params)

        return await expired_sessions(fetch, POSTGRES, query)

    async def document_linked_elsewhere(self, document_id: str, session_id: str) -> bool:
        rows = await self._fetch(
            "SELECT 1 FROM sessions WHERE body->'documents' ? $1 AND id <> $2 LIMIT 1", document_id, session_id
        )
        return bool(rows)

    # -- API keys ------------------------------------------------------------------------------

    async def put_api_key(self, key: ApiKeyRecord) -> None:
        await self._execute(
            "INSERT INTO api_keys (id, name, secret_hash, created_at, revoked_at) VALUES ($1, $2, $3, $4, $5)",
            key.id, key.name, key.secret_hash, key.created_at, key.revoked_at,
        )

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        rows = await self._fetch(
            "SELECT id, name, secret_hash, created_at, revoked_at FROM api_keys WHERE id = $1", key_id
        )
        return ApiKeyRecord(*rows[0]) if rows else None

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        rows = await self._fetch(
            "SELECT id, name, secret_hash, created_at, revoked_at FROM api_keys ORDER BY created_at"
        )
        return [ApiKeyRecord(*r) for r in rows]

    async def revoke_api_key(self, key_id: str, when: str) -> bool:
        changed = await self._execute(
            "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL", when, key_id
        )
        return changed > 0

    # -- share links: made in a transaction of their own (the bound per session is checked in it)

    async def put_share(self, share: ShareRecord, *, limit: int, now: float) -> bool:
        return await self._transaction(lambda conn: shares_postgres.put_share(conn, share, limit, now))

    async def share_by_hash(self, token_hash: str, now: float) -> ShareRecord | None:
        return await shares_postgres.share_by_hash(self._fetch, token_hash, now)

    async def list_shares(self, session_id: str, now: float) -> list[ShareRecord]:
        return await shares_postgres.list_shares(self._fetch, session_id, now)

    async def delete_share(self, session_id: str, share_id: str) -> bool:
        return await shares_postgres.delete_share(self._execute, session_id, share_id)

    # -- agents, documents and usage per end user ----------------------------------------------

    async def put_agent(self, agent: AgentRecord) -> None:
        await self._execute(
            "INSERT INTO agents (id, created_at, body) VALUES ($1, $2, $3)"
            " ON CONFLICT (id) DO UPDATE SET body = excluded.body",
            agent.id, agent.created_at, _enc.encode(agent).decode(),
        )

    async def get_agent(self, agent_id: str) -> AgentRecord | None:
        rows = await self._fetch("SELECT body FROM agents WHERE id = $1", agent_id)
        return _dec_agent.decode(rows[0][0]) if rows else None

    async def list_agents(self) -> list[AgentRecord]:
        rows = await self._fetch("SELECT body FROM agents ORDER BY created_at, id")
        return [_dec_agent.decode(r[0]) for r in rows]

    async def delete_agent(self, agent_id: str) -> bool:
        return await self._execute("DELETE FROM agents WHERE id = $1", agent_id) > 0

    async def put_document(self, doc: DocumentRecord, text: str) -> None:
        await self._execute(
            "INSERT INTO documents (id, sha256, end_user_id, created_at, body, text, shared)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7)",
            doc.id, doc.sha256, doc.end_user_id, doc.created_at, _enc.encode(doc).decode(), text, doc.shared,
        )

    async def get_document(self, document_id: str) -> DocumentRecord | None:
        rows = await self._fetch("SELECT body FROM documents WHERE id = $1", document_id)
        return _dec_document.decode(rows[0][0]) if rows else None

    async def list_documents(self, end_user_id: str | None, *, limit: int, offset: int) -> list[DocumentRecord]:
        """Newest first; for an end user, that user's documents and the shared ones (never a
        guest's or a session's)."""
        if end_user_id is None:
            rows = await self._fetch(
                "SELECT body FROM documents ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2", limit, offset
            )
        else:
            rows = await self._fetch(
                "SELECT body FROM documents WHERE end_user_id = $1 OR shared"
                " ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3",
                end_user_id, limit, offset,
            )
        return [_dec_document.decode(r[0]) for r in rows]

    async def document_texts(self, document_ids: Sequence[str]) -> list[tuple[DocumentRecord, str]]:
        """The documents among ``document_ids`` that exist, in that order, with their text."""
        if not document_ids:
            return []
        rows = await self._fetch(
            "SELECT id, body, text FROM documents WHERE id = ANY($1::text[])", list(document_ids)
        )
        found = {r[0]: (_dec_document.decode(r[1]), r[2]) for r in rows}
        return [found[i] for i in document_ids if i in found]

    async def delete_document(self, document_id: str) -> bool:
        return await self._execute("DELETE FROM documents WHERE id = $1", document_id) > 0

    async def count_documents_with_hash(self, sha256: str) -> int:
        rows = await self._fetch("SELECT count(*) FROM documents WHERE sha256 = $1", sha256)
        return int(rows[0][0])

    async def end_user_usage(self, end_user_id: str) -> tuple[int, Usage]:
        """(sessions, summed token usage) over the end user's existing sessions."""
        rows = await self._fetch(
            "SELECT count(*), COALESCE(SUM((body->'usage'->>'prompt')::bigint), 0),"
            " COALESCE(SUM((body->'usage'->>'completion')::bigint), 0),"
            " COALESCE(SUM((body->'usage'->>'total')::bigint), 0) FROM sessions WHERE end_user_id = $1",
            end_user_id,
        )
        count, prompt, completion, total = rows[0]
        return int(count), Usage(int(prompt), int(completion), int(total))

    # -- the webhook outbox: rows come with the group commit; a claim is one statement whose
    # rows are picked FOR UPDATE SKIP LOCKED, so nodes claiming at once never share a row.

    async def claim_deliveries(self, owner: str, now: float, lease_seconds: float, limit: int) -> list[Delivery]:
        rows = await self._fetch(_CLAIM, owner, now + lease_seconds, now, now, limit)
        return [outbox.delivery_of(r) for r in rows]

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
        return await self._execute(
            _FINISH, status, attempts, next_attempt_at, last_error, last_status, delivered_at, delivery_id, owner
        ) > 0

    async def release_deliveries(self, owner: str | None) -> int:
        if owner is None:
            return await self._execute(outbox.RELEASE_ALL)
        return await self._execute(_RELEASE_OWNER, owner)

    async def list_deliveries(self, query: DeliveryQuery) -> list[Delivery]:
        sql, params = outbox.list_sql(query)
        return [outbox.delivery_of(r) for r in await self._fetch(outbox.pg(sql), *params)]

    async def prune_deliveries(self, before: float) -> int:
        return await self._execute(_PRUNE, before)

    async def delivery_health(self, since: float) -> list[EndpointHealth]:
        return outbox.health_of(await self._fetch(_HEALTH, since))
