"""A PostgreSQL database of our own for a test: created fresh, dropped after.

The server is the one at 127.0.0.1:5432 (user postgres, trust auth), or SESSIOND_TEST_POSTGRES_URL.
Without one the test is skipped with the reason, or fails under SESSIOND_REQUIRE_POSTGRES=1.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

__all__ = ["PG_ADMIN", "create_database", "database", "drop_database"]

PG_ADMIN = os.environ.get("SESSIOND_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


async def create_database() -> str:
    """A fresh database; skips (or fails under SESSIOND_REQUIRE_POSTGRES=1) without a server."""
    import asyncpg  # type: ignore[import-untyped]

    try:
        admin = await asyncio.wait_for(asyncpg.connect(PG_ADMIN), 5)
    except Exception as exc:
        if os.environ.get("SESSIOND_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"SESSIOND_REQUIRE_POSTGRES=1 but no PostgreSQL answers at {PG_ADMIN}: {exc}")
        pytest.skip(f"no PostgreSQL answers at {PG_ADMIN} ({exc})")
    name = f"sessiond_test_{secrets.token_hex(4)}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name


async def drop_database(dsn: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{dsn.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await admin.close()


@asynccontextmanager
async def database() -> AsyncIterator[str]:
    """``async with database() as dsn``: a fresh database, dropped on the way out."""
    dsn = await create_database()
    try:
        yield dsn
    finally:
        await drop_database(dsn)
