"""The SQLite store's writer: the one connection that writes, the statements of each group
commit, and the checkpointer that folds the write-ahead log beside it. All of it runs on threads
of the store's own (the writer's, the checkpointer's), never on the event loop."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Sequence
from itertools import chain
from pathlib import Path
from typing import Any

import msgspec

from actors.core.records import Op
from actors.store import outbox, shares_sqlite
from actors.store.batching import Rows, admitted, claims, fences

__all__ = ["DELETES", "Checkpointer", "connect_writer", "write_batch"]

log = logging.getLogger("sessiond.store")

_UPSERT_SESSION = (
    "INSERT INTO sessions (id, namespace, end_user_id, last_active_at, body, due_at) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT(id) DO UPDATE SET namespace = excluded.namespace,"
    " end_user_id = excluded.end_user_id, last_active_at = excluded.last_active_at,"
    " body = excluded.body, due_at = excluded.due_at"
)
_CLAIM_EPOCH = "UPDATE sessions SET lease_epoch = lease_epoch + 1 WHERE id = ? RETURNING lease_epoch"

# A group commit's rows of the four tables every message writes go to SQLite in one statement:
# an insert into a view of the writer's connection, whose trigger writes them from JSON arrays
# (one a table) in the order they came, each as its own upsert would. A statement holds Python's
# lock only to bind its few texts; all the rest runs in SQLite with the lock released. Bound a row
# at a time (or in multi-row statements), each statement took the lock back from the event loop,
# and under load each of those waited for the loop's switch interval: a commit waited for the
# lock some ten times over. Alone in autocommit the statement is its own transaction (a write
# one from its start: it waits for another connection's write lock as BEGIN IMMEDIATE does).
# It advances the epochs the commit claims first (once per claim, as one UPDATE each would) and
# keeps them in a table of the connection's own, which the writer reads out next (an
# activation's claim is two statements, not a transaction of some twenty). Then it checks the lease fences:
# if any session's stored epoch is past its fence, it stops (_FENCED) with nothing written, the
# claims undone, and the commit is done again in an explicit transaction that claims again,
# finds the stale sessions and leaves out their rows. (SQLite's JSON functions end a text at
# U+0000. Outside a JSON body, only a session's namespace or end user id can hold one: such
# session rows are bound as they are, in the explicit transaction. Every other column written
# directly is sessiond's own: ids it made or an import's, which must match [A-Za-z0-9_.-]+,
# timestamps it formatted, event types. json_extract, not ->>, which needs SQLite 3.38; each
# document is bound as text, which no SQLite reads as JSONB.)
_FENCED = "sessiond: fenced"
_ROWS_VIEW = f"""
CREATE TEMP TABLE batch_claimed (id TEXT PRIMARY KEY, epoch INTEGER NOT NULL);
CREATE TEMP VIEW batch_rows (claims, fences, sessions, messages, checkpoints, events)
    AS SELECT NULL, NULL, NULL, NULL, NULL, NULL;
CREATE TEMP TRIGGER batch_rows_write INSTEAD OF INSERT ON batch_rows BEGIN
    UPDATE sessions SET lease_epoch = lease_epoch
            + (SELECT count(*) FROM json_each(NEW.claims) AS c WHERE c.value = sessions.id)
        WHERE NEW.claims IS NOT NULL AND id IN (SELECT value FROM json_each(NEW.claims));
    INSERT OR REPLACE INTO batch_claimed (id, epoch) SELECT id, lease_epoch FROM sessions
        WHERE NEW.claims IS NOT NULL AND id IN (SELECT value FROM json_each(NEW.claims));
    SELECT RAISE(ABORT, '{_FENCED}') FROM json_each(NEW.fences) AS f
        JOIN sessions AS s ON s.id = json_extract(f.value, '$[0]')
        WHERE s.lease_epoch > json_extract(f.value, '$[1]');
    INSERT INTO sessions (id, namespace, end_user_id, last_active_at, body, due_at)
        SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
            json_extract(value, '$[3]'), json_extract(value, '$[4]'), json_extract(value, '$[5]')
        FROM json_each(NEW.sessions) WHERE true
        ON CONFLICT(id) DO UPDATE SET namespace = excluded.namespace,
            end_user_id = excluded.end_user_id, last_active_at = excluded.last_active_at,
            body = excluded.body, due_at = excluded.due_at;
    INSERT INTO messages (id, session_id, body)
        SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]')
        FROM json_each(NEW.messages) WHERE true
        ON CONFLICT(session_id, id) DO UPDATE SET body = excluded.body;
    INSERT INTO checkpoints (id, session_id, body)
        SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]')
        FROM json_each(NEW.checkpoints) WHERE true
        ON CONFLICT(session_id, id) DO UPDATE SET body = excluded.body;
    INSERT OR REPLACE INTO events (session_id, seq, type, data)
        SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
            CAST(json_extract(value, '$[3]') AS BLOB)
        FROM json_each(NEW.events);
