"""Hostile imports: ``POST /v1/sessions/import`` is untrusted input, on SQLite and PostgreSQL.

An import never links a document its caller cannot see, never writes or rewires another
session's rows (messages and checkpoints belong to their session), is insert-only (of two
concurrent imports of one id exactly one wins), recomputes usage, refuses unknown agents and
tools, dates that are not dates and anything past its bounds, and never tells an end user
whether a session id is taken.
"""

from __future__ import annotations

import asyncio
import copy
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import ClientFactory, new_session
from tests.pg import database

Client = TestClient[Any, Any]
U1, U2 = {"X-End-User-ID": "u1"}, {"X-End-User-ID": "u2"}
SECRET = "The vault code of the second tenant is 4471."


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, Any]]:
    """The [store] section of the server under attack (requested before make_client, so a
    PostgreSQL database is dropped only after the servers using it have stopped)."""
    if request.param == "sqlite":
        yield {"kind": "sqlite"}
        return
    async with database() as dsn:
        yield {"kind": "postgres", "postgres_dsn": dsn}


async def _json(resp: aiohttp.ClientResponse, status: int) -> Any:
    assert resp.status == status, await resp.text()
    return await resp.json(content_type=None)


async def _conversation(client: Client, headers: dict[str, str] | None = None, *texts: str) -> dict[str, Any]:
    s = await new_session(client) if headers is None else await _json(
        await client.post("/v1/sessions", json={}, headers=headers), 201
    )
    for text in texts:
        await _json(await client.post(f"/v1/sessions/{s['id']}/messages", json={"content": text}, headers=headers), 200)
    return s


async def _export(client: Client, session_id: str) -> dict[str, Any]:
    return await _json(await client.get(f"/v1/sessions/{session_id}/export"), 200)  # type: ignore[no-any-return]


async def _contents(client: Client, session_id: str) -> list[str]:
    page = await _json(await client.get(f"/v1/sessions/{session_id}/messages"), 200)
    return [m["content"] for m in page["items"]]


async def test_an_import_cannot_link_a_document_the_caller_cannot_see(
    store: dict[str, Any], make_client: ClientFactory
) -> None:
    client = await make_client(store=store)
    form = aiohttp.FormData()
    form.add_field("end_user_id", "u2")
    form.add_field("file", io.BytesIO(SECRET.encode()), filename="vault.txt", content_type="text/plain")
    theirs = await _json(await client.post("/v1/documents", data=form), 201)
    mine = await _conversation(client, U1, "hello")
    doc = await _export(client, mine["id"])
    doc["documents"] = [theirs["id"]]
    refused = await _json(await client.post("/v1/sessions/import?new_id=true", json=doc, headers=U1), 422)
    assert theirs["id"] in refused["detail"]
    # The same answer as for a document that does not exist: no oracle.
    doc["documents"] = ["doc_nowhere"]
    missing = await _json(await client.post("/v1/sessions/import", json=doc, headers=U1), 422)
    assert missing["title"] == refused["title"]
    listed = await _json(await client.get("/v1/sessions", headers=U1), 200)
    assert [s["id"] for s in listed["items"]] == [mine["id"]], "nothing was imported"
    # u2 may import it, and the operator too.
    doc["documents"] = [theirs["id"]]
    own = await _json(await client.post("/v1/sessions/import", json=doc, headers=U2), 201)
    linked = await _json(await client.get(f"/v1/sessions/{own['id']}/documents", headers=U2), 200)
    assert [d["id"] for d in linked["items"]] == [theirs["id"]]


