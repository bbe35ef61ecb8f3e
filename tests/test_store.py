"""The Store contract, on SQLite (a file in tmp_path) and on the real PostgreSQL server."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import msgspec
import pytest

from actors.agent.backends.simulated import SimulatedProvider
from actors.core.commands import Passivate, PatchSession, SendMessage, Subscribe
from actors.core.errors import ActorStoppedError, FencedError, StoreClosedError
from actors.core.ids import new_id, utcnow
from actors.core.records import (
    Checkpoint,
    Claim,
    Fence,
    KeepEvents,
    PutCheckpoint,
    PutEvent,
    PutMessage,
    PutSession,
    PutSummary,
    RemoveSession,
    SessionQuery,
    SessionRecord,
    StoredEvent,
)
from actors.core.search import SearchQuery
from actors.core.summary import ContextSummary
from actors.core.tree import Node, NodeStatus, Usage
from actors.registry import Registry
from actors.session.actor import ActorSettings, SessionActor
from actors.session.fanout import CLOSED
from actors.store.migrations.sqlite import MIGRATIONS, SEARCH_TABLES
from actors.store.postgres import PG_MIGRATIONS, PostgresStore
from actors.store.sqlite import SqliteStore
from actors.store.sqlite_writer import connect_writer, write_batch
from actors.store.tables import (
    AgentRecord,
    ApiKeyRecord,
    DocumentRecord,
    GuestRecord,
    RefreshLimit,
    RefreshTokenRecord,
    RouteEntry,
    TokenFamilyRecord,
)
from server import sse
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


def ids(items: Any) -> list[str]:
    return [item.id for item in items]


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
    events = [
        StoredEvent(seq, "task.completed", b'{"type":"task.completed","task_id":"t%d"}' % seq) for seq in (3, 9, 12)
    ]
    # Kept byte for byte, escapes and all (a replay sends these bytes again).
    events[2].data = '{"type":"message.delta","delta":"\\u00e9 \\" é \\\\ \\u0000 😀"}'.encode()
    first_draft = msgspec.structs.replace(nodes[2], content="draft \x00 with a NUL")
    await store.commit([
        *(PutMessage.of(rec.id, n) for n in nodes[:2]),
        PutMessage.of(rec.id, first_draft),
        PutMessage.of(rec.id, nodes[2]),  # the same key again in one commit: the later one stays
        PutCheckpoint.of(rec.id, cp),
        *(PutEvent(rec.id, e) for e in events),
        PutSession.of(rec),
    ])
    nodes[1].content = "a, revised"
    await store.commit([PutMessage.of(rec.id, nodes[1])])  # an upsert keeps the creation order
    loaded = await store.load_session(rec.id, events=2)
    assert loaded is not None
    assert loaded.record == rec
    assert [(n.id, n.content) for n in loaded.nodes] == [
        (nodes[0].id, "q"), (nodes[1].id, "a, revised"), (nodes[2].id, "b")
    ]
    assert loaded.checkpoints == [cp]
    assert [e.seq for e in loaded.events] == [9, 12] and loaded.max_seq == 12
    assert loaded.events == events[1:]  # type and data as written
    assert [e.seq for e in await store.load_events(rec.id, 3, 10)] == [9, 12]
    assert await store.load_session("ses_missing", events=10) is None


async def test_keep_events_leaves_a_sessions_newest_events_only(store: Any) -> None:
    """KeepEvents(session, n) removes the session's durable events but its newest n, in the
    commit it comes in (with events of that commit counted); fewer than n are all kept, and no
    other session's are touched."""
    long, short = _record(), _record()
    await store.commit([PutSession.of(long), PutSession.of(short)])

    def event(seq: int) -> StoredEvent:
        return StoredEvent(seq, "task.completed", b'{"type":"task.completed","task_id":"t%d"}' % seq)

    await store.commit([*(PutEvent(long.id, event(seq)) for seq in range(1, 11)), PutEvent(short.id, event(5))])
    await store.commit([PutEvent(long.id, event(14)), KeepEvents(long.id, 4), KeepEvents(short.id, 4)])
    assert [e.seq for e in await store.load_events(long.id, 0, 100)] == [8, 9, 10, 14]
    assert [e.seq for e in await store.load_events(short.id, 0, 100)] == [5]
    loaded = await store.load_session(long.id, events=4)
    assert loaded is not None and [e.seq for e in loaded.events] == [8, 9, 10, 14] and loaded.max_seq == 14
    await store.commit([KeepEvents(long.id, 1)])
    assert [e.seq for e in await store.load_events(long.id, 0, 100)] == [14]
    # Under a stale lease epoch it removes nothing, as every other op of that commit.
    first = await store.claim_epoch(short.id)
    assert first is not None and await store.claim_epoch(short.id) == first + 1
    await store.commit([PutEvent(short.id, event(6)), PutEvent(short.id, event(7))])
    with pytest.raises(FencedError):
        await store.commit([Fence(short.id, first), KeepEvents(short.id, 1)])
    assert [e.seq for e in await store.load_events(short.id, 0, 100)] == [5, 6, 7]


async def test_a_long_conversation_keeps_only_the_events_an_activation_replays(store: Any) -> None:
    """A session's durable events are bounded: once its event ids pass a multiple of
    2 x seq_block, the commit that reserves them removes those older than the newest
    replay_events, which no activation reads. A restart replays what it did, every message
    stays, and an activation under a larger replay_events (fewer events than it asks for)
    still tells a stream resuming from before them stream.reset, never a silent gap."""
    async with _registries(store, settings=ActorSettings(replay_events=5, seq_block=8)) as (registry,):
        record = await registry.create(Registry.new_record(namespace="default"))
        actor = await registry.get(record.id)
        assert isinstance(actor, SessionActor)
        most = 0
        for i in range(12):
            handle = await actor.ask(SendMessage(f"message {i}"))
            assert (await asyncio.wait_for(handle.done, 5)).status == "completed"
            most = max(most, len(await store.load_events(record.id, 0, 1000)))
        stored = await store.load_events(record.id, 0, 1000)
        # 4 durable events a turn (48 in all); at most 2 x seq_block ids pass between two trims.
        assert 5 <= len(stored) and most <= 5 + 2 * 8, (len(stored), most)
        assert stored[-1].seq == actor.log.last_seq and stored[-1].type == "task.completed"
        assert await actor.ask(Passivate(0)) is True
        await asyncio.wait_for(actor.wait_stopped(), 5)
        again = await registry.get(record.id)
        assert isinstance(again, SessionActor)
        assert list(again.log.since(0)[0]) == [e.seq for e in stored[-5:]], "a restart replays the newest five"
        assert [n.content for n in again.tree.nodes.values() if n.role == "user"] == [f"message {i}" for i in range(12)]
        oldest = stored[-5].seq
    async with _registries(store, settings=ActorSettings(replay_events=50, seq_block=8)) as (larger,):
        later = await larger.get(record.id)
        assert isinstance(later, SessionActor)
        kept = [e.seq for e in await store.load_events(record.id, 0, 1000)]
        assert len(kept) < 50 and kept[0] <= oldest, "it loads fewer than it asks for"
        assert later.log.floor == kept[0] - 1
        assert not later.log.covers(kept[0] - 2), "an older Last-Event-ID gets stream.reset"
        assert later.log.covers(kept[0] - 1)


async def test_a_large_commit_lands_whole(store: Any) -> None:
    """Messages of megabytes in one group commit (SQLite writes a commit that large in several
    statements of one transaction), one larger than such a statement alone: all there, in order."""
    rec = _record()
    sizes = [2 << 20, 3 << 20, 5 << 20, 10]
    nodes = [Node(new_id("msg"), None, "user", chr(ord("a") + i) * n, utcnow()) for i, n in enumerate(sizes)]
    events = [StoredEvent(i + 1, "message.created", b'{"text":"%s"}' % (b"x" * n)) for i, n in enumerate(sizes)]
    await asyncio.gather(
        store.commit([PutSession.of(rec), *(PutMessage.of(rec.id, n) for n in nodes[:2])]),
        store.commit([*(PutMessage.of(rec.id, n) for n in nodes[2:]), *(PutEvent(rec.id, e) for e in events)]),
    )
    loaded = await store.load_session(rec.id, events=10)
    assert loaded is not None
    assert [(n.id, len(n.content)) for n in loaded.nodes] == [(n.id, len(n.content)) for n in nodes]
    assert loaded.events == events


