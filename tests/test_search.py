"""Search: every word, in titles and messages of any branch, for their owner only; correct
after edits, deletes and imports; on SQLite and on PostgreSQL. (What the stores index of an
answer being written: tests/test_store.py.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

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
