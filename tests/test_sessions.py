"""Sessions over HTTP: create, list with filters and cursors, get, patch, metadata, delete."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from tests.conftest import new_session


async def test_create_get_patch_metadata_merge(client: TestClient[Any, Any]) -> None:
    s = await new_session(client, title="t", metadata={"team": "a", "tier": 1}, context={"k": "v"})
    assert s["id"].startswith("ses_") and s["namespace"] == "default" and s["status"] == "idle"
    got = await (await client.get(f"/v1/sessions/{s['id']}")).json()
    assert got["title"] == "t" and got["context"] == {"k": "v"} and got["message_count"] == 0
    patched = await client.patch(f"/v1/sessions/{s['id']}", json={"metadata": {"tier": None, "x": True}, "title": "u"})
    assert patched.status == 200
    meta = await (await client.get(f"/v1/sessions/{s['id']}/metadata")).json()
    assert meta == {"team": "a", "x": True}
    assert (await (await client.get(f"/v1/sessions/{s['id']}")).json())["title"] == "u"


async def test_list_filters_and_cursor(client: TestClient[Any, Any]) -> None:
    made = [await new_session(client, metadata={"team": "a" if i % 2 else "b", "n": i}) for i in range(7)]
    other = await new_session(client, namespace="other")
    page = await (await client.get("/v1/sessions?metadata.team=a&limit=2")).json()
    assert [s["metadata"]["team"] for s in page["items"]] == ["a", "a"]
    seen = [s["id"] for s in page["items"]]
    while page["next_cursor"]:
        page = await (await client.get(f"/v1/sessions?metadata.team=a&limit=2&cursor={page['next_cursor']}")).json()
        seen += [s["id"] for s in page["items"]]
    assert sorted(seen) == sorted(s["id"] for s in made if s["metadata"]["team"] == "a")
    both = await (await client.get("/v1/sessions?metadata.team=b&metadata.n=2")).json()
    assert [s["id"] for s in both["items"]] == [made[2]["id"]]
    ns = await (await client.get("/v1/sessions?namespace=other")).json()
    assert [s["id"] for s in ns["items"]] == [other["id"]]
    newest_first = await (await client.get("/v1/sessions?namespace=default&limit=200")).json()
    assert [s["id"] for s in newest_first["items"]] == [s["id"] for s in reversed(made)]


async def test_end_user_isolation(client: TestClient[Any, Any]) -> None:
    mine = await client.post("/v1/sessions", json={}, headers={"X-End-User-ID": "u1"})
    sid = (await mine.json())["id"]
    assert (await client.get(f"/v1/sessions/{sid}", headers={"X-End-User-ID": "u1"})).status == 200
    assert (await client.get(f"/v1/sessions/{sid}", headers={"X-End-User-ID": "u2"})).status == 404
    send = await client.post(f"/v1/sessions/{sid}/messages", json={"content": "x"}, headers={"X-End-User-ID": "u2"})
    assert send.status == 404
    listed = await (await client.get("/v1/sessions", headers={"X-End-User-ID": "u2"})).json()
    assert listed["items"] == []


async def test_send_without_stream_returns_the_answer_and_usage(client: TestClient[Any, Any]) -> None:
    s = await new_session(client)
    resp = await client.post(f"/v1/sessions/{s['id']}/messages", json={"content": "hello there"})
    assert resp.status == 200
    body = await resp.json()
    assert body["model"] == "simulated" and body["status"] == "completed"
    assert body["message"]["role"] == "assistant" and len(body["message"]["content"].split()) == 20
    # The simulated model's prompt: "hello there" (11 bytes) and the chat format's 3, a token
    # per five bytes.
    assert body["usage"] == {"prompt": 3, "completion": 20, "total": 23}
    history = await (await client.get(f"/v1/sessions/{s['id']}/messages")).json()
    assert [m["role"] for m in history["items"]] == ["user", "assistant"]
    assert history["usage"]["total"] == 23
    details = await (await client.get(f"/v1/sessions/{s['id']}")).json()
    assert details["usage"]["total"] == 23 and details["message_count"] == 2


async def test_same_prompt_same_simulated_reply(client: TestClient[Any, Any]) -> None:
    a, b = await new_session(client), await new_session(client)
    ra = await (await client.post(f"/v1/sessions/{a['id']}/messages", json={"content": "same"})).json()
    rb = await (await client.post(f"/v1/sessions/{b['id']}/messages", json={"content": "same"})).json()
    assert ra["message"]["content"] == rb["message"]["content"]


async def test_delete_and_prepare(client: TestClient[Any, Any]) -> None:
    s = await new_session(client)
    prep = await client.post(f"/v1/sessions/{s['id']}/prepare")
    assert (await prep.json()) == {"status": "running"}
    assert (await client.delete(f"/v1/sessions/{s['id']}")).status == 204
    assert (await client.get(f"/v1/sessions/{s['id']}")).status == 404
    assert (await client.get(f"/v1/sessions/{s['id']}/messages")).status == 404


async def test_health_and_ready(client: TestClient[Any, Any]) -> None:
    assert (await (await client.get("/healthz")).json()) == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status == 200 and (await ready.json())["checks"]["store"] == "ok"