async def test_an_activation_reads_its_session_in_one_statement(store: Any) -> None:
    """load_session reads the row, messages, checkpoints, newest events, summaries and the
    highest durable event id in one statement (one snapshot, one hop to the reader's thread on
    SQLite, one round trip on PostgreSQL), each part in its own order."""
    rec, other = _record(title="t"), _record()
    nodes = [Node(new_id("msg"), None, "user", f"q{i}", utcnow()) for i in range(3)]
    cps = [Checkpoint(new_id("ckp"), nodes[i].id, utcnow(), f"c{i}") for i in range(2)]
    sums = [
        ContextSummary(
            id=new_id("sum"), through_id=nodes[i].id, digest=f"d{i}", content=f"s{i}", created_at=utcnow()
        )
        for i in range(2)
    ]
    events = [StoredEvent(seq, "task.completed", b'{"seq":%d}' % seq) for seq in (2, 5, 7, 8)]
    await store.commit([
        PutSession.of(rec), PutSession.of(other), *(PutMessage.of(rec.id, n) for n in nodes),
        *(PutCheckpoint.of(rec.id, c) for c in cps), *(PutEvent(rec.id, e) for e in events),
        PutMessage.of(other.id, Node(new_id("msg"), None, "user", "not mine", utcnow())),
        PutEvent(other.id, StoredEvent(9, "task.started", b"{}")),
    ])
    for summary in sums:
        await store.commit([PutSummary.of(rec.id, summary)])
    statements: list[str] = []
    if isinstance(store, SqliteStore):
        assert store._reader is not None
        await store._reader.set_trace_callback(statements.append)
    loaded = await store.load_session(rec.id, events=3)
    if isinstance(store, SqliteStore):
        assert store._reader is not None
        await store._reader.set_trace_callback(None)  # type: ignore[arg-type]  # aiosqlite omits None
        assert len([s for s in statements if not s.startswith("--")]) == 1, statements
    assert loaded is not None and loaded.record == rec
    assert [n.content for n in loaded.nodes] == ["q0", "q1", "q2"]
    assert loaded.checkpoints == cps and loaded.summaries == sums
    assert loaded.events == events[1:] and loaded.max_seq == 8
    # The highest durable id, also past the events replayed.
    none_replayed = await store.load_session(other.id, events=0)
    assert none_replayed is not None and none_replayed.events == [] and none_replayed.max_seq == 9
    assert len(none_replayed.nodes) == 1
    assert await store.load_session("ses_missing", events=3) is None


async def test_a_commit_of_a_message_is_one_statement(tmp_path: Path) -> None:
    """What a message commits (its rows, its events, the session row, under a lease fence) goes
    to SQLite as one statement in autocommit, the way that keeps the writer from waiting for
    Python's lock at each of many (sqlite_writer.py); an activation's claim is that statement
    and a read of the epochs it kept."""
    store = SqliteStore(tmp_path / "store.db")
    await store.open()
    try:
        rec = _record()
        await store.commit([PutSession.of(rec)])
        epoch = await store.claim_epoch(rec.id)
        assert epoch is not None
        statements: list[str] = []
        assert store._db is not None
        store._db.set_trace_callback(statements.append)  # called on the writer's thread, in order
        node = Node(new_id("msg"), None, "user", "q", utcnow())
        await store.commit([
            Fence(rec.id, epoch), PutMessage.of(rec.id, node), PutEvent(rec.id, StoredEvent(1, "task.started", b"{}")),
            PutSession.of(rec),
        ])
        # The statement is traced again for each program of its trigger, and SQLite's own
        # statements (full-text index) come as "-- ...": nothing else, no BEGIN, no COMMIT.
        mine = {s.split(" VALUES")[0] for s in statements if not s.startswith("--")}
        assert mine == {"INSERT INTO batch_rows"}, mine
        statements.clear()
        assert await store.claim_epoch(rec.id) == epoch + 1
        claim = [s.split(" VALUES")[0] for s in statements if not s.startswith("--")]
        assert set(claim) == {"INSERT INTO batch_rows", "DELETE FROM batch_claimed RETURNING id, epoch"}, claim
        assert "BEGIN IMMEDIATE" not in claim
        store._db.set_trace_callback(None)
        loaded = await store.load_session(rec.id, events=5)
        assert loaded is not None and [n.id for n in loaded.nodes] == [node.id] and len(loaded.events) == 1
    finally:
        await store.aclose()


async def test_claims_in_one_commit_advance_each_epoch_as_separate_claims_would(tmp_path: Path) -> None:
    """The one statement's claims (sqlite_writer.py) count as the explicit transaction's UPDATE
    per claim did: a session claimed twice in one group commit advances twice, every claimed
    session that exists comes back with its new epoch, a missing one does not; and a claim
    whose batch-mate's fence it makes stale is undone with the statement and done again in
    the transaction, exactly once."""
    path = tmp_path / "store.db"
    store = SqliteStore(path)
    await store.open()
    a, b = _record(), _record()
    try:
        await store.commit([PutSession.of(a), PutSession.of(b)])
        ea, eb = await store.claim_epoch(a.id), await store.claim_epoch(b.id)
    finally:
        await store.aclose()
    assert ea is not None and eb is not None
    db = connect_writer(path, "NORMAL")
    try:
        statements: list[str] = []
        db.set_trace_callback(statements.append)
        ops: list[Any] = [Claim(a.id), Claim("ses_missing"), Claim(a.id), Claim(b.id)]
        assert write_batch(db, ops, None) == {a.id: ea + 2, b.id: eb + 1}
        assert "BEGIN IMMEDIATE" not in statements
        # The fence of b's old epoch is stale once b is claimed in the same commit: the
        # statement stops, and the transaction claims b once and refuses the fenced write.
        statements.clear()
        node = Node(new_id("msg"), None, "user", "late", utcnow())
        epochs = write_batch(db, [Claim(b.id), Fence(b.id, eb + 1), PutMessage.of(b.id, node)], None)
        assert "BEGIN IMMEDIATE" in statements
        assert epochs == {b.id: eb + 2}
        stored = dict(db.execute("SELECT id, lease_epoch FROM sessions").fetchall())
        assert stored == {a.id: ea + 2, b.id: eb + 2}
        assert db.execute("SELECT count(*) FROM messages WHERE session_id = ?", (b.id,)).fetchone() == (0,)
    finally:
        db.close()


async def test_commits_wait_out_another_connections_writes(tmp_path: Path) -> None:
    """Another connection writing the same file (a second process) holds the write lock at
    times: every commit waits for it and lands, none fails."""
    store = SqliteStore(tmp_path / "store.db")
    await store.open()
    rec = _record()
    await store.commit([PutSession.of(rec)])
    stop = threading.Event()

    def write_elsewhere() -> int:
        other = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
        other.execute("PRAGMA busy_timeout=5000")
        done = 0
        while not stop.is_set():
            other.execute("BEGIN IMMEDIATE")
            other.execute("UPDATE sessions SET due_at = NULL WHERE id = ?", (rec.id,))
            other.execute("COMMIT")
            done += 1
        other.close()
        return done

    elsewhere = asyncio.ensure_future(asyncio.to_thread(write_elsewhere))
    try:
        for i in range(100):
            await store.commit([PutMessage.of(rec.id, Node(new_id("msg"), None, "user", f"m{i}", utcnow()))])
    finally:
        stop.set()
        others = await elsewhere
        loaded = await store.load_session(rec.id, events=0)
        await store.aclose()
    assert others > 0 and loaded is not None
    assert [n.content for n in loaded.nodes] == [f"m{i}" for i in range(100)]