async def test_an_import_reusing_ids_never_overwrites_or_rewires_another_session(
    store: dict[str, Any], make_client: ClientFactory, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    client = await make_client(data_dir, store=store)
    victim = await _conversation(client, None, "my diary, page one", "my diary, page two")
    before = await _export(client, victim["id"])
    victim_ids = [m["id"] for m in before["messages"]]
    victim_checkpoints = [c["id"] for c in before["checkpoints"]]

    attack = copy.deepcopy(before)
    attack["session"]["id"] = "ses_attacker"
    # The victim's first message becomes a child of a root only the attacker has: the victim's
    # tree would lose its root, and every route on it would fail.
    root = {**attack["messages"][0], "id": "msg_attacker_root", "content": "planted"}
    for m in attack["messages"]:
        m["content"] = "overwritten by the attacker"
    attack["messages"][0]["parent_id"] = root["id"]
    attack["messages"].insert(0, root)
    for c in attack["checkpoints"]:
        c["label"] = "overwritten"
    await _json(await client.post("/v1/sessions/import", json=attack), 201)

    # The victim reloads from the store (a restart), and finds its own rows.
    await client.close()
    client = await make_client(data_dir, store=store)
    after = await _export(client, victim["id"])
    assert after == before
    assert [m["id"] for m in after["messages"]] == victim_ids
    assert [c["id"] for c in after["checkpoints"]] == victim_checkpoints
    assert (await _json(await client.get(f"/v1/sessions/{victim['id']}/tree"), 200))["nodes"]
    # The attacker's copy is its own session, with its own rows under the same message ids.
    planted = await _contents(client, "ses_attacker")
    assert planted[0] == "planted" and set(planted[1:]) == {"overwritten by the attacker"}
    assert (await client.delete(f"/v1/sessions/{victim['id']}")).status == 204
    assert await _contents(client, "ses_attacker") == planted, "deleting one session leaves the other's rows"


async def test_two_concurrent_imports_of_one_id_one_wins_and_nothing_mixes(
    store: dict[str, Any], make_client: ClientFactory
) -> None:
    client = await make_client(store=store)
    a = await _export(client, (await _conversation(client, None, "tenant A writes"))["id"])
    b = await _export(client, (await _conversation(client, None, "tenant B writes", "and more"))["id"])
    for round_ in range(3):
        target = f"ses_contested_{round_}"
        docs = [copy.deepcopy(a), copy.deepcopy(b)]
        for d in docs:
            d["session"]["id"] = target
        answers = await asyncio.gather(*(client.post("/v1/sessions/import", json=d) for d in docs))
        assert sorted(r.status for r in answers) == [201, 409], [r.status for r in answers]
        stored = await _export(client, target)
        winner = docs[[r.status for r in answers].index(201)]
        assert [m["content"] for m in stored["messages"]] == [m["content"] for m in winner["messages"]]
        assert [m["id"] for m in stored["messages"]] == [m["id"] for m in winner["messages"]]


async def test_usage_is_recomputed_and_everything_is_validated(
    store: dict[str, Any], make_client: ClientFactory
) -> None:
    client = await make_client(store=store, server={"max_body_bytes": 8 << 20})
    s = await _conversation(client, U1, "count my tokens")
    doc = await _export(client, s["id"])
    honest = (await _json(await client.get("/v1/usage", headers=U1), 200))["usage"]
    assert honest["total"] > 0

    forged = copy.deepcopy(doc)
    forged["session"]["usage"] = {"prompt": -10_000_000, "completion": -9_998_924, "total": -19_998_924}
    imported = await _json(await client.post("/v1/sessions/import", json=forged, headers=U1), 201)
    again = await _export(client, imported["id"])
    assert again["session"]["usage"] == doc["session"]["usage"], "recomputed from the messages"
    billed = (await _json(await client.get("/v1/usage", headers=U1), 200))["usage"]
    assert billed["total"] == 2 * honest["total"]

    def variant(change: Any) -> dict[str, Any]:
        d = copy.deepcopy(doc)
        change(d)
        return d

    def deep(levels: int) -> dict[str, Any]:
        value: dict[str, Any] = {}
        for _ in range(levels):
            value = {"x": value}
        return value

    reply = next(i for i, m in enumerate(doc["messages"]) if m["role"] == "assistant")
    many = [{**doc["messages"][0], "id": f"msg_{i}", "parent_id": None} for i in range(10_001)]
    bad = {
        "a negative usage": variant(lambda d: d["messages"][reply].update(usage={"prompt": -5, "completion": 0,
                                                                                  "total": -5})),
        "an unknown agent": variant(lambda d: d["session"].update(agent_id="no-such-agent")),
        "an unknown tool": variant(lambda d: d["session"].update(tools=["rm_rf"])),
        "a session date that is no date": variant(lambda d: d["session"].update(created_at="yesterday")),
        "an impossible date": variant(lambda d: d["messages"][0].update(created_at="2026-13-45T25:61:00.000000Z")),
        "a checkpoint date that is no date": variant(lambda d: d["checkpoints"][0].update(created_at="soon")),
        "an unknown status": variant(lambda d: d["messages"][0].update(status="owned")),
        "metadata nested 40 levels": variant(lambda d: d["session"].update(metadata=deep(40))),
        "metadata of 100 kB": variant(lambda d: d["session"].update(metadata={"blob": "x" * 100_000})),
        "a message of 1 000 001 characters": variant(lambda d: d["messages"][0].update(content="y" * 1_000_001)),
        "10 001 messages": variant(lambda d: d.update(messages=many, checkpoints=[], active_leaf_id=None)),
    }
    for what, body in bad.items():
        # A file object: aiohttp warns that a large bytes body would block the loop.
        raw = io.BytesIO(json.dumps(body).encode())
        resp = await client.post(
            "/v1/sessions/import", data=raw, headers={**U1, "Content-Type": "application/json"}
        )
        assert resp.status == 422, f"{what}: {resp.status} {await resp.text()}"
        assert resp.headers["Content-Type"].startswith("application/problem+json")
    listed = await _json(await client.get("/v1/sessions", headers=U1), 200)
    assert len(listed["items"]) == 2, "nothing refused was stored"


async def test_an_end_user_always_gets_fresh_ids(store: dict[str, Any], make_client: ClientFactory) -> None:
    client = await make_client(store=store)
    theirs = await _conversation(client, U2, "u2's conversation")
    mine = await _conversation(client, U1, "u1's conversation")
    doc = await _export(client, mine["id"])
    theirs_before = await _contents(client, theirs["id"])
    answers = []
    for target in (theirs["id"], "ses_unused", mine["id"]):
        d = copy.deepcopy(doc)
        d["session"]["id"] = target
        resp = await client.post("/v1/sessions/import", json=d, headers=U1)
        answers.append(resp.status)
        if resp.status == 201:
            out = await resp.json()
            assert out["id"] not in (theirs["id"], "ses_unused", mine["id"]) and out["end_user_id"] == "u1"
    # Another user's id, an unused one and one's own answer alike: no existence oracle.
    assert answers == [201, 201, 201]
    assert await _contents(client, theirs["id"]) == theirs_before
    assert (await client.get("/v1/sessions/ses_unused")).status == 404


async def test_an_upgraded_database_keeps_its_rows_and_guest_uploads_become_private(
    store: dict[str, Any], make_client: ClientFactory, tmp_path: Path
) -> None:
    """Schema step 5 (rows keyed by session, documents with owners) on a database of step 3."""
    data_dir = tmp_path / "data"
    now = "2026-11-30T12:00:00.000000Z"

    def session(sid: str, **extra: Any) -> str:
        body = {"id": sid, "namespace": "default", "created_at": now, "last_active_at": now, **extra}
        return json.dumps(body)

    def document(doc_id: str, end_user_id: str | None) -> str:
        return json.dumps({
            "id": doc_id, "name": f"{doc_id}.txt", "size": 4, "content_type": "text/plain", "kind": "txt",
            "sha256": "a" * 64, "created_at": now, "end_user_id": end_user_id, "chars": 4,
        })

    node = json.dumps({"id": "msg_1", "parent_id": None, "role": "user", "content": "kept", "created_at": now})
    checkpoint = json.dumps({"id": "ckp_1", "message_id": "msg_1", "created_at": now, "label": "answer"})
    sessions = [
        ("ses_old", None, session("ses_old", active_leaf_id="msg_1", message_count=1)),
        ("ses_guest", None, session("ses_guest", is_guest=True, guest_id="gst_1", documents=["doc_guest"])),
    ]
    documents = [("doc_shared", None), ("doc_guest", None), ("doc_u1", "u1")]
    if store["kind"] == "sqlite":
        import sqlite3

        from actors.store.migrations.sqlite import MIGRATIONS

        data_dir.mkdir()
        db = sqlite3.connect(data_dir / "sessiond.db")
        for script in MIGRATIONS[:3]:
            db.executescript(script)
        db.executemany("INSERT INTO sessions VALUES (?, 'default', ?, '" + now + "', ?)", sessions)
        db.execute("INSERT INTO messages (id, session_id, body) VALUES ('msg_1', 'ses_old', ?)", (node,))
        db.execute("INSERT INTO checkpoints (id, session_id, body) VALUES ('ckp_1', 'ses_old', ?)", (checkpoint,))
        db.executemany(
            "INSERT INTO documents VALUES (?, ?, ?, ?, ?, 'text')",
            [(d, "a" * 64, u, now, document(d, u)) for d, u in documents],
        )
        db.execute("PRAGMA user_version = 3")
        db.commit()
        db.close()
    else:
        import asyncpg  # type: ignore[import-untyped]

        from actors.store.migrations.postgres import PG_MIGRATIONS

        conn = await asyncpg.connect(store["postgres_dsn"])
        try:
            for script in PG_MIGRATIONS[:3]:
                await conn.execute(script)
            await conn.execute("CREATE TABLE sessiond_schema (version INTEGER NOT NULL)")
            await conn.execute("INSERT INTO sessiond_schema (version) VALUES (3)")
            await conn.executemany(
                f"INSERT INTO sessions VALUES ($1, 'default', $2, '{now}', $3::jsonb)", sessions
            )
            await conn.execute("INSERT INTO messages (id, session_id, body) VALUES ('msg_1', 'ses_old', $1)", node)
            await conn.execute(
                "INSERT INTO checkpoints (id, session_id, body) VALUES ('ckp_1', 'ses_old', $1)", checkpoint
            )
            await conn.executemany(
                "INSERT INTO documents VALUES ($1, $2, $3, $4, $5, 'text')",
                [(d, "a" * 64, u, now, document(d, u)) for d, u in documents],
            )
        finally:
            await conn.close()

    client = await make_client(data_dir, store=store)
    assert await _contents(client, "ses_old") == ["kept"]
    checkpoints = await _json(await client.get("/v1/sessions/ses_old/checkpoints"), 200)
    assert [c["id"] for c in checkpoints["items"]] == ["ckp_1"]
    seen = await _json(await client.get("/v1/documents", headers=U1), 200)
    assert sorted(d["id"] for d in seen["items"]) == ["doc_shared", "doc_u1"], "the guest's upload is private now"
    every = await _json(await client.get("/v1/documents"), 200)
    assert {d["id"]: d["shared"] for d in every["items"]} == {"doc_shared": True, "doc_guest": False, "doc_u1": False}
    # New rows go in by (session, id): the old message id may now exist in another session too.
    doc = await _export(client, "ses_old")
    doc["session"]["id"] = "ses_new"
    await _json(await client.post("/v1/sessions/import", json=doc), 201)
    assert await _contents(client, "ses_new") == ["kept"] and await _contents(client, "ses_old") == ["kept"]
