"""Schema steps for the SQLite store, applied in order and tracked by PRAGMA user_version."""

from __future__ import annotations

__all__ = ["MIGRATIONS", "SEARCH_TABLES"]

SEARCH_TABLES = ("message_fts", "title_fts", "session_titles")
"""The full-text index of step 6 (FTS5 tables, their shadow tables ``<name>_*``, and the titles
they index): SQLite's counterpart of PostgreSQL's GIN indexes, so no PostgreSQL table matches."""

MIGRATIONS: list[str] = [
    # 1: sessions, messages, checkpoints, durable events, API keys
    """
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        namespace TEXT NOT NULL,
        end_user_id TEXT,
        last_active_at TEXT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX sessions_by_activity ON sessions (last_active_at DESC, id DESC);
    CREATE INDEX sessions_by_user ON sessions (namespace, end_user_id, last_active_at DESC);
    CREATE TABLE messages (
        pos INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        session_id TEXT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX messages_by_session ON messages (session_id, pos);
    CREATE TABLE checkpoints (
        pos INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        session_id TEXT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX checkpoints_by_session ON checkpoints (session_id, pos);
    CREATE TABLE events (
        session_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        type TEXT NOT NULL,
        frame BLOB NOT NULL,
        PRIMARY KEY (session_id, seq)
    ) WITHOUT ROWID;
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        secret_hash TEXT NOT NULL,
        created_at TEXT NOT NULL,
        revoked_at TEXT
    );
    """,
    # agents made through the API, uploaded documents (text extracted; files live under the data
    # dir by content hash). IF NOT EXISTS: this step does not depend on its place in the list.
    """
    CREATE TABLE IF NOT EXISTS agents (
        id TEXT PRIMARY KEY,
        created_at TEXT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS documents (
        id TEXT PRIMARY KEY,
        sha256 TEXT NOT NULL,
        end_user_id TEXT,
        created_at TEXT NOT NULL,
        body TEXT NOT NULL,
        text TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS documents_by_hash ON documents (sha256);
    CREATE INDEX IF NOT EXISTS documents_by_user ON documents (end_user_id, created_at);
    """,
    # session token families, refresh tokens (hashed), guests and what finds them again.
    # IF NOT EXISTS: this step does not depend on its place in the list.
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
        expires_at REAL NOT NULL,
        used_at TEXT
    );
    CREATE INDEX IF NOT EXISTS refresh_tokens_by_family ON refresh_tokens (family_id);
    CREATE TABLE IF NOT EXISTS guests (
        id TEXT PRIMARY KEY,
        namespace TEXT NOT NULL,
        created_at TEXT NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE INDEX IF NOT EXISTS guests_by_expiry ON guests (expires_at);
    CREATE TABLE IF NOT EXISTS guest_links (
        namespace TEXT NOT NULL,
        kind TEXT NOT NULL,
        digest TEXT NOT NULL,
        guest_id TEXT NOT NULL,
        expires_at REAL NOT NULL,
        PRIMARY KEY (namespace, kind, digest)
    ) WITHOUT ROWID;
    """,
    # 4: an event is stored as its data (the event's JSON), not as the SSE frame it was sent
    # in: every "id: N\nevent: T\ndata: D\n\n" becomes D. JSON holds no raw newline, so the
    # first "\ndata: " (X'0A646174613A20') is the data line's own; D ends 2 bytes before the end.
    # Steps 1 to 3 stay as they are: they are the history an old database has been through.
    """
    ALTER TABLE events RENAME COLUMN frame TO data;
    UPDATE events
       SET data = substr(data, instr(data, X'0A646174613A20') + 7, length(data) - instr(data, X'0A646174613A20') - 8)
     WHERE substr(data, 1, 4) = X'69643A20' AND instr(data, X'0A646174613A20') > 0;
    """,
    # 5: rows belong to their session: messages and checkpoints are keyed by (session_id, id),
    # so one session's writes can never land on another's rows; documents get an owner (a guest,
    # an end user or a session) and "shared" becomes an explicit flag. Existing documents keep
    # their visibility, except the uploads of guest sessions, which become private to them.
    # Self-contained: it reads only the tables of steps 1 and 2.
    """
    CREATE TABLE messages_by_owner (
        pos INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL,
        session_id TEXT NOT NULL,
        body TEXT NOT NULL,
        UNIQUE (session_id, id)
    );
    INSERT INTO messages_by_owner (pos, id, session_id, body) SELECT pos, id, session_id, body FROM messages;
    DROP TABLE messages;
    ALTER TABLE messages_by_owner RENAME TO messages;
    CREATE INDEX messages_by_session ON messages (session_id, pos);
    CREATE TABLE checkpoints_by_owner (
        pos INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL,
        session_id TEXT NOT NULL,
        body TEXT NOT NULL,
        UNIQUE (session_id, id)
    );
    INSERT INTO checkpoints_by_owner (pos, id, session_id, body)
        SELECT pos, id, session_id, body FROM checkpoints;
    DROP TABLE checkpoints;
    ALTER TABLE checkpoints_by_owner RENAME TO checkpoints;
    CREATE INDEX checkpoints_by_session ON checkpoints (session_id, pos);
    ALTER TABLE documents ADD COLUMN shared INTEGER NOT NULL DEFAULT 0;
    UPDATE documents SET shared = 1 WHERE end_user_id IS NULL AND id NOT IN (
        SELECT j.value FROM sessions s, json_each(s.body, '$.documents') j
        WHERE json_extract(s.body, '$.is_guest')
    );
    UPDATE documents SET body = json_set(body, '$.shared', json(CASE shared WHEN 1 THEN 'true' ELSE 'false' END));
    CREATE INDEX documents_shared ON documents (shared, created_at);
    """,
    # 6: full-text search. Message content and session titles are indexed by FTS5 tables with
    # external content (no second copy of the text), kept by triggers, so every write changes the
    # index in its own transaction. Titles go through session_titles: an FTS5 row needs a stable
    # integer key, and the sessions table's rowid may change on VACUUM.
    """
    CREATE VIEW message_text AS SELECT pos, json_extract(body, '$.content') AS content FROM messages;
    CREATE VIRTUAL TABLE message_fts USING fts5(
        content, content='message_text', content_rowid='pos', tokenize='unicode61 remove_diacritics 2'
    );
    CREATE TRIGGER message_fts_insert AFTER INSERT ON messages BEGIN
        INSERT INTO message_fts (rowid, content) VALUES (new.pos, json_extract(new.body, '$.content'));
    END;
    CREATE TRIGGER message_fts_delete AFTER DELETE ON messages BEGIN
        INSERT INTO message_fts (message_fts, rowid, content)
            VALUES ('delete', old.pos, json_extract(old.body, '$.content'));
    END;
    CREATE TRIGGER message_fts_update AFTER UPDATE OF body ON messages
        WHEN json_extract(old.body, '$.content') IS NOT json_extract(new.body, '$.content') BEGIN
        INSERT INTO message_fts (message_fts, rowid, content)
            VALUES ('delete', old.pos, json_extract(old.body, '$.content'));
        INSERT INTO message_fts (rowid, content) VALUES (new.pos, json_extract(new.body, '$.content'));
    END;
    INSERT INTO message_fts (message_fts) VALUES ('rebuild');
    CREATE TABLE session_titles (
        pos INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id TEXT NOT NULL UNIQUE,
        title TEXT NOT NULL
    );
    CREATE VIRTUAL TABLE title_fts USING fts5(
        title, content='session_titles', content_rowid='pos', tokenize='unicode61 remove_diacritics 2'
    );
    CREATE TRIGGER session_titles_insert AFTER INSERT ON session_titles BEGIN
        INSERT INTO title_fts (rowid, title) VALUES (new.pos, new.title);
    END;
    CREATE TRIGGER session_titles_delete AFTER DELETE ON session_titles BEGIN
        INSERT INTO title_fts (title_fts, rowid, title) VALUES ('delete', old.pos, old.title);
    END;
    CREATE TRIGGER sessions_title_insert AFTER INSERT ON sessions
        WHEN json_extract(new.body, '$.title') IS NOT NULL BEGIN
        INSERT INTO session_titles (session_id, title) VALUES (new.id, json_extract(new.body, '$.title'));
    END;
    CREATE TRIGGER sessions_title_update AFTER UPDATE OF body ON sessions
        WHEN json_extract(old.body, '$.title') IS NOT json_extract(new.body, '$.title') BEGIN
        DELETE FROM session_titles WHERE session_id = new.id;
        INSERT INTO session_titles (session_id, title)
            SELECT new.id, json_extract(new.body, '$.title') WHERE json_extract(new.body, '$.title') IS NOT NULL;
    END;
    CREATE TRIGGER sessions_title_delete AFTER DELETE ON sessions BEGIN
        DELETE FROM session_titles WHERE session_id = old.id;
    END;
    INSERT INTO session_titles (session_id, title)
        SELECT id, json_extract(body, '$.title') FROM sessions WHERE json_extract(body, '$.title') IS NOT NULL;
    """,
    # Hidden summary nodes (actors/core/summary.py): what a model was told of older turns that
    # no longer fit its context window. Kept apart from messages, so no listing, export, share
    # or search of messages can show them; removed with their session.
    """
    CREATE TABLE context_summaries (
        pos INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL,
        session_id TEXT NOT NULL,
        body TEXT NOT NULL,
        UNIQUE (session_id, id)
    );
    CREATE INDEX context_summaries_by_session ON context_summaries (session_id, pos);
    """,
    # Webhooks: the durable outbox. A row is written in the same commit as the event it
    # announces; the deliverer claims due rows (lease_owner, lease_until), POSTs them and records
    # the outcome. Times are unix seconds. A session's delete leaves its rows alone.
    """
    CREATE TABLE webhook_deliveries (
        id TEXT PRIMARY KEY,
        endpoint TEXT NOT NULL,
        session_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        body BLOB NOT NULL,
        created_at REAL NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL,
        last_error TEXT,
        last_status INTEGER,
        delivered_at REAL,
        lease_owner TEXT,
        lease_until REAL NOT NULL DEFAULT 0
    );
    CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
    CREATE INDEX webhook_deliveries_by_time ON webhook_deliveries (created_at DESC, id DESC);
    CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries (endpoint, created_at DESC);
    """,
    # share links: read-only links to a session's conversation, each known only by the hash of
    # its token; they go with their session (in the same transaction as its delete).
    """
    CREATE TABLE IF NOT EXISTS shares (
        id TEXT PRIMARY KEY,
        session_id TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL,
        expires_at REAL,
        body TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS shares_by_session ON shares (session_id, created_at);
    """,
    # Lease epochs: each activation of a session advances its epoch (``claim_epoch``), and a
    # commit written under a lower one is refused (``Fence``), so a node that lost a session
    # can never write to it again.
    """
    ALTER TABLE sessions ADD COLUMN lease_epoch INTEGER NOT NULL DEFAULT 0;
    """,
    # retention: due_at is when a session's own retention is due (epoch seconds, written with the
    # row from its body; NULL without one). The indexes are the sweeper's (actors/store/expiry.py):
    # their expressions are written exactly as its queries write them.
    """
    ALTER TABLE sessions ADD COLUMN due_at REAL;
    CREATE INDEX IF NOT EXISTS sessions_due ON sessions (due_at) WHERE due_at IS NOT NULL;
    CREATE INDEX IF NOT EXISTS sessions_temporary ON sessions (last_active_at)
        WHERE json_extract(body, '$.temporary') = 1;
    CREATE INDEX IF NOT EXISTS sessions_by_namespace_activity ON sessions (namespace, last_active_at);
    CREATE INDEX IF NOT EXISTS sessions_by_agent_activity
        ON sessions (json_extract(body, '$.agent_id'), last_active_at);
    """,
    # Only settled text is searchable: an answer being written (status "running") is indexed
    # once it ends, not at its start (empty) and again at every fold of its text so far, which
    # search could find and quote as if it were the answer.
    # The running rows step 6 indexed leave the index first, while their stored text is still
    # exactly what was indexed; the view FTS5 reads (for 'rebuild') holds settled rows only.
    """
    DROP TRIGGER message_fts_insert;
    DROP TRIGGER message_fts_delete;
    DROP TRIGGER message_fts_update;
    INSERT INTO message_fts (message_fts, rowid, content)
        SELECT 'delete', pos, json_extract(body, '$.content') FROM messages
        WHERE json_extract(body, '$.status') IS 'running';
    DROP VIEW message_text;
    CREATE VIEW message_text AS SELECT pos, json_extract(body, '$.content') AS content FROM messages
        WHERE json_extract(body, '$.status') IS NOT 'running';
    CREATE TRIGGER message_fts_insert AFTER INSERT ON messages
        WHEN json_extract(new.body, '$.status') IS NOT 'running' BEGIN
        INSERT INTO message_fts (rowid, content) VALUES (new.pos, json_extract(new.body, '$.content'));
    END;
    CREATE TRIGGER message_fts_delete AFTER DELETE ON messages
        WHEN json_extract(old.body, '$.status') IS NOT 'running' BEGIN
        INSERT INTO message_fts (message_fts, rowid, content)
            VALUES ('delete', old.pos, json_extract(old.body, '$.content'));
    END;
    CREATE TRIGGER message_fts_update AFTER UPDATE OF body ON messages
        WHEN (json_extract(old.body, '$.status') IS NOT 'running'
            OR json_extract(new.body, '$.status') IS NOT 'running')
        AND (json_extract(old.body, '$.status') IS NOT json_extract(new.body, '$.status')
            OR json_extract(old.body, '$.content') IS NOT json_extract(new.body, '$.content')) BEGIN
        INSERT INTO message_fts (message_fts, rowid, content)
            SELECT 'delete', old.pos, json_extract(old.body, '$.content')
            WHERE json_extract(old.body, '$.status') IS NOT 'running';
        INSERT INTO message_fts (rowid, content)
            SELECT new.pos, json_extract(new.body, '$.content')
            WHERE json_extract(new.body, '$.status') IS NOT 'running';
    END;
    """,
    # Fewer pages per group commit. Every commit writes a leaf of each B-tree keyed by session
    # for every session it holds, so its cost grows with those trees: messages_by_session and
    # checkpoints_by_session go (a session's rows are found by the (session_id, id) index, and
    # put in order by pos when read), and events become a table in the order they were written,
    # with (session_id, seq) as its index: a commit's events are written side by side, where
    # keyed by session (WITHOUT ROWID, whole rows in the key's order) each session's few
    # events split a leaf of their own. Same columns, same key, same reads.
    """
    DROP INDEX messages_by_session;
    DROP INDEX checkpoints_by_session;
    CREATE TABLE events_in_order (
        session_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        type TEXT NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (session_id, seq)
    );
    INSERT INTO events_in_order (session_id, seq, type, data)
        SELECT session_id, seq, type, data FROM events ORDER BY session_id, seq;
    DROP TABLE events;
    ALTER TABLE events_in_order RENAME TO events;
    """,
]