END;
"""
_INSERT_ROWS = "INSERT INTO batch_rows VALUES (?, ?, ?, ?, ?, ?)"
# The claimed epochs the trigger kept, taken out of its table (emptied here, not by the trigger:
# a write to the table in every commit, claims or none, cost the writer 5-10 % of its time).
_CLAIMED = "DELETE FROM batch_claimed RETURNING id, epoch"
# The most text one statement's JSON holds (about: characters): a larger commit (large messages)
# is an explicit transaction of several, so that SQLite never parses one huge text at once.
_STATEMENT_BYTES = 4 << 20
_encoder = msgspec.json.Encoder()
_UPSERT_SUMMARY = (
    "INSERT INTO context_summaries (id, session_id, body) VALUES (?, ?, ?)"
    " ON CONFLICT(session_id, id) DO UPDATE SET body = excluded.body"
)
_DROP_SUMMARY = "DELETE FROM context_summaries WHERE session_id = ? AND id = ?"
_TRIMS = (
    "DELETE FROM messages WHERE session_id = ? AND id = ?",
    "DELETE FROM checkpoints WHERE session_id = ? AND id = ?",
    "DELETE FROM events WHERE session_id = ? AND seq <= ?",
)
# A session's events but its newest ?2 (none if it has no more: the bound is then NULL). Both
# reads walk the primary key (session_id, seq) from the session's newest event back.
_KEEP_EVENTS = (
    "DELETE FROM events WHERE session_id = ?1 AND seq <"
    " (SELECT seq FROM events WHERE session_id = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2 - 1)"
)
DELETES = [
    "DELETE FROM context_summaries WHERE session_id = ?",
    "DELETE FROM messages WHERE session_id = ?",
    "DELETE FROM checkpoints WHERE session_id = ?",
    "DELETE FROM events WHERE session_id = ?",
    shares_sqlite.DELETE_SHARES,
    "DELETE FROM sessions WHERE id = ?",
]


_FENCE_CHUNK = 64


def _stale_epochs(db: sqlite3.Connection, pairs: list[tuple[str, int]]) -> dict[str, int]:
    """The stored epoch of each (session, epoch) pair's session that is past its epoch. The
    pairs are padded to a power of two with the last one, so that few texts of the statement
    exist, each small and kept prepared."""
    pairs = pairs + pairs[-1:] * ((1 << (len(pairs) - 1).bit_length()) - len(pairs))
    marks = ", ".join(["(?, ?)"] * len(pairs))
    sql = (f"WITH fence(id, epoch) AS (VALUES {marks}) SELECT s.id, s.lease_epoch FROM sessions s"
           " JOIN fence f ON s.id = f.id WHERE s.lease_epoch > f.epoch")
    return {sid: int(epoch) for sid, epoch in db.execute(sql, list(chain.from_iterable(pairs))).fetchall()}


def _connect(path: Path) -> sqlite3.Connection:
    """A plain connection for a thread of the store's own (it may be opened on another): in
    autocommit, waiting up to 5 s for a lock another connection holds."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA busy_timeout=5000")
    return db