async def test_group_commit_many_concurrent_callers(store: Any) -> None:
    records = [_record() for _ in range(300)]
    await asyncio.gather(*(store.commit([PutSession.of(r)]) for r in records))
    for r in records[::37]:
        assert await store.get_session(r.id) == r
    # A delete in the same batch as a late write wins.
    victim = records[0]
    await asyncio.gather(store.commit([RemoveSession(victim.id)]), store.commit([PutSession.of(victim)]))
    assert await store.get_session(victim.id) is None


async def test_list_filters_and_cursor(store: Any) -> None:
    made = []
    for i in range(6):
        r = _record(
            metadata={"team": "a" if i % 2 else "b", "n": i, "vip": i == 3}, end_user_id="u1" if i < 3 else None
        )
        r.last_active_at = f"2026-01-01T00:00:0{i}.000000Z"
        made.append(r)
    await store.commit([PutSession.of(r) for r in made])
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


@asynccontextmanager
async def _twin(store: Any) -> AsyncIterator[Any]:
    """A second store on the same database, as a second server process would open it."""
    other: Any = SqliteStore(store.path) if isinstance(store, SqliteStore) else PostgresStore(store.dsn)
    await other.open()
    try:
        yield other
    finally:
        await other.aclose()


# -- agents --------------------------------------------------------------------------------------


async def test_agents(store: Any) -> None:
    first = AgentRecord(
        id="agt_b", name="first", system_prompt="Be brief.", model=[RouteEntry("local", "m1")],
        tools=["search_documents"], temperature=0.5, created_at="2026-01-01T00:00:01.000000Z",
    )
    second = AgentRecord(id="agt_a", name="second", created_at="2026-01-01T00:00:02.000000Z")
    tie = AgentRecord(id="agt_0", name="same time as second", created_at=second.created_at)
    for agent in (second, first, tie):
        await store.put_agent(agent)
    assert await store.get_agent("agt_b") == first
    assert await store.get_agent("agt_missing") is None
    # Oldest first, the id breaking ties.
    assert [a.id for a in await store.list_agents()] == ["agt_b", "agt_0", "agt_a"]
    # An update replaces the agent and keeps its place.
    edited = AgentRecord(
        id="agt_b", name="renamed", created_at=first.created_at, updated_at="2026-01-02T00:00:00.000000Z"
    )
    await store.put_agent(edited)
    assert await store.get_agent("agt_b") == edited
    assert [a.name for a in await store.list_agents()] == ["renamed", "same time as second", "second"]
    assert await store.delete_agent("agt_b") is True
    assert await store.delete_agent("agt_b") is False
    assert [a.id for a in await store.list_agents()] == ["agt_0", "agt_a"]


# -- documents and usage per end user --------------------------------------------------------------


def _doc(doc_id: str, created_at: str, end_user_id: str | None = None, sha256: str = "a" * 64) -> DocumentRecord:
    return DocumentRecord(
        id=doc_id, name=f"{doc_id}.md", size=10, content_type="text/markdown", kind="md",
        sha256=sha256, created_at=created_at, end_user_id=end_user_id, chars=7, shared=end_user_id is None,
    )


async def test_documents(store: Any) -> None:
    shared = _doc("doc_1", "2026-01-01T00:00:01.000000Z")
    mine = _doc("doc_2", "2026-01-01T00:00:02.000000Z", end_user_id="u1")
    theirs = _doc("doc_3", "2026-01-01T00:00:03.000000Z", end_user_id="u2", sha256="b" * 64)
    tie = _doc("doc_4", mine.created_at, end_user_id="u1")
    for doc, text in ((shared, "shared text"), (mine, "my text"), (theirs, "their text"), (tie, "ünïcode ✓")):
        await store.put_document(doc, text)
    assert await store.get_document("doc_2") == mine
    assert await store.get_document("doc_missing") is None

    # Newest first, the id breaking ties; an end user sees their own and the shared ones.
    assert ids(await store.list_documents(None, limit=10, offset=0)) == ["doc_3", "doc_4", "doc_2", "doc_1"]
    assert ids(await store.list_documents("u1", limit=10, offset=0)) == ["doc_4", "doc_2", "doc_1"]
    assert ids(await store.list_documents("u2", limit=10, offset=0)) == ["doc_3", "doc_1"]
    assert ids(await store.list_documents("u1", limit=2, offset=1)) == ["doc_2", "doc_1"]
    assert await store.list_documents("u3", limit=10, offset=10) == []

    # Texts come back in the order asked, without the missing ones.
    texts = await store.document_texts(["doc_4", "doc_missing", "doc_1"])
    assert texts == [(tie, "ünïcode ✓"), (shared, "shared text")]
    assert await store.document_texts([]) == []

    assert await store.count_documents_with_hash("a" * 64) == 3
    assert await store.delete_document("doc_2") is True
    assert await store.delete_document("doc_2") is False
    assert await store.get_document("doc_2") is None
    assert await store.count_documents_with_hash("a" * 64) == 2
    assert await store.count_documents_with_hash("c" * 64) == 0


async def test_end_user_usage(store: Any) -> None:
    assert await store.end_user_usage("u1") == (0, Usage())
    a = _record(end_user_id="u1", usage=Usage(10, 5, 15))
    b = _record(end_user_id="u1", namespace="other", usage=Usage(1, 2, 3))
    c = _record(end_user_id="u2", usage=Usage(100, 100, 200))
    await store.commit([PutSession.of(r) for r in (a, b, c)])
    assert await store.end_user_usage("u1") == (2, Usage(11, 7, 18))
    await store.commit([RemoveSession(a.id)])  # only existing sessions count
    assert await store.end_user_usage("u1") == (1, Usage(1, 2, 3))


# -- session tokens ----------------------------------------------------------------------------------


def _family(session_id: str = "ses_1") -> TokenFamilyRecord:
    return TokenFamilyRecord(
        id=new_id("tkf"), session_id=session_id, namespace="default", created_at=utcnow(),
        end_user_id="u1", guest_id="gst_1", key_id="key_1",
    )


def _token(family_id: str, expires_at: float, name: str | None = None) -> RefreshTokenRecord:
    return RefreshTokenRecord(name or new_id("hash"), family_id, utcnow(), expires_at)


async def test_refresh_rotation_reuse_and_expiry(store: Any) -> None:
    now = 1_000_000.0
    fam = _family()
    await store.put_token_family(fam, _token(fam.id, now + 60, "h1"))
    assert await store.get_token_family(fam.id) == fam
    assert await store.get_token_family("tkf_missing") is None

    out = await store.rotate_refresh_token("h1", _token("", now + 60, "h2"), now, "when-1")
    assert out.status == "rotated" and out.family == fam
    out = await store.rotate_refresh_token("h2", _token("", now + 60, "h3"), now + 1, "when-2")
    assert out.status == "rotated"
    assert (await store.rotate_refresh_token("nope", _token("", now + 60), now, "w")).status == "unknown"

    # h1 was rotated already: someone holds a copy. The whole family ends, h3 with it.
    out = await store.rotate_refresh_token("h1", _token("", now + 60, "h4"), now + 2, "when-3")
    assert out.status == "reused" and out.family is not None and out.family.revoked_at == "when-3"
    revoked = await store.get_token_family(fam.id)
    assert revoked is not None and revoked.revoked_at == "when-3" and revoked.session_id == "ses_1"
    assert (await store.rotate_refresh_token("h3", _token("", now + 60), now + 3, "w")).status == "unknown"
    assert (await store.rotate_refresh_token("h4", _token("", now + 60), now + 3, "w")).status == "unknown"

    # An expired token is refused and stays unused; a used token is forgotten once it would have expired.
    other = _family()
    await store.put_token_family(other, _token(other.id, now + 10, "e1"))
    out = await store.rotate_refresh_token("e1", _token("", now + 100, "e2"), now + 10, "w")
    assert out.status == "expired" and out.family == other
    assert (await store.get_token_family(other.id)).revoked_at is None
    fresh = _family()
    await store.put_token_family(fresh, _token(fresh.id, now + 10, "f1"))
    assert (await store.rotate_refresh_token("f1", _token("", now + 100, "f2"), now, "w")).status == "rotated"
    assert (await store.rotate_refresh_token("f2", _token("", now + 100, "f3"), now + 20, "w")).status == "rotated"
    # f1 expired at now + 10 and was swept by the rotation at now + 20: unknown, not a reuse.
    assert (await store.rotate_refresh_token("f1", _token("", now + 100), now + 21, "w")).status == "unknown"
    assert (await store.get_token_family(fresh.id)).revoked_at is None


