"""Schema steps for the PostgreSQL store: step N matches step N of the SQLite MIGRATIONS (same
tables and columns, Postgres types), applied in order and tracked in ``sessiond_schema``."""

from __future__ import annotations

__all__ = ["PG_MIGRATIONS"]

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
    # 2: agents made through the API, uploaded documents. COLLATE "C": text orders byte by byte,
    # as in SQLite, whatever the database's locale. IF NOT EXISTS, as in SQLite's step.
    """
    CREATE TABLE IF NOT EXISTS agents (
        id TEXT COLLATE "C" PRIMARY KEY,
        created_at TEXT COLLATE "C" NOT NULL,
        body TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS documents (
        id TEXT COLLATE "C" PRIMARY KEY,
        sha256 TEXT NOT NULL,
        end_user_id TEXT,
        created_at TEXT COLLATE "C" NOT NULL,
        body TEXT NOT NULL,
        text TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS documents_by_hash ON documents (sha256);
    CREATE INDEX IF NOT EXISTS documents_by_user ON documents (end_user_id, created_at);
    """,
    # 3: session token families, refresh tokens (hashed), guests and what finds them again.
    # Epoch seconds are DOUBLE PRECISION (Postgres' REAL is only 4 bytes).
    """
    CREATE TABLE IF NOT EXISTS token_families (
        id TEXT PRIMARY KEY,
        session_id TEXT NOT NULL,
        body TEXT NOT NULL,
        revoked_at TEXT
    );
    CREATE INDEX IF NOT EXISTS token_families_by_session ON token_families (session_id);
    CREATE TABLE IF NOT EXISTS refresh_tokens (
        hash TEXT PRIMARY KEY,
        family_id TEXT NOT NULL,
        created_at TEXT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        used_at TEXT
    );
    CREATE INDEX IF NOT EXISTS refresh_tokens_by_family ON refresh_tokens (family_id);
    CREATE TABLE IF NOT EXISTS guests (
        id TEXT PRIMARY KEY,
        namespace TEXT NOT NULL,
        created_at TEXT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX IF NOT EXISTS guests_by_expiry ON guests (expires_at);
    CREATE TABLE IF NOT EXISTS guest_links (
        namespace TEXT NOT NULL,
        kind TEXT NOT NULL,
        digest TEXT NOT NULL,
        guest_id TEXT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (namespace, kind, digest)
    );
    """,
    # 4: an event is stored as its data, not as its SSE frame (see SQLite's step 4). Bytes, not
    # JSONB: JSONB would reorder the keys, and a replay must send the bytes first sent.
    """
    ALTER TABLE events RENAME COLUMN frame TO data;
    UPDATE events
       SET data = substring(data FROM position(decode('0a646174613a20', 'hex') IN data) + 7
                                 FOR length(data) - position(decode('0a646174613a20', 'hex') IN data) - 8)
     WHERE substring(data FROM 1 FOR 4) = decode('69643a20', 'hex')
       AND position(decode('0a646174613a20', 'hex') IN data) > 0;
    """,
    # 5: as SQLite's step 5: messages and checkpoints keyed by (session_id, id); documents get an
    # owner and an explicit "shared" flag (guest sessions' uploads become private to them).
    """
    ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_id_key;
    CREATE UNIQUE INDEX IF NOT EXISTS messages_by_session_id ON messages (session_id, id);
    ALTER TABLE checkpoints DROP CONSTRAINT IF EXISTS checkpoints_id_key;
    CREATE UNIQUE INDEX IF NOT EXISTS checkpoints_by_session_id ON checkpoints (session_id, id);
    ALTER TABLE documents ADD COLUMN IF NOT EXISTS shared BOOLEAN NOT NULL DEFAULT FALSE;
    UPDATE documents SET shared = TRUE WHERE end_user_id IS NULL AND id NOT IN (
        SELECT d.value FROM sessions s, jsonb_array_elements_text(COALESCE(s.body->'documents', '[]'::jsonb)) d
        WHERE COALESCE((s.body->>'is_guest')::boolean, FALSE)
    );
    UPDATE documents SET body = (body::jsonb || jsonb_build_object('shared', shared))::text;
    CREATE INDEX IF NOT EXISTS documents_shared ON documents (shared, created_at);
    """,
    # 6: as SQLite's step 6, full-text search: GIN indexes on the tsvector of message content
    # and session titles, the expressions actors/store/search_postgres.py queries.
    """
    CREATE INDEX IF NOT EXISTS messages_text_search
        ON messages USING GIN (to_tsvector('simple'::regconfig, (body::jsonb)->>'content'));
    CREATE INDEX IF NOT EXISTS sessions_title_search
        ON sessions USING GIN (to_tsvector('simple'::regconfig, COALESCE(body->>'title', '')));
    """,
    # As SQLite's step of the same name: hidden summary nodes, apart from messages.
    """
    CREATE TABLE IF NOT EXISTS context_summaries (
        pos BIGSERIAL PRIMARY KEY,
        id TEXT NOT NULL,
        session_id TEXT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE UNIQUE INDEX IF NOT EXISTS context_summaries_by_session_id ON context_summaries (session_id, id);
    CREATE INDEX IF NOT EXISTS context_summaries_by_session ON context_summaries (session_id, pos);
    """,
    # As SQLite's webhook step: the durable outbox of webhook deliveries.
    """
    CREATE TABLE IF NOT EXISTS webhook_deliveries (
        id TEXT COLLATE "C" PRIMARY KEY,
        endpoint TEXT NOT NULL,
        session_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        body BYTEA NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at DOUBLE PRECISION,
        last_error TEXT,
        last_status INTEGER,
        delivered_at DOUBLE PRECISION,
        lease_owner TEXT,
        lease_until DOUBLE PRECISION NOT NULL DEFAULT 0
    );
    CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
    CREATE INDEX IF NOT EXISTS webhook_deliveries_by_time ON webhook_deliveries (created_at DESC, id DESC);
    CREATE INDEX IF NOT EXISTS webhook_deliveries_by_endpoint ON webhook_deliveries (endpoint, created_at DESC);
    """,
    # share links, as SQLite's step of the same name.
    """
    CREATE TABLE IF NOT EXISTS shares (
        id TEXT PRIMARY KEY,
        session_id TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        created_at TEXT COLLATE "C" NOT NULL,
        expires_at DOUBLE PRECISION,
        body TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS shares_by_session ON shares (session_id, created_at);
    """,
    # Lease epochs, as in SQLite: each activation of a session advances its epoch, and a
    # commit written under a lower one is refused.
    """
    ALTER TABLE sessions ADD COLUMN IF NOT EXISTS lease_epoch BIGINT NOT NULL DEFAULT 0;
    """,
    # retention, as SQLite's step: due_at, and the sweeper's indexes (actors/store/expiry.py).
    """
    ALTER TABLE sessions ADD COLUMN IF NOT EXISTS due_at DOUBLE PRECISION;
    CREATE INDEX IF NOT EXISTS sessions_due ON sessions (due_at) WHERE due_at IS NOT NULL;
    CREATE INDEX IF NOT EXISTS sessions_temporary ON sessions (last_active_at)
        WHERE (body->>'temporary') = 'true';
    CREATE INDEX IF NOT EXISTS sessions_by_namespace_activity ON sessions (namespace, last_active_at);
    CREATE INDEX IF NOT EXISTS sessions_by_agent_activity ON sessions ((body->>'agent_id'), last_active_at);
    """,
    # As SQLite's step of the same name: only settled text is searchable, so the index of
    # message content leaves out answers being written (actors/store/search_postgres.py queries
    # with the same predicate). Built once, which on a large table takes a while, reads going on
    # meanwhile (writes to messages wait); the old index goes only after it, in one moment.
    """
    CREATE INDEX IF NOT EXISTS messages_settled_text_search
        ON messages USING GIN (to_tsvector('simple'::regconfig, (body::jsonb)->>'content'))
        WHERE ((body::jsonb)->>'status') IS DISTINCT FROM 'running';
    DROP INDEX IF EXISTS messages_text_search;
    """,
    # As SQLite's step of the same name: the per-session position indexes go (a session's rows
    # are found by its (session_id, id) index and put in order by pos when read), one index
    # fewer for every message and checkpoint written. Events are a heap with their key as an
    # index here already: what SQLite's step makes of its events table.
    """
    DROP INDEX IF EXISTS messages_by_session;
    DROP INDEX IF EXISTS checkpoints_by_session;
    """,
]
