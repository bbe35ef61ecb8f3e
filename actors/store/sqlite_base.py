"""What every SQLite table of sessiond shares: the reader, and connections of their own for rare writes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

__all__ = ["SqliteConnection"]

_T = TypeVar("_T")


class SqliteConnection:
    """The database file, its shared reader, and the ways sessiond's tables use them. A rare
    write runs on a connection of its own (``_write_one``, or ``_transaction`` with BEGIN
    IMMEDIATE), so it never joins, or rolls back with, a group-commit transaction that the
    writer holds open, and a check and the write that depends on it are atomic even between
    processes sharing the file."""

    path: Path
    _reader: aiosqlite.Connection | None

    async def _all(self, sql: str, params: Sequence[Any]) -> list[Any]:
        assert self._reader is not None
        return await self._rows(self._reader, sql, params)

    async def _write_one(self, sql: str, params: Sequence[Any]) -> int:
        async with aiosqlite.connect(self.path, isolation_level=None) as db:
            await db.execute("PRAGMA busy_timeout=5000")
            cur = await db.execute(sql, params)
            return cur.rowcount

    async def _transaction(self, fn: Callable[[aiosqlite.Connection], Awaitable[_T]]) -> _T:
        async with aiosqlite.connect(self.path, isolation_level=None) as db:
            await db.execute("PRAGMA busy_timeout=5000")
            await db.execute("BEGIN IMMEDIATE")
            try:
                result = await fn(db)
            except BaseException:
                await db.execute("ROLLBACK")
                raise
            await db.execute("COMMIT")
            return result

    @staticmethod
    async def _rows(db: aiosqlite.Connection, sql: str, params: Sequence[Any]) -> list[Any]:
        # One hop to the connection's thread: the statement runs to its end (and so ends its
        # read transaction) before any other statement on the connection starts. Run as
        # execute, then fetchall, two hops apart, concurrent reads overlap on the shared
        # reader and each joins the read transaction the first one opened: under load the
        # reader can keep a snapshot from before a commit that has been acknowledged, and a
        # session just created is not found (404).
        return list(await db.execute_fetchall(sql, params))