async def test_a_family_rotates_at_most_so_many_times_since(store: Any) -> None:
    """Every rotated token is kept while it lives (to catch its reuse), so a refresh loop is
    bounded by rate: past ``at_most`` tokens made since ``since`` the rotation is refused, the
    presented token left unused; with fewer made since, it rotates."""
    now = 1_000_000.0
    fam = _family()
    await store.put_token_family(fam, _token(fam.id, now + 3600, "p0"))
    limit = RefreshLimit("2000-01-01T00:00:00.000000Z", 3)  # every token of it
    for i in range(2):
        out = await store.rotate_refresh_token(f"p{i}", _token("", now + 3600, f"p{i + 1}"), now, "w", limit=limit)
        assert out.status == "rotated"
    for _ in range(2):  # refused, and refused again: not a reuse
        out = await store.rotate_refresh_token("p2", _token("", now + 3600), now, "w", limit=limit)
        assert out.status == "rate_limited" and out.family is not None and out.family.revoked_at is None
    later = RefreshLimit(utcnow(), 3)  # the three were made before it
    out = await store.rotate_refresh_token("p2", _token("", now + 3600, "p3"), now, "w", limit=later)
    assert out.status == "rotated"
    assert (await store.rotate_refresh_token("p2", _token("", now + 3600), now, "w2")).status == "reused"


async def test_racing_rotations_of_one_token_rotate_it_once(store: Any) -> None:
    now = 1_000_000.0
    fam = _family()
    await store.put_token_family(fam, _token(fam.id, now + 60, "r1"))
    async with _twin(store) as other:
        outcomes = await asyncio.gather(
            *(s.rotate_refresh_token("r1", _token("", now + 60, f"r2-{i}"), now, f"w{i}")
              for i, s in enumerate([store, other] * 5))
        )
    statuses = sorted(o.status for o in outcomes)
    # One rotation wins; the next sees a used token (a copy) and revokes the family, whose
    # tokens are then gone for all the others.
    assert statuses == ["reused", "rotated"] + ["unknown"] * 8
    family = await store.get_token_family(fam.id)
    assert family is not None and family.revoked_at is not None
    winner = next(i for i, o in enumerate(outcomes) if o.status == "rotated")
    assert (await store.rotate_refresh_token(f"r2-{winner}", _token("", now + 60), now, "w")).status == "unknown"


async def test_revoke_session_tokens(store: Any) -> None:
    now = 1_000_000.0
    a, b, c = _family("ses_1"), _family("ses_1"), _family("ses_2")
    for fam in (a, b, c):
        await store.put_token_family(fam, _token(fam.id, now + 60, f"t-{fam.id}"))
    assert await store.revoke_session_tokens("ses_1") == 2
    assert await store.revoke_session_tokens("ses_1") == 0
    assert await store.get_token_family(a.id) is None and await store.get_token_family(b.id) is None
    assert (await store.rotate_refresh_token(f"t-{a.id}", _token("", now + 60), now, "w")).status == "unknown"
    assert (await store.rotate_refresh_token(f"t-{c.id}", _token("", now + 60), now, "w")).status == "rotated"


# -- guests ----------------------------------------------------------------------------------------


def _guest(namespace: str = "default", expires_at: float = 2_000_000.0) -> GuestRecord:
    return GuestRecord(new_id("gst"), namespace, utcnow(), expires_at)


async def test_guests_found_by_fingerprint_or_ip(store: Any) -> None:
    now = 1_000_000.0
    assert await store.find_guest("default", "ip-1", "fp-1", now) is None
    g, created = await store.find_or_create_guest("default", "ip-1", "fp-1", _guest(), now)
    assert created is True
    # Same browser on a new network; same network, new browser; no fingerprint at all.
    assert await store.find_or_create_guest("default", "ip-2", "fp-1", _guest(), now) == (g, False)
    assert await store.find_or_create_guest("default", "ip-1", "fp-2", _guest(), now) == (g, False)
    assert await store.find_or_create_guest("default", "ip-2", None, _guest(), now) == (g, False)
    # Each match linked the other witness: fp-2 alone, ip-2 alone now find the guest.
    assert await store.find_guest("default", None, "fp-2", now) == g
    assert await store.find_guest("default", "ip-2", None, now) == g
    assert await store.find_guest("default", "ip-9", "fp-1", now) == g
    assert await store.find_guest("default", "ip-9", None, now) is None
    assert await store.find_guest("default", None, None, now) is None
    assert await store.get_guest(g.id, now) == g
    assert await store.get_guest("gst_missing", now) is None

    # The fingerprint wins over the IP when they point at different guests.
    h, created = await store.find_or_create_guest("default", "ip-3", "fp-3", _guest(), now)
    assert created is True and h != g
    assert await store.find_guest("default", "ip-1", "fp-3", now) == h
    # Namespaces do not share guests.
    other, created = await store.find_or_create_guest("tenant", "ip-1", "fp-1", _guest("tenant"), now)
    assert created is True and other.namespace == "tenant" and other.id != g.id
    assert await store.find_guest("tenant", "ip-1", None, now) == other


async def test_expired_guests_are_not_found_and_make_way(store: Any) -> None:
    now = 1_000_000.0
    old, _ = await store.find_or_create_guest("default", "ip-1", "fp-1", _guest(expires_at=now + 10), now)
    assert await store.get_guest(old.id, now + 9) == old
    later = now + 10
    assert await store.get_guest(old.id, later) is None
    assert await store.find_guest("default", "ip-1", "fp-1", later) is None
    new, created = await store.find_or_create_guest("default", "ip-1", "fp-1", _guest(expires_at=later + 10), later)
    assert created is True and new.id != old.id
    assert await store.find_guest("default", "ip-1", None, later) == new
    # The expired one was swept: even asked about before its expiry, it is gone.
    assert await store.get_guest(old.id, now) is None


async def test_racing_visits_make_one_guest(store: Any) -> None:
    now = 1_000_000.0
    async with _twin(store) as other:
        # Same fingerprint, different IPs, from two processes at once.
        results = await asyncio.gather(
            *(s.find_or_create_guest("default", f"ip-{i}", "fp-1", _guest(), now)
              for i, s in enumerate([store, other] * 6))
        )
        assert sum(created for _, created in results) == 1
        assert len({g.id for g, _ in results}) == 1
        # Same IP, a new fingerprint each time.
        results = await asyncio.gather(
            *(s.find_or_create_guest("default", "ip-shared", f"fp-x{i}", _guest(), now)
              for i, s in enumerate([store, other] * 6))
        )
        assert sum(created for _, created in results) == 1
        assert len({g.id for g, _ in results}) == 1


# -- schema ----------------------------------------------------------------------------------------


