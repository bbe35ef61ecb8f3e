"""What every PostgreSQL table of sessiond shares: the pool's helpers and text without U+0000."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
import msgspec

__all__ = ["PgConnection", "jsonb", "pg_param", "pg_text", "row_count", "without_nul"]

_T = TypeVar("_T")
_enc = msgspec.json.Encoder()

_NUL_ESCAPE = b"\\u0000"


def pg_text(value: str) -> str:
    """PostgreSQL text cannot hold U+0000 (SQLite's can): it is kept as U+FFFD, in what is
    stored and in lookups alike, so a lookup finds what was stored for the same value."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def pg_param(value: Any) -> Any:
    if isinstance(value, str):
        return pg_text(value)
    if isinstance(value, list):
        return [pg_param(v) for v in value]
    return value


def without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return pg_text(value)
    if isinstance(value, list):
        return [without_nul(v) for v in value]
    if isinstance(value, dict):
        return {pg_text(k): without_nul(v) for k, v in value.items()}
    return value


def jsonb(body: bytes) -> str:
    """A JSON body for a JSONB column, which refuses ``\\u0000``: those become U+FFFD (rare: the
    bytes are searched first, and a false match only re-encodes the same document)."""
    if _NUL_ESCAPE not in body:
        return body.decode()
    return _enc.encode(without_nul(msgspec.json.decode(body))).decode()


def row_count(status: str) -> int:
    """The row count of a command status such as ``DELETE 3`` or ``INSERT 0 1``."""
    return int(status.rsplit(" ", 1)[-1])



class PgConnection:
    """A pool and the three ways sessiond's PostgreSQL tables use it (the store opens it)."""

    _pool: asyncpg.Pool | None

    async def _fetch(self, sql: str, *params: Any) -> list[asyncpg.Record]:
        assert self._pool is not None
        return list(await self._pool.fetch(sql, *map(pg_param, params)))

    async def _execute(self, sql: str, *params: Any) -> int:
        assert self._pool is not None
        return row_count(await self._pool.execute(sql, *map(pg_param, params)))

    async def _transaction(self, fn: Callable[[asyncpg.Connection], Awaitable[_T]]) -> _T:
        assert self._pool is not None
        async with self._pool.acquire() as conn, conn.transaction():
            return await fn(conn)
