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

from actors.core.records import Op
from actors.store import outbox, shares_sqlite
from actors.store.batching import Rows, admitted, claims, fences

__all__ = ["DELETES", "Checkpointer", "connect", "write_batch"]

log = logging.getLogger("sessiond.store")

_UPSERT_SESSION = (
    "INSERT INTO sessions (id, namespace, end_user_id, last_active_at, body, due_at) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT(id) DO UPDATE SET namespace = excluded.namespace,"
    " end_user_id = excluded.end_user_id, last_active_at = excluded.last_active_at,"
    " body = excluded.body, due_at = excluded.due_at"
)
_CLAIM_EPOCH = "UPDATE sessions SET lease_epoch = lease_epoch + 1 WHERE id = ? RETURNING lease_epoch"
_UPSERT_MESSAGE = (
    "INSERT INTO messages (id, session_id, body) VALUES (?, ?, ?)"
    " ON CONFLICT(session_id, id) DO UPDATE SET body = excluded.body"
)
_UPSERT_CHECKPOINT = (
    "INSERT INTO checkpoints (id, session_id, body) VALUES (?, ?, ?)"
    " ON CONFLICT(session_id, id) DO UPDATE SET body = excluded.body"
)
_UPSERT_SUMMARY = (
    "INSERT INTO context_summaries (id, session_id, body) VALUES (?, ?, ?)"
    " ON CONFLICT(session_id, id) DO UPDATE SET body = excluded.body"
)
_DROP_SUMMARY = "DELETE FROM context_summaries WHERE session_id = ? AND id = ?"
_INSERT_EVENT = "INSERT OR REPLACE INTO events (session_id, seq, type, data) VALUES (?, ?, ?, ?)"
_TRIMS = (
    "DELETE FROM messages WHERE session_id = ? AND id = ?",
    "DELETE FROM checkpoints WHERE session_id = ? AND id = ?",
    "DELETE FROM events WHERE session_id = ? AND seq <= ?",
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


def connect(path: Path) -> sqlite3.Connection:
    """A plain connection for a thread of the store's own (it may be opened on another): in
    autocommit, waiting up to 5 s for a lock another connection holds."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA busy_timeout=5000")
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
        db = connect(self._path)
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


class _Rows:
    """A one-row ``INSERT ... VALUES (?, ...)`` statement run for many rows at once: a statement
    of up to 256 rows, then smaller ones (a few fixed sizes, so each stays prepared). Row by row
    (``executemany``) the writer thread gives up Python's lock and takes it again for every row,
    and waits for it each time the event loop holds it; a statement of many rows does its work
    in one step. Rows apply in order, as one at a time would (a repeated key upserts again)."""

    SIZES = (256, 64, 16, 4, 1)

    __slots__ = ("_sql",)

    def __init__(self, sql: str) -> None:
        head, _, rest = sql.partition(" VALUES (")
        marks, _, tail = rest.partition(")")
        self._sql = {n: f"{head} VALUES {', '.join([f'({marks})'] * n)}{tail}" for n in self.SIZES}

    def run(self, db: sqlite3.Connection, rows: Sequence[Sequence[Any]]) -> None:
        at = 0
        for n in self.SIZES:
            while len(rows) - at >= n:
                db.execute(self._sql[n], list(chain.from_iterable(rows[at : at + n])))
                at += n


_MANY_SESSIONS = _Rows(_UPSERT_SESSION)
_MANY_MESSAGES = _Rows(_UPSERT_MESSAGE)
_MANY_CHECKPOINTS = _Rows(_UPSERT_CHECKPOINT)
_MANY_EVENTS = _Rows(_INSERT_EVENT)


def write_batch(db: sqlite3.Connection, ops: list[Op], checkpointer: Checkpointer | None) -> dict[str, int]:
    """One group commit, on the writer's thread: the epochs of the sessions its ops claim or
    that are fenced past theirs (see ``Committer``)."""
    if checkpointer is not None:
        checkpointer.fold_tail(db)
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
            # Only the stale ones come back (none, almost always): a step per 64 sessions,
            # where a row per session would cost the writer a turn of Python's lock each.
            pairs = list(fenced.items())
            for at in range(0, len(pairs), _FENCE_CHUNK):
                epochs.update(_stale_epochs(db, pairs[at : at + _FENCE_CHUNK]))
        rows = Rows(admitted(ops, epochs))
        _MANY_SESSIONS.run(db, rows.sessions)
        _MANY_MESSAGES.run(db, rows.messages)
        _MANY_CHECKPOINTS.run(db, rows.checkpoints)
        _MANY_EVENTS.run(db, rows.events)
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