async def test_postgres_schema_matches_sqlite_step_by_step(postgres_dsn: str, tmp_path: Path) -> None:
    assert len(PG_MIGRATIONS) == len(MIGRATIONS)
    lite = sqlite3.connect(tmp_path / "schema.db")
    conn = await asyncpg.connect(postgres_dsn)
    try:
        for step, (lite_sql, pg_sql) in enumerate(zip(MIGRATIONS, PG_MIGRATIONS, strict=True), start=1):
            lite.executescript(lite_sql)
            await conn.execute(pg_sql)
            names = [n for (n,) in lite.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            # SQLite's full-text index is tables (PostgreSQL's is GIN indexes, not compared here):
            # they are there from step 6 on, and the tables that hold data are compared as ever.
            search = {n for n in names if n in SEARCH_TABLES or n.startswith(tuple(f"{t}_" for t in SEARCH_TABLES))}
            assert bool(search) == (step >= 6), f"after step {step}"
            lite_tables = {
                name: [c[1] for c in lite.execute(f"PRAGMA table_info({name})")]
                for name in names
                if not name.startswith("sqlite_") and name not in search
            }
            pg_columns = await conn.fetch(
                "SELECT table_name, column_name FROM information_schema.columns"
                " WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"
            )
            pg_tables: dict[str, list[str]] = {}
            for row in pg_columns:
                pg_tables.setdefault(row[0], []).append(row[1])
            assert pg_tables == lite_tables, f"after step {step}"
    finally:
        lite.close()
        await conn.close()


async def test_postgres_upgrades_a_database_of_schema_1(postgres_dsn: str) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        # What a node of the previous release left behind: schema 1 and a session.
        await conn.execute(PG_MIGRATIONS[0])
        await conn.execute("CREATE TABLE sessiond_schema (version INTEGER NOT NULL)")
        await conn.execute("INSERT INTO sessiond_schema (version) VALUES (1)")
        rec = _record(title="kept")
        await conn.execute(
            "INSERT INTO sessions (id, namespace, end_user_id, last_active_at, body) VALUES ($1, $2, $3, $4, $5)",
            rec.id, rec.namespace, rec.end_user_id, rec.last_active_at, PutSession.of(rec).body.decode(),
        )
        stores = [PostgresStore(postgres_dsn) for _ in range(3)]
        await asyncio.gather(*(s.open() for s in stores))  # racing nodes, one migrates
        try:
            assert await conn.fetchval("SELECT version FROM sessiond_schema") == len(PG_MIGRATIONS)
            assert await conn.fetchval("SELECT count(*) FROM sessiond_schema") == 1
            assert await stores[1].get_session(rec.id) == rec
            await stores[0].put_agent(AgentRecord(id="agt_1", name="new", created_at=utcnow()))
            assert [a.name for a in await stores[2].list_agents()] == ["new"]
        finally:
            await asyncio.gather(*(s.aclose() for s in stores))
    finally:
        await conn.close()


def test_postgres_store_never_names_the_password() -> None:
    assert PostgresStore("postgresql://app:s3cret@db.example:5432/sessiond").path == (
        "postgresql://app@db.example:5432/sessiond"
    )
    assert PostgresStore("postgresql://app@db/sessiond").path == "postgresql://app@db/sessiond"


# -- text holding U+0000 ----------------------------------------------------------------------------


async def test_text_with_nul_characters(store: Any) -> None:
    """SQLite keeps U+0000; PostgreSQL text cannot, so it keeps U+FFFD, and finds it again by the same text."""

    def kept(value: str) -> str:
        return value.replace("\x00", "\ufffd") if isinstance(store, PostgresStore) else value

    odd = _record(title="a\x00b", namespace="n\x00s", end_user_id="u\x00", metadata={"k": "v\x00"})
    plain = _record(title="plain")
    # Written in one batch: the odd one must not fail its neighbour.
    await asyncio.gather(store.commit([PutSession.of(odd)]), store.commit([PutSession.of(plain)]))
    assert await store.get_session(plain.id) == plain
    got = await store.get_session(odd.id)
    assert got is not None and got.title == kept("a\x00b") and got.end_user_id == kept("u\x00")
    assert got.metadata == {"k": kept("v\x00")}
    assert ids(await store.list_sessions(SessionQuery(namespace="n\x00s", end_user_id="u\x00"))) == [odd.id]
    assert (await store.end_user_usage("u\x00"))[0] == 1
    # A message, a checkpoint and a summary holding U+0000, in one batch with a neighbour's.
    question = Node(new_id("msg"), None, "user", "q \x00", utcnow())
    mark = Checkpoint(new_id("ckp"), question.id, utcnow(), "label \x00")
    summary = ContextSummary(
        id=new_id("sum"), through_id=question.id, digest="d", content="gist \x00", created_at=utcnow()
    )
    await asyncio.gather(
        store.commit([PutMessage.of(odd.id, question), PutCheckpoint.of(odd.id, mark), PutSummary.of(odd.id, summary)]),
        store.commit([PutMessage.of(plain.id, Node(new_id("msg"), None, "user", "fine", utcnow()))]),
    )
    loaded = await store.load_session(odd.id, events=0)
    assert loaded is not None and [n.content for n in loaded.nodes] == [kept("q \x00")]
    assert [c.label for c in loaded.checkpoints] == ["label \x00"]  # plain text in both
    assert [(await store.load_session(plain.id, events=0)).nodes[0].content] == ["fine"]
    # In a body alone (the owner's fields plain), as SQLite writes most commits.
    await store.commit([PutMessage.of(plain.id, Node(new_id("msg"), None, "user", "nul \x00 here", utcnow()))])
    assert (await store.load_session(plain.id, events=0)).nodes[1].content == kept("nul \x00 here")

    shared = _doc("doc_shared", utcnow())
    own = _doc("doc_own", utcnow(), end_user_id="u\x00")
    await store.put_document(shared, "text")
    await store.put_document(own, "text")
    assert ids(await store.list_documents("u\x00", limit=10, offset=0)) == ["doc_own", "doc_shared"]
    guest, created = await store.find_or_create_guest("n\x00", "ip", None, _guest("n\x00"), 0.0)
    assert created is True and await store.find_guest("n\x00", "ip", None, 0.0) == GuestRecord(
        guest.id, kept("n\x00"), guest.created_at, guest.expires_at
    )

    # Ids that were never stored are simply not found.
    assert await store.get_session("ses_\x00") is None
    assert await store.load_session("ses_\x00", events=5) is None
    assert await store.load_events("ses_\x00", 0, 5) == []
    assert await store.get_agent("agt_\x00") is None
    assert await store.delete_agent("agt_\x00") is False
    assert await store.get_document("doc_\x00") is None
    assert await store.document_texts(["doc_\x00"]) == []
    assert await store.delete_document("doc_\x00") is False
    assert await store.get_api_key("key_\x00") is None
    assert await store.get_token_family("tkf_\x00") is None
    assert await store.revoke_session_tokens("ses_\x00") == 0
    assert await store.get_guest("gst_\x00", 0.0) is None


@asynccontextmanager
async def _registries(
    *stores: Any, provider: SimulatedProvider | None = None, settings: ActorSettings | None = None
) -> AsyncIterator[list[Registry]]:
    """A started registry on each store (a node each, without a cluster), drained on the way out."""
    model = provider or SimulatedProvider(tokens_per_second=0, reply_tokens=3)
    registries = [
        Registry(s, model, settings=settings or ActorSettings(), idle_seconds=60, frame=sse.frame) for s in stores
    ]
    for registry in registries:
        await registry.start()
    try:
        yield registries
    finally:
        for registry in registries:
            await registry.drain()


async def test_a_commit_after_the_store_closed_is_a_503_stop_not_a_crash(store: Any) -> None:
    """During shutdown a late change gets 503 (retry elsewhere), and its session stops
    cleanly: no crash is counted, no restart is attempted."""
    async with _registries(store) as (registry,):
        record = await registry.create(Registry.new_record(namespace="default"))
        actor = await registry.get(record.id)
        assert isinstance(actor, SessionActor)
        await store.aclose()
        with pytest.raises(StoreClosedError) as late:
            await actor.ask(PatchSession(title="too late"))
        assert late.value.status == 503 and late.value.retry_after == 1
        assert isinstance(late.value, ActorStoppedError)  # the edge's retry looks the session up again
        await asyncio.wait_for(actor.wait_stopped(), 5)
        assert actor.stop_reason == "store closed"
        assert registry.stats.crashes == 0 and record.id not in registry


# -- lease epochs: a stale writer is refused -------------------------------------------------------


async def test_a_commit_under_a_stale_lease_epoch_is_refused_whole(store: Any) -> None:
    """Each claim advances the session's epoch; a commit fenced with an older one writes
    nothing at all (not its messages, events or session row), while the callers sharing its
    transaction commit as ever."""
    rec = _record(title="before")
    other = _record()
    await store.commit([PutSession.of(rec), PutSession.of(other)])
    assert await store.claim_epoch("ses_missing") is None
    first = await store.claim_epoch(rec.id)
    second = await store.claim_epoch(rec.id)
    assert first is not None and second == first + 1

    stale_node = Node(new_id("msg"), None, "user", "stale", utcnow())
    rec.title = "stale"
    stale = store.commit([
        Fence(rec.id, first),
        PutMessage.of(rec.id, stale_node),
        PutEvent(rec.id, StoredEvent(1, "task.started", b"{}")),
        PutSession.of(rec),
    ])
    neighbour = store.commit([PutMessage.of(other.id, Node(new_id("msg"), None, "user", "fine", utcnow()))])
    results = await asyncio.gather(stale, neighbour, return_exceptions=True)
    assert isinstance(results[0], FencedError) and results[1] is None
    assert results[0].status == 503 and isinstance(results[0], ActorStoppedError)
    loaded = await store.load_session(rec.id, events=10)
    assert loaded is not None
    assert loaded.nodes == [] and loaded.events == [] and loaded.record.title == "before"
    assert [n.content for n in (await store.load_session(other.id, events=0)).nodes] == ["fine"]

    # The current epoch writes; so does the next claim's, and then the current one is stale.
    rec.title = "current"
    await store.commit([Fence(rec.id, second), PutSession.of(rec)])
    assert (await store.get_session(rec.id)).title == "current"
    await store.claim_epoch(rec.id)
    with pytest.raises(FencedError):
        await store.commit([Fence(rec.id, second), RemoveSession(rec.id)])
    assert await store.get_session(rec.id) is not None, "a stale delete removes nothing"

    # A claim made with a write under the epoch it replaces (queued together): the claim first.
    current = second + 1
    together: tuple[Any, ...] = await asyncio.gather(
        store.claim_epoch(rec.id), store.commit([Fence(rec.id, current), RemoveSession(rec.id)]), return_exceptions=True
    )
    claimed, late = together
    assert claimed == current + 1 and isinstance(late, FencedError)
    assert await store.get_session(rec.id) is not None


@pytest.fixture(params=["sqlite", "postgres"])
async def two_stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Any, Any]]:
    """Two nodes' stores on one database."""
    dsn = await _pg_database() if request.param == "postgres" else None
    stores: list[Any] = [
        SqliteStore(tmp_path / "shared.db") if dsn is None else PostgresStore(dsn) for _ in range(2)
    ]
    for s in stores:
        await s.open()
    try:
        yield stores[0], stores[1]
    finally:
        for s in stores:
            await s.aclose()
        if dsn is not None:
            await _drop(dsn)