def connect_writer(path: Path, synchronous: str, wal_size_limit: int = -1) -> sqlite3.Connection:
    """The writer's connection: ``_connect``'s, with the view each commit's rows go through.
    Its commits are the ones that start the write-ahead log again (see ``Checkpointer``): each
    such start cuts the file back to ``wal_size_limit`` bytes (-1: never), so a burst's log
    does not keep its disk."""
    db = _connect(path)
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute(f"PRAGMA journal_size_limit={int(wal_size_limit)}")
    db.executescript(_ROWS_VIEW)
    return db


class Checkpointer:
    """Folds the write-ahead log into the database file every ``seconds``, on a thread and a
    connection of its own, so that no group commit waits for the copying (with SQLite's
    automatic checkpoint, the commit that crosses 1000 pages of log does it, and its fsync).

    PASSIVE: it copies what no reader still needs and never blocks the writer. But SQLite
    starts the log again from its beginning only at a write that finds every frame of it
    folded, and frames keep coming while a pass copies: under steady writes the log would never
    start again and would grow without end. So a pass is repeated while it still had much to
    copy (the writer adds less during each than it copied), and then the writer is told
    (``folded``): before its next commit it folds the few frames added since, itself, and that
    commit writes the log from its start again."""

    # A pass that copied fewer frames than this ends the repeats.
    CLOSE_FRAMES = 256
    MAX_PASSES = 4

    def __init__(self, path: Path, seconds: float) -> None:
        self._path = path
        self._seconds = seconds
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.folded = threading.Event()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop it, after one more checkpoint (blocking: call it off the event loop)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        db = _connect(self._path)
        try:
            while not self._stopping.wait(self._seconds):
                self.run_once(db)
            self.run_once(db)
        finally:
            db.close()

    def run_once(self, db: sqlite3.Connection) -> None:
        """Passes until one had little to copy (what the writer added during the one before);
        then the writer folds the rest."""
        before = -1
        for _ in range(self.MAX_PASSES):
            state = _checkpoint(db)
            if state is None:
                return
            frames, folded = state
            if before >= 0 and folded - before < self.CLOSE_FRAMES:
                break
            before = folded
        if frames > 0:
            self.folded.set()

    def fold_tail(self, db: sqlite3.Connection) -> None:
        """On the writer's connection, between two commits, once ``folded``: the frames added
        since the last pass, so that the next commit starts the log again."""
        if self.folded.is_set():
            self.folded.clear()
            _checkpoint(db)


def _checkpoint(db: sqlite3.Connection) -> tuple[int, int] | None:
    """A PASSIVE checkpoint: (frames in the log, how many of them are folded), or None if it
    failed or another checkpoint was running (the next one tries again; the log only grows
    meanwhile)."""
    try:
        busy, frames, folded = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    except sqlite3.Error as exc:
        log.warning("WAL checkpoint failed: %s", exc)
        return None
    return None if busy else (int(frames), int(folded))


def write_batch(db: sqlite3.Connection, ops: list[Op], checkpointer: Checkpointer | None) -> dict[str, int]:
    """One group commit, on the writer's thread: the epochs of the sessions its ops claim or
    that are fenced past theirs (see ``Committer``). Almost always one statement (``_ROWS_VIEW``;
    two if it claims epochs); a commit that meets a stale fence, is large, holds U+0000 in a
    session's owner, or writes what only retention, deletes, summaries and webhooks write is an
    explicit transaction."""
    if checkpointer is not None:
        checkpointer.fold_tail(db)
    rows = Rows(ops)
    if not _rare(rows) and not any(map(_nul_owned, rows.sessions)):
        claimed = claims(ops)
        docs = [
            _doc(claimed), _doc(list(fences(ops).items())), _doc(rows.sessions), _doc(rows.messages),
            _doc(rows.checkpoints), _doc(_events(rows)),
        ]
        if sum(len(d) for d in docs if d is not None) <= _STATEMENT_BYTES:
            try:
                db.execute(_INSERT_ROWS, docs)
            except sqlite3.IntegrityError as exc:
                if str(exc) != _FENCED:
                    raise
            else:
                if not claimed:
                    return {}
                # A row of another id could only be left by a claim whose read failed: not ours.
                return {sid: int(epoch) for sid, epoch in db.execute(_CLAIMED).fetchall() if sid in claimed}
    return _write_in_transaction(db, ops)


