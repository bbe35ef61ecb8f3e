"""A store written by an earlier release upgrades on start and loses nothing.

tests/fixtures/store-schema-3.json holds the rows a server of schema 3 wrote (two sessions:
answers, tool calls with odd arguments, a regenerated answer, a restore with a hint, a
cancelled and an interrupted task), with the event stream that server sent when asked to
replay them. Schema 3 kept every event as its whole SSE frame; these tests build such a
database by the old migration steps and the old rows, start today's server on it, and check
that every event replays byte for byte, over HTTP, and that new events continue above.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient
from redis.typing import EncodableT, FieldT

from actors.core.events import TERMINAL_EVENTS
from actors.store.migrations.postgres import PG_MIGRATIONS
from actors.store.migrations.sqlite import MIGRATIONS
from tests.conftest import ClientFactory
from tests.pg import database
from tests.sse import Frames

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "store-schema-3.json").read_text())
OLD_SCHEMA = 3


@pytest.fixture
async def dsn() -> AsyncIterator[str]:
    async with database() as url:
        yield url


def _old_events() -> dict[str, list[tuple[int, str, bytes]]]:
    """Per session, (seq, type, frame) of every stored event, as schema 3 kept them."""
    out: dict[str, list[tuple[int, str, bytes]]] = {}
    for sid, seq, type_, frame in FIXTURE["events"]:
        out.setdefault(sid, []).append((seq, type_, frame.encode()))
    return out


def _id(frame: bytes) -> int:
    return int(frame.split(b"\n")[0].removeprefix(b"id: "))


def _type(frame: bytes) -> str:
    return frame.split(b"\n")[1].removeprefix(b"event: ").decode()


def _check_new_answer(new: list[bytes], after: int) -> None:
    """A whole new answer, every id above ``after`` and increasing."""
    types = [_type(f) for f in new]
    assert types[0] == "task.started" and types[-3:] == ["message.completed", "checkpoint.created", "task.completed"]
    assert set(types[1:-3]) == {"message.delta"}
    ids = [_id(f) for f in new]
    assert ids == sorted(set(ids)) and ids[0] > after


async def _replays_and_continues(client: TestClient[Any, Any]) -> None:
    """Every old event replays as the old server sent it, every message is there, and a new
    answer's ids continue above the old ones."""
    old = _old_events()
    assert len(old) == 2 and sum(map(len, old.values())) == len(FIXTURE["events"])
    for sid, events in old.items():
        async with client.get(f"/v1/sessions/{sid}/stream", headers={"Last-Event-ID": "0"}) as resp:
            assert resp.status == 200, await resp.text()
            assert await Frames(resp).take(len(events)) == FIXTURE["replay"][sid].encode()
    for sid, events in old.items():
        async with client.get(f"/v1/sessions/{sid}/tree") as resp:
            assert resp.status == 200
            tree = {n["id"]: n["content"] for n in (await resp.json())["nodes"]}
        stored = {m["id"]: m["content"] for m in (json.loads(b) for _, s, b in FIXTURE["messages"] if s == sid)}
        assert tree == stored
        async with client.post(f"/v1/sessions/{sid}/messages", json={"content": "after the upgrade"}) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["status"] == "completed"
        async with client.get(f"/v1/sessions/{sid}/stream", headers={"Last-Event-ID": "0"}) as resp:
            frames = Frames(resp)
            assert await frames.take(len(events)) == FIXTURE["replay"][sid].encode()
            _check_new_answer(await frames.until("task.completed"), max(seq for seq, _, _ in events))


# -- SQLite ---------------------------------------------------------------------------------------


