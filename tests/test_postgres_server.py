"""The whole server on the PostgreSQL store: tokens, guests, agents, documents and export."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg  # type: ignore[import-untyped]
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import ClientFactory, new_session
from tests.fake_models import converse
from tests.pg import database

Client = TestClient[Any, Any]

FACT = "The night ferry to the island leaves at eleven."


@pytest.fixture
async def dsn() -> AsyncIterator[str]:
    async with database() as url:
        yield url


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _file(data: bytes, filename: str) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("file", io.BytesIO(data), filename=filename, content_type="application/octet-stream")
    return form


async def _json(resp: aiohttp.ClientResponse, status: int) -> Any:
    assert resp.status == status, await resp.text()
    return await resp.json(content_type=None)


async def test_the_server_runs_on_postgres(dsn: str, make_client: ClientFactory, tmp_path: Path) -> None:
    # dsn comes first: the database is dropped only after the servers using it have stopped.
    data_dir = tmp_path / "data"
    store = {"kind": "postgres", "postgres_dsn": dsn}
    client = await make_client(data_dir, store=store)
    async with aiohttp.ClientSession(base_url=str(client.make_url(""))) as browser:
        # A session with tokens: a browser converses with the access token alone.
        s = await new_session(client, with_token=True, title="on postgres", end_user_id="u1")
        path = f"/v1/sessions/{s['id']}/messages"
        sent = await _json(await browser.post(path, json={"content": "hello"}, headers=_bearer(s["access_token"])), 200)
        answer = sent["message"]["content"]
        assert answer

        # Refresh rotates; the rotated token coming back revokes the whole grant.
        second = await _json(await browser.post("/v1/tokens/refresh", headers=_bearer(s["refresh_token"])), 200)
        assert second["refresh_token"] != s["refresh_token"] and second["session_id"] == s["id"]
        history = await _json(await browser.get(path, headers=_bearer(second["access_token"])), 200)
        assert [m["content"] for m in history["items"]] == ["hello", answer]
        reused = await _json(await browser.post("/v1/tokens/refresh", headers=_bearer(s["refresh_token"])), 401)
        assert "already used" in reused["detail"]
        await _json(await browser.post("/v1/tokens/refresh", headers=_bearer(second["refresh_token"])), 401)
        await _json(await browser.get(path, headers=_bearer(second["access_token"])), 401)
        # A new grant of the same session works, and is kept for after the restart below.
        kept = await _json(await client.post(f"/v1/sessions/{s['id']}/tokens"), 200)

        # A guest: found again by fingerprint from another IP, with a session and tokens of its own.
        visit = {"ip": "203.0.113.7", "fingerprint": "fp"}
        g1 = await _json(await client.post("/v1/guests/sessions", json=visit), 201)
        g2 = await _json(await client.post("/v1/guests/sessions", json={**visit, "ip": "198.51.100.2"}), 201)
        assert g1["guest"] == g2["guest"] and g1["id"] != g2["id"] and g1["is_guest"] is True
        said = await browser.post(
            f"/v1/sessions/{g1['id']}/messages", json={"content": "hi"}, headers=_bearer(g1["access_token"])
        )
        assert (await _json(said, 200))["message"]["content"]
        usage = await _json(await client.get(f"/v1/guests/{g1['guest']['id']}/usage"), 200)
        assert usage["messages_today"] == 1

    # An agent made through the API, and a session that talks to it.
    agent = await _json(await client.post("/v1/agents", json={
        "name": "librarian", "system_prompt": "Answer from the documents.", "tools": ["search_documents"],
    }), 201)
    a = await new_session(client, agent_id=agent["id"], end_user_id="u1")
    assert a["agent_id"] == agent["id"] and a["tools"] == ["search_documents"]

    # Documents: one uploaded then linked, one uploaded into the session; the agent searches them.
    shared = await _json(await client.post("/v1/documents", data=_file(FACT.encode(), "ferry.txt")), 201)
    await _json(await client.post(f"/v1/sessions/{a['id']}/documents", json={"document_ids": [shared["id"]]}), 200)
    upload = _file(b"# Notes\n\nTide tables.", "notes.md")
    notes = await _json(await client.post(f"/v1/sessions/{a['id']}/upload", data=upload), 201)
    linked = await _json(await client.get(f"/v1/sessions/{a['id']}/documents"), 200)
    assert {d["id"] for d in linked["items"]} == {shared["id"], notes["id"]}
    events = await converse(client, a["id"], '/tool search_documents {"query": "night ferry"}')
    output = next(e.data for e in events if e.event == "tool.result")["output"]
    assert FACT in output and "[ferry.txt]" in output
    listed = await _json(await client.get("/v1/documents", headers={"X-End-User-ID": "u1"}), 200)
    assert [d["id"] for d in listed["items"]] == [notes["id"], shared["id"]]

    # Text PostgreSQL cannot hold (U+0000) neither fails the write nor turns a lookup into an error.
    odd = await new_session(client, title="a\u0000b", metadata={"k": "\u0000"})
    assert (await _json(await client.get(f"/v1/sessions/{odd['id']}"), 200))["title"] in ("a\u0000b", "a\ufffdb")
    assert (await client.get("/v1/sessions/ses_%00")).status == 404
    assert (await client.get("/v1/documents/doc_%00")).status == 404

    # Usage per end user sums the end user's sessions from the store.
    mine = await _json(await client.get("/v1/usage", params={"end_user_id": "u1"}), 200)
    assert mine["sessions"] == 2 and mine["usage"]["total"] > 0

    # Export, then import as a new session with the same conversation.
    exported = await _json(await client.get(f"/v1/sessions/{a['id']}/export"), 200)
    assert set(exported["documents"]) == {shared["id"], notes["id"]}
    assert exported["session"]["agent_id"] == agent["id"]
    copy = await _json(await client.post("/v1/sessions/import?new_id=true", json=exported), 201)
    assert copy["id"] != a["id"]
    copied = await _json(await client.get(f"/v1/sessions/{copy['id']}/messages"), 200)
    assert [m["content"] for m in copied["items"]] == [m["content"] for m in exported["messages"]]
    await client.close()

    # Everything lived in PostgreSQL: no SQLite file was made, and the rows are there.
    assert not list(data_dir.rglob("*.db"))
    conn = await asyncpg.connect(dsn)
    try:
        counts = {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in ("agents", "documents", "guests")}
        assert counts == {"agents": 1, "documents": 2, "guests": 1}
    finally:
        await conn.close()

    # A restarted server finds it all again in the database.
    again = await make_client(data_dir, store=store)
    assert (await _json(await again.get(f"/v1/agents/{agent['id']}"), 200))["name"] == "librarian"
    history = await _json(await again.get(f"/v1/sessions/{s['id']}/messages"), 200)
    assert [m["content"] for m in history["items"]] == ["hello", answer]
    found = await _json(await again.get("/v1/guests", params={"fingerprint": "fp"}), 200)
    assert found["id"] == g1["guest"]["id"]
    async with aiohttp.ClientSession(base_url=str(again.make_url(""))) as browser:
        fresh = await _json(await browser.post("/v1/tokens/refresh", headers=_bearer(kept["refresh_token"])), 200)
        assert (await browser.get(path, headers=_bearer(fresh["access_token"]))).status == 200
    assert (await again.delete(f"/v1/documents/{shared['id']}")).status == 204
    assert (await again.get(f"/v1/documents/{shared['id']}")).status == 404
    # Deleting the session ends its grants.
    assert (await again.delete(f"/v1/sessions/{s['id']}")).status == 204
    async with aiohttp.ClientSession(base_url=str(again.make_url(""))) as browser:
        await _json(await browser.post("/v1/tokens/refresh", headers=_bearer(fresh["refresh_token"])), 401)