async def test_an_actor_activated_elsewhere_since_is_refused_and_stops(two_stores: tuple[Any, Any]) -> None:
    """Node A activated a session, then node B did (A stalled past its lease, say). A's next
    change is refused: A's caller gets 503, A's actor stops (its streams end) and writes
    nothing; B serves the session with nothing of A's stale change in it."""
    async with _registries(*two_stores) as (a, b):
        record = await a.create(Registry.new_record(namespace="default"))
        stale = await a.get(record.id)
        assert isinstance(stale, SessionActor)
        sub = await stale.ask(Subscribe(None))
        fresh = await b.get(record.id)
        assert isinstance(fresh, SessionActor) and fresh.epoch > stale.epoch
        with pytest.raises(FencedError) as refused:
            await stale.ask(SendMessage("stale"))
        assert refused.value.status == 503
        await asyncio.wait_for(stale.wait_stopped(), 5)
        assert stale.stop_reason == "fenced" and record.id not in a and a.stats.crashes == 0
        assert await asyncio.wait_for(sub.next(None), 5) is CLOSED, "its stream ends"
        handle = await fresh.ask(SendMessage("fresh"))
        assert (await asyncio.wait_for(handle.done, 5)).status == "completed"
        loaded = await two_stores[1].load_session(record.id, events=100)
        assert loaded is not None
        assert [n.content for n in loaded.nodes if n.role == "user"] == ["fresh"]


async def test_a_new_sessions_first_use_needs_no_claim_and_no_load(store: Any) -> None:
    """A session's creation is its first activation (Registry.create): its actor starts at the
    epoch the new row holds (0) without a claim or a read, answers, and writes under it; once
    it passivates, the next activation claims the next epoch and loads what was written."""
    async with _registries(store) as (registry,):
        record = await registry.create(Registry.new_record(namespace="default", title="new"))
        actor = await registry.get(record.id)
        assert isinstance(actor, SessionActor) and actor.epoch == 0
        assert actor.record.title == "new" and actor.record.version == record.version
        handle = await actor.ask(SendMessage("hello"))
        assert (await asyncio.wait_for(handle.done, 5)).status == "completed"
        assert await actor.ask(Passivate(0)) is True
        await asyncio.wait_for(actor.wait_stopped(), 5)
        again = await registry.get(record.id)
        assert isinstance(again, SessionActor) and again.epoch == 1, "nothing claimed before: 0 was the creation's"
        assert [n.role for n in again.tree.nodes.values()] == ["user", "assistant"]


async def test_a_new_session_activated_elsewhere_first_fences_its_creators_actor(
    two_stores: tuple[Any, Any],
) -> None:
    """Created on node A, used first on node B (a second process on the same database): B claims
    an epoch, so A's first use, which starts at the creation's epoch 0 without a claim, is
    refused at its first write (503, nothing written) and stops; A's next use claims again."""
    async with _registries(*two_stores) as (a, b):
        record = await a.create(Registry.new_record(namespace="default"))
        elsewhere = await b.get(record.id)
        assert isinstance(elsewhere, SessionActor) and elsewhere.epoch == 1
        here = await a.get(record.id)
        assert isinstance(here, SessionActor) and here.epoch == 0
        with pytest.raises(FencedError):
            await here.ask(SendMessage("from A"))
        await asyncio.wait_for(here.wait_stopped(), 5)
        assert here.stop_reason == "fenced"
        handle = await elsewhere.ask(SendMessage("from B"))
        assert (await asyncio.wait_for(handle.done, 5)).status == "completed"
        later = await a.get(record.id)
        assert isinstance(later, SessionActor) and later.epoch == 2
        assert [n.content for n in later.tree.nodes.values() if n.role == "user"] == ["from B"]


async def test_only_so_many_new_sessions_are_kept_for_their_first_use(tmp_path: Path) -> None:
    """The registry keeps the newest 1 024 sessions it created, and 4 MiB of their bodies at
    most, for a first use without a claim; an older one activates as any other session, by a
    claim and a load (large system prompts cannot make the registry hold more)."""
    store = SqliteStore(tmp_path / "store.db")
    await store.open()
    try:
        async with _registries(store) as (registry,):
            ids = [(await registry.create(Registry.new_record(namespace="default"))).id for _ in range(1025)]
            oldest, second, newest = [await registry.get(sid) for sid in (ids[0], ids[1], ids[-1])]
            assert isinstance(oldest, SessionActor) and oldest.epoch == 1, "forgotten: claimed"
            assert isinstance(second, SessionActor) and second.epoch == 0
            assert isinstance(newest, SessionActor) and newest.epoch == 0
            large = [
                (await registry.create(Registry.new_record(namespace="default", system_prompt=f"{i}" * 900_000))).id
                for i in range(5)
            ]
            first, last = [await registry.get(sid) for sid in (large[0], large[-1])]
            assert isinstance(first, SessionActor) and first.epoch == 1, "past 4 MiB: forgotten, claimed"
            assert isinstance(last, SessionActor) and last.epoch == 0
            assert first.record.system_prompt == "0" * 900_000 and last.record.system_prompt == "4" * 900_000
    finally:
        await store.aclose()