def _write_sqlite_schema_3(path: Path) -> None:
    """What a server of schema 3 left behind: its migration steps, then its rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    try:
        for number, script in enumerate(MIGRATIONS[:OLD_SCHEMA], start=1):
            db.executescript(f"BEGIN;\n{script}\nPRAGMA user_version={number};\nCOMMIT;")
        db.executemany(
            "INSERT INTO sessions (id, namespace, end_user_id, last_active_at, body) VALUES (?, ?, ?, ?, ?)",
            FIXTURE["sessions"],
        )
        db.executemany("INSERT INTO messages (id, session_id, body) VALUES (?, ?, ?)", FIXTURE["messages"])
        db.executemany("INSERT INTO checkpoints (id, session_id, body) VALUES (?, ?, ?)", FIXTURE["checkpoints"])
        db.executemany(
            "INSERT INTO events (session_id, seq, type, frame) VALUES (?, ?, ?, ?)",
            [(sid, seq, type_, frame.encode()) for sid, seq, type_, frame in FIXTURE["events"]],
        )
        db.commit()
    finally:
        db.close()


async def test_a_sqlite_store_of_schema_3_upgrades_and_replays_every_event(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    assert FIXTURE["schema"] == OLD_SCHEMA
    data_dir = tmp_path / "data"
    path = data_dir / "sessiond.db"
    _write_sqlite_schema_3(path)
    client = await make_client(data_dir)
    await _replays_and_continues(client)
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert [c[1] for c in db.execute("PRAGMA table_info(events)")] == ["session_id", "seq", "type", "data"]
        # Each old event is now its data alone: the JSON the frame carried.
        for sid, seq, type_, frame in FIXTURE["events"]:
            (data,) = db.execute("SELECT data FROM events WHERE session_id = ? AND seq = ?", (sid, seq)).fetchone()
            assert frame.encode() == b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, type_.encode(), data)
            assert json.loads(data)["type"] == type_
    finally:
        db.close()


# -- PostgreSQL -----------------------------------------------------------------------------------


async def _write_postgres_schema_3(dsn: str) -> None:
    """The same rows as a schema-3 PostgreSQL node wrote them, after its migration steps."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE sessiond_schema (version INTEGER NOT NULL)")
        await conn.execute("INSERT INTO sessiond_schema (version) VALUES (0)")
        for number, script in enumerate(PG_MIGRATIONS[:OLD_SCHEMA], start=1):
            await conn.execute(script)
            await conn.execute("UPDATE sessiond_schema SET version = $1", number)
        await conn.executemany(
            "INSERT INTO sessions (id, namespace, end_user_id, last_active_at, body) VALUES ($1, $2, $3, $4, $5)",
            FIXTURE["sessions"],
        )
        await conn.executemany("INSERT INTO messages (id, session_id, body) VALUES ($1, $2, $3)", FIXTURE["messages"])
        await conn.executemany(
            "INSERT INTO checkpoints (id, session_id, body) VALUES ($1, $2, $3)", FIXTURE["checkpoints"]
        )
        await conn.executemany(
            "INSERT INTO events (session_id, seq, type, frame) VALUES ($1, $2, $3, $4)",
            [(sid, seq, type_, frame.encode()) for sid, seq, type_, frame in FIXTURE["events"]],
        )
    finally:
        await conn.close()


async def test_a_postgres_store_of_schema_3_upgrades_and_replays_every_event(
    dsn: str, make_client: ClientFactory, tmp_path: Path
) -> None:
    # dsn comes first: the database is dropped only after the server using it has stopped.
    await _write_postgres_schema_3(dsn)
    client = await make_client(tmp_path / "data", store={"kind": "postgres", "postgres_dsn": dsn})
    await _replays_and_continues(client)
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT version FROM sessiond_schema") == len(PG_MIGRATIONS)
        columns = await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'events' ORDER BY ordinal_position"
        )
        assert [c[0] for c in columns] == ["session_id", "seq", "type", "data"]
        for sid, seq, type_, frame in FIXTURE["events"]:
            data = await conn.fetchval("SELECT data FROM events WHERE session_id = $1 AND seq = $2", sid, seq)
            assert frame.encode() == b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, type_.encode(), data)
    finally:
        await conn.close()


# -- Redis ----------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_cluster_upgraded_with_old_event_streams_in_redis_replays_them(
    dsn: str, redis_url: str, make_client: ClientFactory, tmp_path: Path
) -> None:
    """After a whole-cluster upgrade, Redis still holds streams of whole frames (fields t, f,
    k): a node that reads a session from Redis sends them as they are, then the new entries."""
    await _write_postgres_schema_3(dsn)
    prefix = f"t{secrets.token_hex(4)}"
    r = aioredis.from_url(redis_url)
    try:
        for sid, seq, type_, frame in FIXTURE["events"]:
            fields: dict[FieldT, EncodableT] = {"t": type_, "f": frame.encode()}
            if type_ in TERMINAL_EVENTS:
                fields["k"] = json.loads(frame.split("\ndata: ", 1)[1])["task_id"]
            await r.xadd(f"{prefix}:events:{sid}", fields, id=f"{seq}-0")
    finally:
        await r.aclose()
    sections: dict[str, Any] = {
        "store": {"kind": "postgres", "postgres_dsn": dsn},
        "fanout": {"kind": "redis"},
        "redis": {"url": redis_url},
    }
    owner = await make_client(tmp_path / "a", cluster={"node_id": "a", "prefix": prefix}, **sections)
    reader = await make_client(tmp_path / "b", cluster={"node_id": "b", "prefix": prefix}, **sections)
    old = _old_events()
    for sid in old:
        assert (await owner.get(f"/v1/sessions/{sid}")).status == 200  # its actor now lives on a
    for sid, events in old.items():
        async with reader.get(f"/v1/sessions/{sid}/stream", headers={"Last-Event-ID": "0"}) as resp:
            frames = Frames(resp)
            assert await frames.take(len(events)) == FIXTURE["replay"][sid].encode()
            # A new answer on the owner comes through Redis as data, framed by the reader.
            async with owner.post(f"/v1/sessions/{sid}/messages", json={"content": "after"}) as sent:
                assert sent.status == 200, await sent.text()
            _check_new_answer(await frames.until("task.completed"), max(seq for seq, _, _ in events))
