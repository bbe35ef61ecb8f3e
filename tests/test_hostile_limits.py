"""Hostile input limits: deep or huge JSON, headers of any length, ids past the log, bodies
larger than the cap however they are framed, and connections that never finish their request."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient

from actors.core.ids import new_id, utcnow
from actors.store.tables import DocumentRecord
from server.appkeys import REGISTRY, STORE
from tests.conftest import TEST_KEY, ClientFactory, new_session
from tests.fake_models import converse


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def _deep_body(field: str, depth: int) -> bytes:
    """``{field: {"a": ... {"leaf": 1}}}`` nested ``depth`` levels (past what json.dumps takes)."""
    return b'{"%s":' % field.encode() + b'{"a":' * (depth - 1) + b'{"leaf":1}' + b"}" * depth


_JSON = {"Content-Type": "application/json"}


async def test_deep_metadata_is_refused_at_write_time_and_listing_stays_up(client: TestClient[Any, Any]) -> None:
    # 981 levels were accepted once, and then broke every read of the session.
    resp = await client.post("/v1/sessions", data=_deep_body("metadata", 981), headers=_JSON)
    assert resp.status in (400, 422), await resp.text()
    bodies = (_deep_body("metadata", 100), _deep_body("context", 40), json.dumps({"metadata": {"b": "x" * 70_000}}))
    for body in bodies:
        resp = await client.post("/v1/sessions", data=body, headers=_JSON)
        assert resp.status == 422, await resp.text()
        assert resp.headers["Content-Type"].startswith("application/problem+json")
    s = await new_session(client, metadata=_nested(32))  # the cap itself is fine
    resp = await client.patch(f"/v1/sessions/{s['id']}", data=_deep_body("metadata", 33), headers=_JSON)
    assert resp.status == 422, await resp.text()
    resp = await client.patch(f"/v1/sessions/{s['id']}", json={"context": {"k": "y" * 70_000}})
    assert resp.status == 422, await resp.text()
    # Nothing deep got in: every read of it still answers.
    listed = await client.get("/v1/sessions")
    assert listed.status == 200
    assert [x["id"] for x in (await listed.json())["items"]] == [s["id"]]
    assert (await client.get(f"/v1/sessions/{s['id']}")).status == 200
    assert (await client.delete(f"/v1/sessions/{s['id']}")).status == 204


async def test_patches_of_new_keys_cannot_grow_a_sessions_metadata_past_its_cap(client: TestClient[Any, Any]) -> None:
    """Each patch is within 64 KiB, but the metadata they merge into is what every commit of the
    session writes: the patch that would take it past the cap is refused whole (its title too)."""
    s = await new_session(client, title="before")
    sid = s["id"]
    first = await client.patch(f"/v1/sessions/{sid}", json={"metadata": {"a": "x" * 40_000}})
    assert first.status == 200, await first.text()
    version = (await first.json())["version"]
    second = await client.patch(f"/v1/sessions/{sid}", json={"title": "after", "metadata": {"b": "y" * 40_000}})
    assert second.status == 422, await second.text()
    assert "merged" in (await second.json())["detail"]
    now = await (await client.get(f"/v1/sessions/{sid}")).json()
    assert now["title"] == "before" and set(now["metadata"]) == {"a"} and now["version"] == version
    # Replacing a key or removing one keeps it within the cap, and is taken.
    third = await client.patch(f"/v1/sessions/{sid}", json={"metadata": {"a": None, "b": "y" * 40_000}})
    assert third.status == 200, await third.text()
    assert set((await third.json())["metadata"]) == {"b"}

    # A session whose metadata was stored past the cap (before it held) may shrink step by step.
    registry = client.app[REGISTRY]
    big = await registry.create(registry.new_record(namespace="default", metadata={
        k: k * 30_000 for k in ("p", "q", "r")
    }))
    grow = await client.patch(f"/v1/sessions/{big.id}", json={"metadata": {"s": "s"}})
    assert grow.status == 422, await grow.text()
    shrink = await client.patch(f"/v1/sessions/{big.id}", json={"metadata": {"p": None}})
    assert shrink.status == 200, await shrink.text()
    assert set((await shrink.json())["metadata"]) == {"q", "r"}


async def test_a_session_links_at_most_256_documents(client: TestClient[Any, Any]) -> None:
    s = await new_session(client)
    sid = s["id"]
    # 257 small documents, recorded as an upload records them (257 uploads take half a minute).
    store = client.app[STORE]
    ids = []
    for i in range(257):
        doc = DocumentRecord(id=new_id("doc"), name=f"n{i}.txt", size=6, content_type="text/plain", kind="txt",
                             sha256=f"{i:064x}", created_at=utcnow(), shared=True)
        await store.put_document(doc, f"note {i}")
        ids.append(doc.id)
    resp = await client.post(f"/v1/sessions/{sid}/documents", json={"document_ids": ids})
    assert resp.status == 422 and "256" in (await resp.json())["detail"]
    assert (await client.post(f"/v1/sessions/{sid}/documents", json={"document_ids": ids[:255]})).status == 200

    async def upload(name: str) -> int:
        form = aiohttp.FormData()
        form.add_field("file", name.encode(), filename=name, content_type="text/plain")
        return (await client.post(f"/v1/sessions/{sid}/upload", data=form)).status

    # Two uploads for the last place: one is linked; the other is refused and keeps nothing,
    # whether it met the full session before its upload was read or only when linking it.
    assert sorted(await asyncio.gather(upload("a.txt"), upload("b.txt"))) == [201, 422]
    assert (await upload("c.txt")) == 422
    documents = []
    for offset in (0, 200):
        page = await client.get("/v1/documents", params={"limit": "200", "offset": str(offset)})
        documents += (await page.json())["items"]
    assert len(documents) == 258, "the refused uploads stored nothing"
    linked = (await (await client.get(f"/v1/sessions/{sid}/documents")).json())["items"]
    assert len(linked) == 256
    many = await client.post(f"/v1/sessions/{sid}/documents", json={"document_ids": [f"doc_{i}" for i in range(300)]})
    assert many.status == 422 and "256" in (await many.json())["detail"]


async def test_json_nested_past_the_decoder_is_a_400_on_every_json_route(client: TestClient[Any, Any]) -> None:
    s = await new_session(client)
    deep = b'{"metadata":' + b'{"a":' * 3000 + b"1" + b"}" * 3001
    arrays = b"[" * 5000 + b"]" * 5000
    routes = [
        ("POST", "/v1/sessions"),
        ("PATCH", f"/v1/sessions/{s['id']}"),
        ("POST", f"/v1/sessions/{s['id']}/messages"),
        ("POST", "/v1/sessions/import"),
        ("POST", "/v1/sessions/merge"),
        ("POST", "/v1/agents"),
        ("POST", "/v1/guests/sessions"),
    ]
    for method, path in routes:
        for body in (deep, arrays):
            resp = await client.request(method, path, data=body, headers=_JSON)
            text = await resp.text()
            assert resp.status in (400, 422), f"{method} {path}: {resp.status} {text[:300]}"
            assert "Traceback" not in text
            assert resp.headers["Content-Type"].startswith("application/problem+json")


async def test_an_if_match_of_5000_digits_is_a_400(client: TestClient[Any, Any]) -> None:
    s = await new_session(client, title="kept")
    for value in ('"' + "9" * 5000 + '"', "9" * 19):
        resp = await client.patch(f"/v1/sessions/{s['id']}", json={"title": "x"}, headers={"If-Match": value})
        assert resp.status == 400, await resp.text()
    # Digits that are not ASCII never match, and never crash.
    resp = await client.patch(f"/v1/sessions/{s['id']}", json={"title": "x"}, headers={"If-Match": '"\u00b2"'})
    assert resp.status == 412, await resp.text()
    got = await (await client.get(f"/v1/sessions/{s['id']}")).json()
    assert got["title"] == "kept"


async def test_a_last_event_id_past_the_log_is_a_400_not_a_silent_stream(client: TestClient[Any, Any]) -> None:
    s = await new_session(client)
    sent = await client.post(f"/v1/sessions/{s['id']}/messages", json={"content": "hi"})
    assert sent.status == 200
    for value in ("1000000", "9" * 5000):
        resp = await client.get(f"/v1/sessions/{s['id']}/stream", headers={"Last-Event-ID": value})
        assert resp.status == 400, await resp.text()
        assert "Last-Event-ID" in (await resp.json())["detail"]


async def test_a_chunked_json_body_past_the_cap_is_a_413(make_client: ClientFactory) -> None:
    client = await make_client(server={"max_body_bytes": 65_536})

    async def chunks() -> Any:
        yield b'{"title": "'
        for _ in range(40):
            yield b"x" * 8192
        yield b'"}'

    resp = await client.post("/v1/sessions", data=chunks(), headers={"Content-Type": "application/json"})
    assert resp.status == 413, await resp.text()
    assert (await (await client.get("/v1/sessions")).json())["items"] == []


async def test_half_sent_headers_and_trickled_bodies_are_cut_at_their_deadline(make_client: ClientFactory) -> None:
    client = await make_client(server={"header_timeout_seconds": 1.0, "body_timeout_seconds": 1.0})
    host, port = client.server.host, client.server.port
    loop = asyncio.get_running_loop()

    async def half_headers() -> bytes:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /v1/sessions HTTP/1.1\r\nHost: x\r\nX-API-Key: " + TEST_KEY.encode() + b"\r\nX-Slow:")
        await writer.drain()
        try:
            return await reader.read()  # the server closes it: b"" (or whatever it answered)
        finally:
            writer.close()

    async def trickled_body() -> bytes:
        reader, writer = await asyncio.open_connection(host, port)
        body = json.dumps({"title": "slow"}).encode()
        writer.write(
            b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (TEST_KEY.encode(), len(body) + 1000, body[:1])
        )
        await writer.drain()
        try:
            return await reader.read()
        finally:
            writer.close()

    started = loop.time()
    async with asyncio.timeout(20):
        results = await asyncio.gather(*(half_headers() for _ in range(20)), *(trickled_body() for _ in range(20)))
    elapsed = loop.time() - started
    assert elapsed < 10, f"slow connections held for {elapsed:.1f} s"
    for answer in results[20:]:
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert (await (await client.get("/v1/sessions")).json())["items"] == []
    assert (await client.get("/healthz")).status == 200


def _multipart_head(boundary: bytes) -> bytes:
    return (
        b"--%s\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.txt\"\r\n"
        b"Content-Type: text/plain\r\n\r\n" % boundary
    )


async def test_a_chunked_upload_past_the_document_cap_is_a_413_and_leaves_nothing(
    make_client: ClientFactory,
) -> None:
    client = await make_client()  # [documents] max_bytes: 10 MiB
    s = await new_session(client)
    boundary = b"b0undary"

    async def twenty_megabytes() -> Any:
        yield _multipart_head(boundary)
        block = b"word " * 13_107  # 64 KiB
        for _ in range(320):  # 20 MiB
            yield block
        yield b"\r\n--%s--\r\n" % boundary

    resp = await client.post(
        f"/v1/sessions/{s['id']}/upload", data=twenty_megabytes(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary.decode()}"},
    )
    assert resp.status == 413, await resp.text()
    listed = await client.get("/v1/documents")
    assert (await listed.json())["items"] == []


async def test_a_trickled_upload_is_cut_at_its_deadline(make_client: ClientFactory) -> None:
    client = await make_client(server={"body_timeout_seconds": 1.0, "min_body_bytes_per_second": 1_000_000})
    s = await new_session(client)
    boundary = b"b0undary"
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    head = _multipart_head(boundary)
    writer.write(
        b"POST /v1/sessions/%s/upload HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\n"
        b"Content-Type: multipart/form-data; boundary=%s\r\nContent-Length: 100000\r\n\r\n%s"
        % (s["id"].encode(), TEST_KEY.encode(), boundary, head)
    )
    await writer.drain()
    async with asyncio.timeout(15):
        answer = await reader.read()
    writer.close()
    assert answer.split(b" ", 2)[1] == b"408", answer[:200]
    assert (await (await client.get("/v1/documents")).json())["items"] == []


async def test_deep_or_huge_tool_arguments_from_a_model_are_an_error_result(client: TestClient[Any, Any]) -> None:
    s = await new_session(client, tools=["calculator"])
    for args in ('{"a":' * 40 + "1" + "}" * 40, "[" * 3000 + "]" * 3000, '{"expression": "' + "1+" * 40_000 + '1"}'):
        events = await converse(client, s["id"], f"/tool calculator {args}")
        assert events[-1].event == "task.completed", [e.event for e in events][-3:]
        result = next(e.data for e in events if e.event == "tool.result")
        assert result["is_error"] is True
        call = next(e.data for e in events if e.event == "tool.call")
        assert set(call["arguments"]) == {"raw"}  # kept as text, never as a deep object
    # The session still reads and lists.
    assert (await client.get(f"/v1/sessions/{s['id']}/messages")).status == 200
    assert (await client.get(f"/v1/sessions/{s['id']}/export")).status == 200
