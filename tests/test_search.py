"""Search: every word, in titles and messages of any branch, for their owner only; correct
after edits, deletes and imports; an answer once it ends, not while it is written; on SQLite
and on PostgreSQL."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import TestClient

from actors.core.ids import new_id, utcnow
from actors.core.records import PutMessage, PutSession, RemoveSession, SessionRecord
from actors.core.search import SearchQuery
from actors.core.tree import Node, NodeStatus
from actors.store.migrations.sqlite import MIGRATIONS
from actors.store.postgres import PostgresStore
from actors.store.sqlite import SqliteStore
from tests.conftest import ClientFactory, new_session
from tests.pg import database

Client = TestClient[Any, Any]


@pytest.fixture(params=["sqlite", "postgres"])
async def client(request: Any, make_client: ClientFactory, tmp_path: Path) -> AsyncIterator[Client]:
    if request.param == "sqlite":
        yield await make_client()
        return
    async with database() as dsn:
        c = await make_client(store={"kind": "postgres", "postgres_dsn": dsn})
        yield c
        await c.close()  # before the database is dropped


async def _ok(resp: Any, status: int = 200) -> Any:
    assert resp.status == status, await resp.text()
    return await resp.json()


async def _search(client: Client, q: str, user: str | None = None, **params: str) -> list[dict[str, Any]]:
    headers = {"X-End-User-ID": user} if user else {}
    body = await _ok(await client.get("/v1/sessions/search", params={"q": q, **params}, headers=headers))
    return list(body["items"])


async def _send(client: Client, sid: str, content: str, user: str | None = None) -> dict[str, Any]:
    headers = {"X-End-User-ID": user} if user else {}
    body: dict[str, Any] = await _ok(
        await client.post(f"/v1/sessions/{sid}/messages", json={"content": content}, headers=headers)
    )
    return body


async def test_a_word_in_an_old_branch_is_found_for_its_owner_only(client: Client) -> None:
    mine = await new_session(client, end_user_id="u1", title="Island holiday planning")
    sid = mine["id"]
    sent = await _send(client, sid, "When does the night ferry to Zanzibar leave?", "u1")
    question_id = sent["message"]["parent_id"]
    # Edited: the ferry question is now on a branch that is not the active one.
    await _ok(await client.post(f"/v1/sessions/{sid}/messages/{question_id}/edit",
                                json={"content": "Which bus goes to the harbour?"}, headers={"X-End-User-ID": "u1"}))
    other = await new_session(client, end_user_id="u2", title="Zanzibar too")
    await _send(client, other["id"], "the ferry to zanzibar, please", "u2")

    found = await _search(client, "ferry zanzibar", "u1")
    assert [h["session"]["id"] for h in found] == [sid]
    assert question_id in found[0]["message_ids"]
    snippet = next(s for s in found[0]["snippets"] if s["message_id"] == question_id)["text"]
    assert "<mark>ferry</mark>" in snippet and "<mark>Zanzibar</mark>" in snippet

    # Every word must occur: "ferry" and "bicycle" are in no one message or title together.
    assert await _search(client, "ferry bicycle", "u1") == []
    # The other end user finds only theirs, by message and by title.
    theirs = await _search(client, "zanzibar", "u2")
    assert [h["session"]["id"] for h in theirs] == [other["id"]]
    assert theirs[0]["title"] == "<mark>Zanzibar</mark> too"
    # The title alone matches too.
    titled = await _search(client, "holiday", "u1")
    assert [h["session"]["id"] for h in titled] == [sid] and titled[0]["message_ids"] == []
    # An API key acting for nobody sees both; punctuation and case do not matter.
    assert {h["session"]["id"] for h in await _search(client, "ZANZIBAR?!")} == {sid, other["id"]}


async def test_search_follows_edits_deletes_and_imports(client: Client) -> None:
    s = await new_session(client, title="Quarterly budget")
    sid = s["id"]
    await _send(client, sid, "the marmalade invoice is late")
    assert [h["session"]["id"] for h in await _search(client, "marmalade")] == [sid]

    # A new title replaces the old one in the index.
    await _ok(await client.patch(f"/v1/sessions/{sid}", json={"title": "Yearly forecast"}))
    assert await _search(client, "quarterly") == []
    assert [h["session"]["id"] for h in await _search(client, "forecast")] == [sid]

    # An import is searchable at once, under its new id; a deleted session is gone.
    exported = await _ok(await client.get(f"/v1/sessions/{sid}/export"))
    imported = await _ok(await client.post("/v1/sessions/import?new_id=true", json=exported), 201)
    assert {h["session"]["id"] for h in await _search(client, "marmalade")} == {sid, imported["id"]}
    assert (await client.delete(f"/v1/sessions/{sid}")).status == 204
    assert [h["session"]["id"] for h in await _search(client, "marmalade")] == [imported["id"]]
    assert [h["session"]["id"] for h in await _search(client, "forecast")] == [imported["id"]]


async def test_sort_filters_and_pages(client: Client) -> None:
    ids = []
    for i, team in enumerate(["red", "blue", "red"]):
        s = await new_session(client, metadata={"team": team}, title=f"standup {i}")
        ids.append(s["id"])
    # Activity order: the first session is touched last.
    await _send(client, ids[0], "standup notes standup standup")

    by_created = [h["session"]["id"] for h in await _search(client, "standup", sort="created")]
    assert by_created == [ids[2], ids[1], ids[0]]
    by_active = [h["session"]["id"] for h in await _search(client, "standup", sort="last_active")]
    assert by_active[0] == ids[0]
    assert (await _search(client, "standup"))[0]["session"]["id"] == ids[0], "most matches ranks first"
    red = {h["session"]["id"] for h in await _search(client, "standup", **{"metadata.team": "red"})}
    assert red == {ids[0], ids[2]}

    page = await _ok(await client.get("/v1/sessions/search", params={"q": "standup", "limit": "2", "sort": "created"}))
    assert [h["session"]["id"] for h in page["items"]] == [ids[2], ids[1]] and page["has_more"] is True
    rest = await _ok(await client.get("/v1/sessions/search",
                                      params={"q": "standup", "limit": "2", "offset": "2", "sort": "created"}))
    assert [h["session"]["id"] for h in rest["items"]] == [ids[0]] and rest["has_more"] is False

    assert (await client.get("/v1/sessions/search", params={"q": " ?! "})).status == 422
    assert (await client.get("/v1/sessions/search", params={"q": "x", "sort": "size"})).status == 422


# -- the stores themselves: what is indexed --------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: Any, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "sqlite":
        s: Any = SqliteStore(tmp_path / "store.db")
        await s.open()
        try:
            yield s
        finally:
            await s.aclose()
        _fts_consistent(tmp_path / "store.db")
        return
    async with database() as dsn:
        s = PostgresStore(dsn)
        await s.open()
        try:
            yield s
        finally:
            await s.aclose()


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


def _schema_11_with_a_running_answer(path: Path, session: SessionRecord, nodes: list[Node]) -> None:
    """A database as schema 11 left it: ``nodes`` written (and indexed, running or not)."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        for number, script in enumerate(MIGRATIONS[:11], start=1):
            db.executescript(f"BEGIN;\n{script}\nPRAGMA user_version={number};\nCOMMIT;")
        put = PutSession.of(session)
        db.execute(
            "INSERT INTO sessions (id, namespace, end_user_id, last_active_at, body) VALUES (?, ?, ?, ?, ?)",
            (put.id, put.namespace, put.end_user_id, put.last_active_at, put.body),
        )
        for node in nodes:
            db.execute("INSERT INTO messages (id, session_id, body) VALUES (?, ?, ?)",
                       (node.id, session.id, PutMessage.of(session.id, node).body))
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
    _schema_11_with_a_running_answer(path, record, [question, reply])
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
