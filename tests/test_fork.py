"""Fork: a new session from the root-to-message path of any branch, with the source's
metadata and documents, and ``forked_from`` / ``forks`` recorded on both."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import ClientFactory, new_session
from tests.pg import database

Client = TestClient[Any, Any]


@pytest.fixture(params=["sqlite", "postgres"])
async def client(request: Any, make_client: ClientFactory) -> AsyncIterator[Client]:
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


async def test_fork_at_a_message_of_a_side_branch(client: Client) -> None:
    s = await new_session(client, title="source", metadata={"team": "red"}, context={"plan": "pro"})
    sid = s["id"]
    form = aiohttp.FormData()
    form.add_field("file", io.BytesIO(b"the handbook"), filename="handbook.txt", content_type="text/plain")
    doc = await _ok(await client.post(f"/v1/sessions/{sid}/upload", data=form), 201)

    first = await _ok(await client.post(f"/v1/sessions/{sid}/messages", json={"content": "one"}))
    question = first["message"]["parent_id"]
    # A side branch: "uno" replaces "one"; then the session goes on from "uno".
    side = await _ok(await client.post(f"/v1/sessions/{sid}/messages/{question}/edit", json={"content": "uno"}))
    await _ok(await client.post(f"/v1/sessions/{sid}/messages", json={"content": "dos"}))
    # Back to the first branch, so the side branch is not the active one.
    await _ok(await client.post(f"/v1/sessions/{sid}/navigate", json={"message_id": first["message"]["id"]}))
    source_tree = await _ok(await client.get(f"/v1/sessions/{sid}/tree"))

    forked = await _ok(await client.post(f"/v1/sessions/{sid}/fork", json={"message_id": side["message"]["id"]}), 201)
    fid = forked["id"]
    assert fid != sid
    assert forked["forked_from"] == {"session_id": sid, "message_id": side["message"]["id"]}
    assert forked["title"] == "source" and forked["metadata"] == {"team": "red"}
    assert forked["context"] == {"plan": "pro"}

    history = await _ok(await client.get(f"/v1/sessions/{fid}/messages"))
    assert [(m["role"], m["content"]) for m in history["items"]] == [
        ("user", "uno"), ("assistant", side["message"]["content"]),
    ]
    # Only that path: not "one", not "dos"; fresh ids.
    tree = await _ok(await client.get(f"/v1/sessions/{fid}/tree"))
    assert len(tree["nodes"]) == 2
    assert not {n["id"] for n in tree["nodes"]} & {n["id"] for n in source_tree["nodes"]}
    docs = await _ok(await client.get(f"/v1/sessions/{fid}/documents"))
    assert [d["id"] for d in docs["items"]] == [doc["id"]]

    source = await _ok(await client.get(f"/v1/sessions/{sid}"))
    assert source["forks"] == [{"session_id": fid, "message_id": side["message"]["id"]}]
    # The source is unchanged; the fork goes on by itself.
    assert await _ok(await client.get(f"/v1/sessions/{sid}/tree")) == {**source_tree}
    more = await _ok(await client.post(f"/v1/sessions/{fid}/messages", json={"content": "tres"}))
    assert more["message"]["role"] == "assistant"
    assert len((await _ok(await client.get(f"/v1/sessions/{sid}/tree")))["nodes"]) == len(source_tree["nodes"])

    missing = await client.post(f"/v1/sessions/{sid}/fork", json={"message_id": "msg_nope"})
    assert missing.status == 404


async def test_an_end_user_forks_only_their_own_sessions(client: Client) -> None:
    theirs = await new_session(client, end_user_id="u2")
    sent = await _ok(await client.post(f"/v1/sessions/{theirs['id']}/messages", json={"content": "hi"}))
    resp = await client.post(f"/v1/sessions/{theirs['id']}/fork", json={"message_id": sent["message"]["id"]},
                             headers={"X-End-User-ID": "u1"})
    assert resp.status == 404
    mine = await _ok(await client.post(f"/v1/sessions/{theirs['id']}/fork", json={"message_id": sent["message"]["id"]},
                                       headers={"X-End-User-ID": "u2"}), 201)
    assert mine["end_user_id"] == "u2"


async def test_a_session_lists_its_newest_256_forks(make_client: ClientFactory) -> None:
    """Every fork is listed on its source, whose row every commit writes whole: forking it
    again and again must not grow it without end, so it lists the newest 256."""
    client = await make_client()
    s = await new_session(client)
    sid = s["id"]
    sent = await _ok(await client.post(f"/v1/sessions/{sid}/messages", json={"content": "q"}))
    at = sent["message"]["id"]
    forks = [(await _ok(await client.post(f"/v1/sessions/{sid}/fork", json={"message_id": at}), 201))["id"]
             for _ in range(258)]
    listed = [f["session_id"] for f in (await _ok(await client.get(f"/v1/sessions/{sid}")))["forks"]]
    assert listed == forks[-256:]
    oldest = await _ok(await client.get(f"/v1/sessions/{forks[0]}"))
    assert oldest["forked_from"] == {"session_id": sid, "message_id": at}, "a fork still knows its source"