async def test_a_stale_actors_running_answer_ends_503_and_its_fold_is_refused(two_stores: tuple[Any, Any]) -> None:
    """Node A streams an answer when node B takes the session. A's next fold of the answer's
    text is refused: the send waiting on A's task gets 503, its stream ends, and the answer
    stays as B stored it (interrupted), never overwritten by A."""
    provider = SimulatedProvider(tokens_per_second=50, reply_tokens=500)
    async with _registries(*two_stores, provider=provider, settings=ActorSettings(fold_seconds=0.05)) as (a, b):
        record = await a.create(Registry.new_record(namespace="default"))
        stale = await a.get(record.id)
        assert isinstance(stale, SessionActor)
        handle = await stale.ask(SendMessage("long", stream=True))
        assert handle.subscription is not None
        first = await asyncio.wait_for(handle.subscription.next(None), 5)
        assert isinstance(first, list), "the answer streams"
        fresh = await b.get(record.id)  # takes the session; A's turn runs on
        assert isinstance(fresh, SessionActor)
        with pytest.raises(ActorStoppedError) as waiting:
            await asyncio.wait_for(handle.done, 5)
        assert waiting.value.status == 503
        await asyncio.wait_for(stale.wait_stopped(), 5)
        assert stale.stop_reason == "fenced"
        while (batch := await asyncio.wait_for(handle.subscription.next(None), 5)) is not CLOSED:
            assert isinstance(batch, list), "its stream ends, no reset, no heartbeat"
        loaded = await two_stores[1].load_session(record.id, events=100)
        assert loaded is not None
        reply = loaded.nodes[-1]
        assert reply.role == "assistant" and reply.status == "interrupted", "as B stored it"
        assert not loaded.record.running


async def test_a_commit_is_visible_to_the_next_read_while_other_reads_run(store: Any) -> None:
    """Read your writes under concurrent reads: a session is found right after its commit is
    acknowledged, however many reads share the store's reader meanwhile (on SQLite they once
    joined each other's read transaction and kept a snapshot from before the commit: 404s on
    sessions just created, under load)."""
    stop = asyncio.Event()

    async def reader() -> None:
        while not stop.is_set():
            await store.list_sessions(SessionQuery(limit=50))

    readers = [asyncio.create_task(reader()) for _ in range(8)]
    missing = []
    try:
        for _ in range(500):
            record = _record()
            await store.commit([PutSession.of(record)])
            if await store.get_session(record.id) is None:
                missing.append(record.id)
    finally:
        stop.set()
        await asyncio.gather(*readers)
    assert missing == []


async def _wal_pages_after_writing(path: Path, checkpoint_seconds: float) -> int:
    """Write about 3 000 pages of messages through a store; the log's size in pages after."""
    store = SqliteStore(path, checkpoint_seconds=checkpoint_seconds)
    await store.open()
    try:
        rec = _record()
        await store.commit([PutSession.of(rec)])
        for _ in range(30):
            nodes = [Node(new_id("msg"), None, "user", "x" * 40_000, utcnow()) for _ in range(10)]
            await store.commit([PutMessage.of(rec.id, n) for n in nodes])
        wal = path.with_name(path.name + "-wal")
        return wal.stat().st_size // 4096
    finally:
        await store.aclose()


async def test_group_commits_leave_the_write_ahead_log_to_the_checkpointer(tmp_path: Path) -> None:
    # SQLite's own: a commit that crosses 1000 pages of log folds it (the log stays near that).
    by_the_writer = await _wal_pages_after_writing(tmp_path / "auto.db", 0)
    # With the checkpointer (its first run an hour away here), no commit folds the log.
    beside = await _wal_pages_after_writing(tmp_path / "beside.db", 3600)
    assert by_the_writer < 1500 < 2500 < beside, (by_the_writer, beside)
    # Nothing written is lost by leaving the log to it.
    with sqlite3.connect(tmp_path / "beside.db") as db:
        assert db.execute("SELECT COUNT(*) FROM messages").fetchone() == (300,)


async def test_the_write_ahead_log_gives_its_disk_back_when_it_starts_again(tmp_path: Path) -> None:
    """A burst grows the log file; once it is folded, the commit that starts it again cuts it
    back to ``wal_size_limit`` bytes (SQLite's own never shrinks it)."""
    sizes = {}
    for name, limit in (("kept", -1), ("cut", 1 << 20)):
        path = tmp_path / f"{name}.db"
        store = SqliteStore(path, checkpoint_seconds=3600, wal_size_limit=limit)  # passes run here
        await store.open()
        checkpointer = store._checkpointer
        assert checkpointer is not None
        ckpt = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            rec = _record()
            await store.commit([PutSession.of(rec)])
            for _ in range(30):  # about 3 000 pages of log
                nodes = [Node(new_id("msg"), None, "user", "x" * 40_000, utcnow()) for _ in range(10)]
                await store.commit([PutMessage.of(rec.id, n) for n in nodes])
            wal = path.with_name(path.name + "-wal")
            burst = wal.stat().st_size
            await asyncio.to_thread(checkpointer.run_once, ckpt)
            await store.commit([PutSession.of(rec)])  # folds the rest, and starts the log again
            sizes[name] = (burst, wal.stat().st_size)
        finally:
            ckpt.close()
            await store.aclose()
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT COUNT(*) FROM messages").fetchone() == (300,)
    assert sizes["kept"][0] > 10 << 20 and sizes["kept"][1] == sizes["kept"][0], sizes
    assert sizes["cut"][0] > 10 << 20 and sizes["cut"][1] <= 1 << 20, sizes


