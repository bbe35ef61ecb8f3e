"""PostgreSQL store (cluster mode): asyncpg, the same records and the same group-commit contract.

Several sessiond nodes share one database. As in SQLite, one writer task per node takes every
queued write, runs it in one transaction (one ``executemany`` per statement) and only then
resolves the waiting callers. The schema is versioned like SQLite's: numbered steps, the
number kept in the database (here in ``sessiond_schema``, under an advisory lock so two nodes
starting together migrate once).

Writes whose check and change must be atomic across nodes (rotating a refresh token, finding or
creating a guest) each run in a transaction of their own that first takes a lock: the token
family's row (``SELECT ... FOR UPDATE``), or advisory locks on the guest's witnesses.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]
import msgspec

from actors.core.records import (
    Checkpoint,
    LoadedSession,
    Op,
    PutCheckpoint,
    PutMessage,
    PutSession,
    SessionQuery,
    SessionRecord,
    StoredEvent,
)
from actors.core.retention import ExpiredRow, ExpiryQuery
from actors.core.search import SearchHit, SearchQuery
from actors.core.summary import ContextSummary
from actors.core.tree import Node, Usage
from actors.core.webhooks import Delivery, DeliveryQuery, DeliveryStatus, EndpointHealth
from actors.store import outbox, shares_postgres
from actors.store.batching import GroupCommitter, Rows, admitted, claims, fences
from actors.store.expiry import POSTGRES, expired_sessions
from actors.store.migrations.postgres import PG_MIGRATIONS
from actors.store.search_postgres import search_sessions
from actors.store.tables import (
    AgentRecord,
    ApiKeyRecord,
    DocumentRecord,
    GuestRecord,
    RefreshOutcome,
    RefreshTokenRecord,
    ShareRecord,
    TokenFamilyRecord,
)

__all__ = ["PG_MIGRATIONS", "PostgresStore", "pg_outage"]

log = logging.getLogger("sessiond.store")

_dec_record = msgspec.json.Decoder(SessionRecord)
_dec_node = msgspec.json.Decoder(Node)
_dec_checkpoint = msgspec.json.Decoder(Checkpoint)
_dec_summary = msgspec.json.Decoder(ContextSummary)
_dec_agent = msgspec.json.Decoder(AgentRecord)
_dec_document = msgspec.json.Decoder(DocumentRecord)
_dec_family = msgspec.json.Decoder(TokenFamilyRecord)
_enc = msgspec.json.Encoder()

_T = TypeVar("_T")

_UPSERT_SESSION = (
    "INSERT INTO sessions (id, namespace, end_user_id, last_active_at, body, due_at)"
    " VALUES ($1, $2, $3, $4, $5::jsonb, $6)"
    " ON CONFLICT (id) DO UPDATE SET namespace = excluded.namespace, end_user_id = excluded.end_user_id,"
    " last_active_at = excluded.last_active_at, body = excluded.body, due_at = excluded.due_at"
)
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
# Guests lock (class, key) pairs: Postgres keeps these apart from single-bigint keys like the above.
_GUEST_LOCK_CLASS = 0x5E55_6E5

_GUEST_BY_LINK = (
    "SELECT g.id, g.namespace, g.created_at, g.expires_at FROM guest_links l"
    " JOIN guests g ON g.id = l.guest_id"
    " WHERE l.namespace = $1 AND l.kind = $2 AND l.digest = $3 AND g.expires_at > $4"
)
# A link keeps its guest while that guest lives: a visit never moves an IP (or a fingerprint)
# to whichever guest came last with it, which would let anyone take a guest over.
_UPSERT_GUEST_LINK = (
    "INSERT INTO guest_links (namespace, kind, digest, guest_id, expires_at) VALUES ($1, $2, $3, $4, $5)"
    " ON CONFLICT (namespace, kind, digest) DO UPDATE SET guest_id = excluded.guest_id,"
    " expires_at = excluded.expires_at"
    " WHERE guest_links.guest_id = excluded.guest_id OR guest_links.expires_at <= $6"
)
# SKIP LOCKED: a sweep never waits for a row another transaction holds, so it cannot deadlock.
_SWEEP_GUESTS = (
    "DELETE FROM guests WHERE id IN (SELECT id FROM guests WHERE expires_at <= $1 FOR UPDATE SKIP LOCKED)"
)
_SWEEP_GUEST_LINKS = (
    "DELETE FROM guest_links WHERE (namespace, kind, digest) IN"
    " (SELECT namespace, kind, digest FROM guest_links WHERE expires_at <= $1 FOR UPDATE SKIP LOCKED)"
)


_NUL_ESCAPE = b"\\u0000"


def _text(value: str) -> str:
    """PostgreSQL text cannot hold U+0000 (SQLite's can): it is kept as U+FFFD, in what is
    stored and in lookups alike, so a lookup finds what was stored for the same value."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def _param(value: Any) -> Any:
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, list):
        return [_param(v) for v in value]
    return value


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    if isinstance(value, dict):
        return {_text(k): _without_nul(v) for k, v in value.items()}
    return value