def _rare(rows: Rows) -> bool:
    return bool(
        rows.summaries or rows.summary_drops or rows.trim_messages or rows.trim_checkpoints or rows.trim_events
        or rows.keep_events or rows.deletes or rows.deliveries
    )


def _nul_owned(row: tuple[str, str, str | None, str, str, float | None]) -> bool:
    return "\x00" in row[1] or (row[2] is not None and "\x00" in row[2])


def _doc(table: Sequence[Any]) -> str | None:
    return _encoder.encode(table).decode() if table else None


def _events(rows: Rows) -> list[tuple[str, int, str, str]]:
    return [(sid, seq, kind, data.decode()) for sid, seq, kind, data in rows.events]


def _insert_in_parts(db: sqlite3.Connection, rows: Rows, sessions: Sequence[Any]) -> None:
    """Inside a transaction: ``sessions`` and the rows of messages, checkpoints and events
    through ``_ROWS_VIEW`` (its claims and fences left empty), a table at a time, in statements of about
    ``_STATEMENT_BYTES`` of text at most (a larger row alone)."""
    tables: tuple[Sequence[Sequence[Any]], ...] = (sessions, rows.messages, rows.checkpoints, _events(rows))
    for column, table in enumerate(tables, start=2):
        at, size = 0, 0
        for end, row in enumerate(table):
            n = sum(len(v) for v in row if isinstance(v, str))
            if end > at and size + n > _STATEMENT_BYTES:
                _insert_part(db, column, table[at:end])
                at, size = end, 0
            size += n
        if at < len(table):
            _insert_part(db, column, table[at:])


def _insert_part(db: sqlite3.Connection, column: int, part: Sequence[Sequence[Any]]) -> None:
    docs: list[str | None] = [None] * 6
    docs[column] = _doc(part)
    db.execute(_INSERT_ROWS, docs)


def _write_in_transaction(db: sqlite3.Connection, ops: list[Op]) -> dict[str, int]:
    # IMMEDIATE: the write lock from the start (waiting for it up to busy_timeout), so the
    # fence check below reads what no other connection can change before the rows are
    # written; a deferred transaction that read first could not take the lock after
    # another connection's commit (SQLITE_BUSY at once, not after a wait).
    db.execute("BEGIN IMMEDIATE")
    try:
        epochs: dict[str, int] = {}
        for sid in claims(ops):
            row = db.execute(_CLAIM_EPOCH, (sid,)).fetchone()
            if row is not None:
                epochs[sid] = int(row[0])
        fenced = fences(ops)
        if fenced:
            # Cluster mode needs PostgreSQL, so only a second process on this file could
            # have claimed since; the check keeps one code path with the shared store.
            # Only the stale ones come back (none, almost always): a step per 64 sessions.
            pairs = list(fenced.items())
            for at in range(0, len(pairs), _FENCE_CHUNK):
                epochs.update(_stale_epochs(db, pairs[at : at + _FENCE_CHUNK]))
        rows = Rows(admitted(ops, epochs))  # without the stale sessions' rows
        odd = [row for row in rows.sessions if _nul_owned(row)]
        if odd:
            db.executemany(_UPSERT_SESSION, odd)  # a session's owner never changes: all its rows
        _insert_in_parts(db, rows, [row for row in rows.sessions if not _nul_owned(row)] if odd else rows.sessions)
        tables: tuple[tuple[str, Sequence[Any]], ...] = (
            (_UPSERT_SUMMARY, rows.summaries),
            (_DROP_SUMMARY, rows.summary_drops),
        )
        for sql, table in tables:
            if table:
                db.executemany(sql, table)
        trims: tuple[Sequence[Any], ...] = (rows.trim_messages, rows.trim_checkpoints, rows.trim_events)
        for sql, trim in zip(_TRIMS, trims, strict=True):
            if trim:
                db.executemany(sql, trim)
        if rows.keep_events:
            db.executemany(_KEEP_EVENTS, rows.keep_events)
        for sql in DELETES if rows.deletes else ():
            db.executemany(sql, rows.deletes)
        if rows.deliveries:
            db.executemany(outbox.INSERT_DELIVERY, [(*d, d[5]) for d in rows.deliveries])
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return epochs
