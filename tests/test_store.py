"""The Store contract, on SQLite (a file in tmp_path) and on the real PostgreSQL server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from actors.ids import new_id, utcnow
from actors.records import (
    ApiKeyRecord,
    Checkpoint,
    DeleteSession,
    PutCheckpoint,
    PutEvent,
    PutMessage,
    PutSession,
    SessionQuery,
    SessionRecord,
    StoredEvent,
)
from actors.store.postgres import PostgresStore
from actors.store.sqlite import SqliteStore
from actors.tree import Node
from tests.pg import create_database, drop_database

_pg_database = create_database
_drop = drop_database


@pytest.fixture
async def postgres_dsn() -> AsyncIterator[str]:
    dsn = await _pg_database()
    try:
        yield dsn
    finally:
        await _drop(dsn)


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "sqlite":
        s: Any = SqliteStore(tmp_path / "store.db")
        dsn = None
    else:
        dsn = await _pg_database()
        s = PostgresStore(dsn)
    await s.open()
    try:
        yield s
    finally:
        await s.aclose()
        if dsn is not None:
            await _drop(dsn)


def _record(**fields: Any) -> SessionRecord:
    now = utcnow()
    fields.setdefault("id", new_id("ses"))
    fields.setdefault("namespace", "default")
    return SessionRecord(created_at=now, last_active_at=now, **fields)


async def test_round_trip_keeps_order_and_events(store: Any) -> None:
    rec = _record(title="t", metadata={"k": "v"})
    nodes = [Node(new_id("msg"), None, "user", "q", utcnow())]
    nodes.append(Node(new_id("msg"), nodes[0].id, "assistant", "a", utcnow()))
    nodes.append(Node(new_id("msg"), nodes[0].id, "assistant", "b", utcnow()))
    cp = Checkpoint(new_id("ckp"), nodes[1].id, utcnow(), "answer")
    events = [StoredEvent(seq, "task.started", b"frame %d" % seq) for seq in (3, 9, 12)]
    await store.commit(
        [*(PutMessage.of(rec.id, n) for n in nodes), PutCheckpoint.of(rec.id, cp), *(PutEvent(rec.id, e) for e in events), PutSession.of(rec)]
    )
    nodes[1].content = "a, revised"
    await store.commit([PutMessage.of(rec.id, nodes[1])])  # an upsert keeps the creation order
    loaded = await store.load_session(rec.id, events=2)
    assert loaded is not None
    assert loaded.record == rec
    assert [(n.id, n.content) for n in loaded.nodes] == [(nodes[0].id, "q"), (nodes[1].id, "a, revised"), (nodes[2].id, "b")]
    assert loaded.checkpoints == [cp]
    assert [e.seq for e in loaded.events] == [9, 12] and loaded.max_seq == 12
    assert [e.seq for e in await store.load_events(rec.id, 3, 10)] == [9, 12]
    assert await store.load_session("ses_missing", events=10) is None


async def test_group_commit_many_concurrent_callers(store: Any) -> None:
    records = [_record() for _ in range(300)]
    await asyncio.gather(*(store.commit([PutSession.of(r)]) for r in records))
    for r in records[::37]:
        assert await store.get_session(r.id) == r
    # A delete in the same batch as a late write wins.
    victim = records[0]
    await asyncio.gather(store.commit([DeleteSession(victim.id)]), store.commit([PutSession.of(victim)]))
    assert await store.get_session(victim.id) is None


async def test_list_filters_and_cursor(store: Any) -> None:
    made = []
    for i in range(6):
        r = _record(metadata={"team": "a" if i % 2 else "b", "n": i, "vip": i == 3}, end_user_id="u1" if i < 3 else None)
        r.last_active_at = f"2026-01-01T00:00:0{i}.000000Z"
        made.append(r)
    await store.commit([PutSession.of(r) for r in made])
    ids = lambda rs: [r.id for r in rs]  # noqa: E731
    assert ids(await store.list_sessions(SessionQuery(metadata={"team": "a"}))) == [made[5].id, made[3].id, made[1].id]
    assert ids(await store.list_sessions(SessionQuery(metadata={"n": "4"}))) == [made[4].id]
    assert ids(await store.list_sessions(SessionQuery(metadata={"vip": "true"}))) == [made[3].id]
    assert ids(await store.list_sessions(SessionQuery(end_user_id="u1"))) == [made[2].id, made[1].id, made[0].id]
    page = await store.list_sessions(SessionQuery(limit=2))
    rest = await store.list_sessions(SessionQuery(limit=10, after=(page[-1].last_active_at, page[-1].id)))
    assert ids(page + rest) == ids(reversed(made))


async def test_api_keys(store: Any) -> None:
    key = ApiKeyRecord("key_1", "ci", "0" * 64, utcnow())
    await store.put_api_key(key)
    assert await store.get_api_key("key_1") == key
    assert [k.id for k in await store.list_api_keys()] == ["key_1"]
    assert await store.revoke_api_key("key_1", utcnow()) is True
    assert await store.revoke_api_key("key_1", utcnow()) is False
    revoked = await store.get_api_key("key_1")
    assert revoked is not None and revoked.revoked_at is not None


async def test_postgres_migrates_once_for_racing_nodes(postgres_dsn: str) -> None:
    stores = [PostgresStore(postgres_dsn) for _ in range(3)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        rec = _record()
        await stores[0].commit([PutSession.of(rec)])
        assert await stores[2].get_session(rec.id) == rec
    finally:
        await asyncio.gather(*(s.aclose() for s in stores))