def _jsonb(body: bytes) -> str:
    """A JSON body for a JSONB column, which refuses ``\\u0000``: those become U+FFFD (rare: the
    bytes are searched first, and a false match only re-encodes the same document)."""
    if _NUL_ESCAPE not in body:
        return body.decode()
    return _enc.encode(_without_nul(msgspec.json.decode(body))).decode()


def _count(status: str) -> int:
    """The row count of a command status such as ``DELETE 3`` or ``INSERT 0 1``."""
    return int(status.rsplit(" ", 1)[-1])


def _guest_lock(namespace: str, kind: str, digest: str) -> int:
    """A signed 32-bit advisory lock key for one witness, the same on every node."""
    raw = hashlib.sha256(f"{namespace}\0{kind}\0{digest}".encode()).digest()
    return int.from_bytes(raw[:4], "big", signed=True)


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
            (_text(a), _text(ns), _param(eu), at, _jsonb(body.encode()) if "\\u0000" in body else body, due)
            for a, ns, eu, at, body, due in rows.sessions
        ]

    @staticmethod
    def _children(table: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
        return [(_text(a), _text(b), body) for a, b, body in table]

    async def _write(self, ops: list[Op]) -> dict[str, int]:
        assert self._pool is not None
        async with self._pool.acquire() as conn, conn.transaction():
            epochs: dict[str, int] = {}
            for sid in claims(ops):
                epoch = await conn.fetchval(_CLAIM_EPOCH, _text(sid))
                if epoch is not None:
                    epochs[sid] = int(epoch)
            fenced = fences(ops)
            if fenced:
                # The rows stay locked to the end: a node taking one of these sessions now
                # (a Claim) waits for this transaction, then loads what it wrote.
                by_text = {_text(sid): sid for sid in fenced}
                for row in await conn.fetch(_LOCK_EPOCHS, sorted(by_text)):
                    epochs[by_text[row[0]]] = int(row[1])
            rows = Rows(admitted(ops, epochs))
            sessions = self._sessions(rows)
            messages = self._children(rows.messages)
            checkpoints = self._children(rows.checkpoints)
            events = [(_text(sid), seq, type_, data) for sid, seq, type_, data in rows.events]
            summaries = self._children(rows.summaries)
            summary_drops = [(_text(sid), _text(i)) for sid, i in rows.summary_drops]
            deletes = [(_text(sid),) for (sid,) in rows.deletes]
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
                [(_text(a), _text(b)) for a, b in rows.trim_messages],
                [(_text(a), _text(b)) for a, b in rows.trim_checkpoints],
                [(_text(a), n) for a, n in rows.trim_events],
            )
            for sql, trim in zip(_TRIMS, trims, strict=True):
                if trim:
                    await conn.executemany(sql, trim)
            # Deletes go last: a late write racing a delete must not resurrect the session.
            for sql in _DELETES if deletes else ():
                await conn.executemany(sql, deletes)
            if rows.deliveries:
                await conn.executemany(_INSERT_DELIVERY, [
                    (d_id, endpoint, _text(sid), type_, body, at, at)
                    for d_id, endpoint, sid, type_, body, at in rows.deliveries
                ])
        return epochs

    async def insert_session(self, session: PutSession, rows: Sequence[PutMessage | PutCheckpoint]) -> bool:
        """One insert-only transaction; False (nothing written) if the session id is taken."""
        batch = Rows([session, *rows])

        async def insert(conn: asyncpg.Connection) -> bool:
            # A concurrent import of the same id waits here for ours to end, then inserts nothing.
            if _count(await conn.execute(_INSERT_NEW_SESSION, *self._sessions(batch)[0])) == 0:
                return False
            # Rows left under this id by a session that no longer exists belong to nobody.
            for sql in _DELETES[:-1]:
                await conn.execute(sql, _text(session.id))
            for sql, table in ((_INSERT_MESSAGE, batch.messages), (_INSERT_CHECKPOINT, batch.checkpoints)):
                if table:
                    await conn.executemany(sql, self._children(table))
            return True

        return await self._transaction(insert)

    # -- reads -----------------------------------------------------------------------------

    async def _fetch(self, sql: str, *params: Any) -> list[asyncpg.Record]:
        assert self._pool is not None
        return list(await self._pool.fetch(sql, *map(_param, params)))

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
            "SELECT seq, type, data FROM events WHERE session_id = $1 ORDER BY seq DESC LIMIT $2", session_id, events
        )
        evs.reverse()
        max_seq = await self._fetch("SELECT max(seq) FROM events WHERE session_id = $1", session_id)
        sums = await self._fetch(
            "SELECT body FROM context_summaries WHERE session_id = $1 ORDER BY pos", session_id
        )
        return LoadedSession(
            record=record,
            nodes=[_dec_node.decode(r[0]) for r in nodes],
            checkpoints=[_dec_checkpoint.decode(r[0]) for r in cps],
            events=[StoredEvent(r[0], r[1], bytes(r[2])) for r in evs],
            max_seq=int(max_seq[0][0] or 0),
            summaries=[_dec_summary.decode(r[0]) for r in sums],
        )

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
        return [_dec_record.decode(r[0]) for r in await self._fetch(sql, *params)]

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

    async def _execute(self, sql: str, *params: Any) -> int:
        assert self._pool is not None
        return _count(await self._pool.execute(sql, *map(_param, params)))

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

    # -- session tokens and guests: each call one transaction of its own, outside group commit.
    # Every change to a family's refresh tokens happens while holding that family's row lock
    # (SELECT ... FOR UPDATE), so rotations, reuse detection and revocation of one family run
    # one after another across every node, as BEGIN IMMEDIATE makes them in SQLite.

    async def _transaction(self, fn: Callable[[asyncpg.Connection], Awaitable[_T]]) -> _T:
        assert self._pool is not None
        async with self._pool.acquire() as conn, conn.transaction():
            return await fn(conn)

    @staticmethod
    def _family(body: str, revoked_at: str | None) -> TokenFamilyRecord:
        family = _dec_family.decode(body)
        family.revoked_at = revoked_at
        return family

    async def put_token_family(self, family: TokenFamilyRecord, token: RefreshTokenRecord) -> None:
        async def write(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "INSERT INTO token_families (id, session_id, body, revoked_at) VALUES ($1, $2, $3, $4)",
                family.id, _text(family.session_id), _enc.encode(family).decode(), family.revoked_at,
            )
            await conn.execute(
                "INSERT INTO refresh_tokens (hash, family_id, created_at, expires_at, used_at)"
                " VALUES ($1, $2, $3, $4, $5)",
                token.hash, token.family_id, token.created_at, token.expires_at, token.used_at,
            )

        await self._transaction(write)

    async def get_token_family(self, family_id: str) -> TokenFamilyRecord | None:
        rows = await self._fetch("SELECT body, revoked_at FROM token_families WHERE id = $1", family_id)
        return self._family(rows[0][0], rows[0][1]) if rows else None

    async def rotate_refresh_token(
        self, old_hash: str, new: RefreshTokenRecord, now: float, when: str
    ) -> RefreshOutcome:
        async def rotate(conn: asyncpg.Connection) -> RefreshOutcome:
            family_id = await conn.fetchval("SELECT family_id FROM refresh_tokens WHERE hash = $1", old_hash)
            if family_id is None:
                return RefreshOutcome("unknown")
            fam = await conn.fetchrow(
                "SELECT body, revoked_at FROM token_families WHERE id = $1 FOR UPDATE", family_id
            )
            if fam is None:
                return RefreshOutcome("unknown")
            family = self._family(fam[0], fam[1])
            # Read the token again under the family's lock: this statement sees every change
            # committed by whoever held the lock before (READ COMMITTED takes a new snapshot).
            token = await conn.fetchrow("SELECT expires_at, used_at FROM refresh_tokens WHERE hash = $1", old_hash)
            if token is None:
                return RefreshOutcome("unknown")
            expires_at, used_at = token
            if used_at is not None or family.revoked_at is not None:
                # A rotated token came back: it was copied. End the family (both holders).
                if family.revoked_at is None:
                    await conn.execute("UPDATE token_families SET revoked_at = $1 WHERE id = $2", when, family_id)
                    family.revoked_at = when
                await conn.execute("DELETE FROM refresh_tokens WHERE family_id = $1", family_id)
                return RefreshOutcome("reused", family)
            if expires_at <= now:
                return RefreshOutcome("expired", family)
            await conn.execute("UPDATE refresh_tokens SET used_at = $1 WHERE hash = $2", when, old_hash)
            await conn.execute(
                "INSERT INTO refresh_tokens (hash, family_id, created_at, expires_at, used_at)"
                " VALUES ($1, $2, $3, $4, NULL)",
                new.hash, family_id, new.created_at, new.expires_at,
            )
            # Used tokens are kept (to catch their reuse) only while they would still be valid.
            await conn.execute(
                "DELETE FROM refresh_tokens WHERE family_id = $1 AND used_at IS NOT NULL AND expires_at <= $2",
                family_id, now,
            )
            return RefreshOutcome("rotated", family)

        return await self._transaction(rotate)

    async def revoke_session_tokens(self, session_id: str) -> int:
        async def revoke(conn: asyncpg.Connection) -> int:
            # Ordered locks: two revocations of one session never wait on each other in a cycle.
            rows = await conn.fetch(
                "SELECT id FROM token_families WHERE session_id = $1 ORDER BY id FOR UPDATE", _text(session_id)
            )
            ids = [r[0] for r in rows]
            if not ids:
                return 0
            await conn.execute("DELETE FROM refresh_tokens WHERE family_id = ANY($1::text[])", ids)
            return _count(await conn.execute("DELETE FROM token_families WHERE id = ANY($1::text[])", ids))

        return await self._transaction(revoke)

    @staticmethod
    async def _match_guest(
        conn: asyncpg.Connection | asyncpg.Pool, namespace: str, ip: str | None, fingerprint: str | None, now: float
    ) -> GuestRecord | None:
        # The fingerprint is the better witness (many visitors may share an IP): it goes first.
        for kind, digest in (("fingerprint", fingerprint), ("ip", ip)):
            if digest is not None:
                row = await conn.fetchrow(_GUEST_BY_LINK, _text(namespace), kind, digest, now)
                if row is not None:
                    return GuestRecord(row[0], row[1], row[2], row[3])
        return None

    async def find_guest(
        self, namespace: str, ip: str | None, fingerprint: str | None, now: float
    ) -> GuestRecord | None:
        assert self._pool is not None
        return await self._match_guest(self._pool, namespace, ip, fingerprint, now)

    async def find_or_create_guest(
        self, namespace: str, ip: str, fingerprint: str | None, new: GuestRecord, now: float
    ) -> tuple[GuestRecord, bool]:
        links = [("ip", ip)] + ([("fingerprint", fingerprint)] if fingerprint is not None else [])

        async def find_or_create(conn: asyncpg.Connection) -> tuple[GuestRecord, bool]:
            # Two visits that could be the same guest share a witness, so they share its lock and
            # run one after the other; locks are taken in one order everywhere (no deadlock).
            for key in sorted({_guest_lock(namespace, kind, digest) for kind, digest in links}):
                await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", _GUEST_LOCK_CLASS, key)
            guest = await self._match_guest(conn, namespace, ip, fingerprint, now)
            created = guest is None
            if guest is None:
                guest = new
                await conn.execute(
                    "INSERT INTO guests (id, namespace, created_at, expires_at) VALUES ($1, $2, $3, $4)",
                    guest.id, _text(guest.namespace), guest.created_at, guest.expires_at,
                )
            await conn.executemany(
                _UPSERT_GUEST_LINK,
                [(_text(namespace), kind, digest, guest.id, guest.expires_at, now) for kind, digest in links],
            )
            return guest, created

        guest, created = await self._transaction(find_or_create)
        if created:
            # Expired guests go when a new one comes, in a transaction of its own: one that also
            # held this visit's link rows could wait on another visit waiting on it.
            async def sweep(conn: asyncpg.Connection) -> None:
                await conn.execute(_SWEEP_GUESTS, now)
                await conn.execute(_SWEEP_GUEST_LINKS, now)

            await self._transaction(sweep)
        return guest, created

    async def get_guest(self, guest_id: str, now: float) -> GuestRecord | None:
        rows = await self._fetch(
            "SELECT id, namespace, created_at, expires_at FROM guests WHERE id = $1 AND expires_at > $2",
            guest_id, now,
        )
        return GuestRecord(rows[0][0], rows[0][1], rows[0][2], rows[0][3]) if rows else None

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
