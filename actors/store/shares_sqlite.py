"""Share links in the SQLite store: one row per link, found by the hash of its token.

Making a link counts the session's live links and inserts in one ``BEGIN IMMEDIATE``
transaction, so two requests at once never pass the bound together. A session's links are
deleted in the group-commit transaction that deletes the session (``DELETE_SHARES``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiosqlite
import msgspec

from actors.store.tables import ShareRecord

__all__ = ["DELETE_SHARES", "delete_share", "list_shares", "put_share", "share_by_hash"]

DELETE_SHARES = "DELETE FROM shares WHERE session_id = ?"

_dec = msgspec.json.Decoder(ShareRecord)
_enc = msgspec.json.Encoder()
_LIVE = "(expires_at IS NULL OR expires_at > ?)"

_Fetch = Callable[[str, Sequence[Any]], Awaitable[list[Any]]]


async def put_share(db: aiosqlite.Connection, share: ShareRecord, limit: int, now: float) -> bool:
    """Insert ``share`` unless its session has ``limit`` live links already (expired ones go)."""
    await db.execute("DELETE FROM shares WHERE session_id = ? AND expires_at <= ?", (share.session_id, now))
    async with db.execute("SELECT COUNT(*) FROM shares WHERE session_id = ?", (share.session_id,)) as cur:
        row = await cur.fetchone()
    if row is not None and int(row[0]) >= limit:
        return False
    await db.execute(
        "INSERT INTO shares (id, session_id, token_hash, created_at, expires_at, body) VALUES (?, ?, ?, ?, ?, ?)",
        (share.id, share.session_id, share.token_hash, share.created_at, share.expires_at,
         _enc.encode(share).decode()),
    )
    return True


async def share_by_hash(fetch: _Fetch, token_hash: str, now: float) -> ShareRecord | None:
    rows = await fetch(f"SELECT body FROM shares WHERE token_hash = ? AND {_LIVE}", (token_hash, now))
    return _dec.decode(rows[0][0]) if rows else None


async def list_shares(fetch: _Fetch, session_id: str, now: float) -> list[ShareRecord]:
    rows = await fetch(
        f"SELECT body FROM shares WHERE session_id = ? AND {_LIVE} ORDER BY created_at, id", (session_id, now)
    )
    return [_dec.decode(r[0]) for r in rows]


async def delete_share(write: Callable[[str, Sequence[Any]], Awaitable[int]], session_id: str, share_id: str) -> bool:
    return await write("DELETE FROM shares WHERE session_id = ? AND id = ?", (session_id, share_id)) > 0