async def test_the_write_ahead_log_starts_again_under_steady_writes(tmp_path: Path) -> None:
    """SQLite writes its log from the start again only at a commit that finds all of it folded.
    Under steady load a checkpoint pass never folds all of it: commits add frames while it
    copies. A reader's snapshot, held through each pass here, leaves the pass the same unfolded
    tail, without a race; the tail is folded by the writer before its next commit."""
    path = tmp_path / "steady.db"
    store = SqliteStore(path, checkpoint_seconds=3600)  # its passes are run by the test
    await store.open()
    checkpointer = store._checkpointer
    assert checkpointer is not None
    wal = path.with_name(path.name + "-wal")
    ckpt = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    reader = sqlite3.connect(path, isolation_level=None)
    sizes = []
    try:
        rec = _record()
        await store.commit([PutSession.of(rec)])
        for _ in range(10):
            for i in range(3):  # about 100 pages each
                nodes = [Node(new_id("msg"), None, "user", "x" * 40_000, utcnow()) for _ in range(10)]
                await store.commit([PutMessage.of(rec.id, n) for n in nodes])
                if i == 0:
                    reader.execute("BEGIN")
                    reader.execute("SELECT COUNT(*) FROM messages").fetchone()
            await asyncio.to_thread(checkpointer.run_once, ckpt)
            reader.execute("COMMIT")
            sizes.append(wal.stat().st_size // 4096)
    finally:
        ckpt.close()
        reader.close()
        await store.aclose()
    # About 3 000 pages went through the log; it started again at the first commit of each round.
    assert max(sizes) < 800, sizes
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM messages").fetchone() == (300,)


# -- search: what the stores index --------------------------------------------------------


def _fts_consistent(path: Path) -> None:
    """FTS5's own check that its index holds exactly the text of the rows of its content view."""
    db = sqlite3.connect(path)
    try:
        db.execute("INSERT INTO message_fts (message_fts, rank) VALUES ('integrity-check', 1)")
    finally:
        db.close()


async def _found(store: Any, *terms: str) -> list[tuple[str, list[str]]]:
    """(session id, matching message ids) of each hit of a search for ``terms``."""
    return [(h.session.id, h.message_ids) for h in await store.search_sessions(SearchQuery(list(terms)))]


async def test_an_answer_being_written_is_searchable_once_it_ends(store: Any) -> None:
    """Readers see an answer's content empty while it is written; search does not show more:
    neither its start nor the folds of its text so far are indexed, only what it ends with.
    After that it follows the message's text as before, and its session's delete."""
    now = utcnow()
    record = SessionRecord(id=new_id("ses"), namespace="default", created_at=now, last_active_at=now)
    question = Node(new_id("msg"), None, "user", "what colour is the aurora", now)
    reply = Node(new_id("msg"), question.id, "assistant", "", now, status="running", task_id="tsk_1")
    await store.commit([PutSession.of(record), PutMessage.of(record.id, question), PutMessage.of(record.id, reply)])

    def answer(content: str, status: NodeStatus) -> PutMessage:
        return PutMessage.of(record.id, msgspec.structs.replace(reply, content=content, status=status))

    await store.commit([answer("the aurora borealis glows", "running")])  # a fold
    await store.commit([answer("the aurora borealis glows green over", "running")])
    assert await _found(store, "borealis") == []
    assert await _found(store, "aurora") == [(record.id, [question.id])]

    await store.commit([answer("the aurora borealis glows green over the fjord", "completed")])
    assert await _found(store, "borealis", "fjord") == [(record.id, [reply.id])]
    assert sorted((await _found(store, "aurora"))[0][1]) == sorted([question.id, reply.id])

    await store.commit([answer("it was orange tonight", "completed")])  # its text replaced
    assert await _found(store, "borealis") == []
    assert await _found(store, "orange") == [(record.id, [reply.id])]

    # A session deleted while its answer is written: nothing of that answer was indexed.
    other = SessionRecord(id=new_id("ses"), namespace="default", created_at=now, last_active_at=now)
    running = Node(new_id("msg"), None, "assistant", "halfway through a tangerine", now, status="running")
    await store.commit([PutSession.of(other), PutMessage.of(other.id, running)])
    await store.commit([RemoveSession(other.id), RemoveSession(record.id)])
    assert await _found(store, "tangerine") == [] and await _found(store, "orange") == []
    if isinstance(store, SqliteStore):
        _fts_consistent(store.path)


def _old_sqlite_store(
    path: Path,
    steps: int,
    sessions: list[SessionRecord],
    rows: list[tuple[str, Node | Checkpoint | StoredEvent]],
) -> None:
    """A database as schema ``steps`` left it: ``sessions`` and then ``rows`` (each with its
    session's id) written in the order given, indexed as that schema indexed them."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        for number, script in enumerate(MIGRATIONS[:steps], start=1):
            db.executescript(f"BEGIN;\n{script}\nPRAGMA user_version={number};\nCOMMIT;")
        for session in sessions:
            put = PutSession.of(session)
            db.execute(
                "INSERT INTO sessions (id, namespace, end_user_id, last_active_at, body) VALUES (?, ?, ?, ?, ?)",
                (put.id, put.namespace, put.end_user_id, put.last_active_at, put.body),
            )
        for sid, row in rows:
            match row:
                case Node():
                    db.execute("INSERT INTO messages (id, session_id, body) VALUES (?, ?, ?)",
                               (row.id, sid, PutMessage.of(sid, row).body))
                case Checkpoint():
                    db.execute("INSERT INTO checkpoints (id, session_id, body) VALUES (?, ?, ?)",
                               (row.id, sid, PutCheckpoint.of(sid, row).body))
                case StoredEvent():
                    db.execute("INSERT INTO events (session_id, seq, type, data) VALUES (?, ?, ?, ?)",
                               (sid, row.seq, row.type, row.data))
    finally:
        db.close()


async def test_an_upgraded_sqlite_store_forgets_the_running_text_it_had_indexed(tmp_path: Path) -> None:
    """Schema 11 indexed an answer's folds. The upgrade takes a running answer's text out of the
    index (exactly what was indexed: FTS5's check passes), keeps the settled ones, and the
    answer is found once it ends."""
    path = tmp_path / "store.db"
    now = utcnow()
    record = SessionRecord(id=new_id("ses"), namespace="default", created_at=now, last_active_at=now)
    question = Node(new_id("msg"), None, "user", "tell me of the kestrel", now)
    reply = Node(new_id("msg"), question.id, "assistant", "a kestrel hovers", now, status="running")
    _old_sqlite_store(path, 11, [record], [(record.id, question), (record.id, reply)])
    store = SqliteStore(path)
    await store.open()
    try:
        assert len(MIGRATIONS) > 11
        assert await _found(store, "hovers") == []
        assert await _found(store, "kestrel") == [(record.id, [question.id])]
        _fts_consistent(path)
        ended = msgspec.structs.replace(reply, content="a kestrel hovers, then dives", status="interrupted")
        await store.commit([PutMessage.of(record.id, ended)])
        assert await _found(store, "dives") == [(record.id, [reply.id])]
    finally:
        await store.aclose()
    _fts_consistent(path)


async def test_an_upgraded_sqlite_store_reads_its_rows_as_before(tmp_path: Path) -> None:
    """Schema 13 drops the per-session position indexes and rewrites the events in the order
    they were written. A schema-12 store of two sessions whose rows were written interleaved
    reads each session back as before: its messages and checkpoints in the order written (not
    their ids' order), its newest events, its highest id; and what is written after goes on."""
    path = tmp_path / "store.db"
    now = utcnow()
    sessions = [SessionRecord(id=new_id("ses"), namespace="default", created_at=now, last_active_at=now)
                for _ in range(2)]
    rows: list[tuple[str, Node | Checkpoint | StoredEvent]] = []
    written: dict[str, tuple[list[str], list[str]]] = {s.id: ([], []) for s in sessions}
    for turn in range(6):
        for session in sessions:
            messages, checkpoints = written[session.id]
            node = Node(new_id("msg"), messages[-1] if messages else None, "user", f"turn {turn}", now)
            cp = Checkpoint(new_id("ckp"), node.id, now, "answer")
            event = StoredEvent(turn + 1, "message.completed", b'{"turn": %d}' % turn)
            rows += [(session.id, node), (session.id, cp), (session.id, event)]
            messages.append(node.id)
            checkpoints.append(cp.id)
    _old_sqlite_store(path, 12, sessions, rows)
    store = SqliteStore(path)
    await store.open()
    try:
        for session in sessions:
            loaded = await store.load_session(session.id, events=3)
            assert loaded is not None
            assert ([n.id for n in loaded.nodes], [c.id for c in loaded.checkpoints]) == written[session.id]
            assert [(e.seq, e.data) for e in loaded.events] == [(seq, b'{"turn": %d}' % (seq - 1)) for seq in (4, 5, 6)]
            assert loaded.max_seq == 6
        first = sessions[0].id
        later = Node(new_id("msg"), written[first][0][-1], "user", "after the upgrade", now)
        await store.commit([PutMessage.of(first, later), PutEvent(first, StoredEvent(7, "task.started", b"{}"))])
        loaded = await store.load_session(first, events=2)
        assert loaded is not None
        assert [n.id for n in loaded.nodes] == [*written[first][0], later.id]
        assert [e.seq for e in loaded.events] == [6, 7]
        assert [e.seq for e in await store.load_events(first, 4, 10)] == [5, 6, 7]
    finally:
        await store.aclose()
    db = sqlite3.connect(path)
    try:
        indexes = {row[1] for table in ("messages", "checkpoints") for row in db.execute(f"PRAGMA index_list({table})")}
        assert not indexes & {"messages_by_session", "checkpoints_by_session"}
        # In the order written: a table of rowids (WITHOUT ROWID has none), its key an index.
        assert db.execute("SELECT count(rowid) FROM events").fetchone() == (13,)
    finally:
        db.close()
