"""Share links in the PostgreSQL store: one row per link, found by the hash of its token.

Making a link takes a transaction-scoped advisory lock on its session first, so the count of
the session's live links and the insert are one step on every node sharing the database. A
session's links are deleted in the group-commit transaction that deletes the session
(``DELETE_SHARES``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import msgspec

from actors.store.tables import ShareRecord

__all__ = ["DELETE_SHARES", "delete_share", "list_shares", "put_share", "share_by_hash"]

DELETE_SHARES = "DELETE FROM shares WHERE session_id = $1"

_dec = msgspec.json.Decoder(ShareRecord)
_enc = msgspec.json.Encoder()
_LIVE = "(expires_at IS NULL OR expires_at > $2)"
# Advisory locks of share links: (class, key) pairs, apart from the store's other locks.
_SHARE_LOCK_CLASS = 0x5E55_5A4

_Fetch = Callable[..., Awaitable[list[Any]]]


def _session_lock(session_id: str) -> int:
    raw = hashlib.sha256(session_id.encode()).digest()
    return int.from_bytes(raw[:4], "big", signed=True)


async def put_share(conn: asyncpg.Connection, share: ShareRecord, limit: int, now: float) -> bool:
    """Insert ``share`` unless its session has ``limit`` live links already (expired ones go)."""
    await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", _SHARE_LOCK_CLASS, _session_lock(share.session_id))
    await conn.execute("DELETE FROM shares WHERE session_id = $1 AND expires_at <= $2", share.session_id, now)
    count = await conn.fetchval("SELECT count(*) FROM shares WHERE session_id = $1", share.session_id)
    if int(count) >= limit:
        return False
    await conn.execute(
        "INSERT INTO shares (id, session_id, token_hash, created_at, expires_at, body)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        share.id, share.session_id, share.token_hash, share.created_at, share.expires_at,
        _enc.encode(share).decode(),
    )
    return True


async def share_by_hash(fetch: _Fetch, token_hash: str, now: float) -> ShareRecord | None:
    rows = await fetch(f"SELECT body FROM shares WHERE token_hash = $1 AND {_LIVE}", token_hash, now)
    return _dec.decode(rows[0][0]) if rows else None


async def list_shares(fetch: _Fetch, session_id: str, now: float) -> list[ShareRecord]:
    rows = await fetch(
        f"SELECT body FROM shares WHERE session_id = $1 AND {_LIVE} ORDER BY created_at, id", session_id, now
    )
    return [_dec.decode(r[0]) for r in rows]


async def delete_share(execute: Callable[..., Awaitable[int]], session_id: str, share_id: str) -> bool:
    return await execute("DELETE FROM shares WHERE session_id = $1 AND id = $2", session_id, share_id) > 0
