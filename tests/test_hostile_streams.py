"""Hostile streams: a stream lives no longer than its credential, and one caller cannot take
every stream slot (per token, guest, end user and session; the global cap stays the last line)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from server.appkeys import STORE
from server.auth.keys import create_key
from tests.conftest import ClientFactory, new_session
from tests.sse import SseEvent, events, read_until

Client = TestClient[Any, Any]
FAST = {"heartbeat_seconds": 0.2}


@pytest.fixture
async def fast(make_client: ClientFactory) -> Client:
    return await make_client(streams=FAST)


@pytest.fixture
async def browser(fast: Client) -> AsyncIterator[aiohttp.ClientSession]:
    """A client of the same server holding no API key: what a browser has."""
    async with aiohttp.ClientSession(base_url=str(fast.make_url(""))) as session:
        yield session


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _closed(resp: aiohttp.ClientResponse) -> list[SseEvent]:
    """Every event up to stream.closed, then the end of the response (which must come)."""
    async with asyncio.timeout(15):
        got = await read_until(resp, "stream.closed")
        rest = [ev async for ev in events(resp)]
    assert rest == [], "nothing may follow stream.closed"
    return got


async def test_a_grant_refreshed_in_a_loop_is_refused_not_revoked(make_client: ClientFactory) -> None:
    client = await make_client(tokens={"refreshes_per_hour": 3})
    s = await new_session(client, with_token=True)
    token = s["refresh_token"]
    async with aiohttp.ClientSession(base_url=str(client.make_url(""))) as browser:
        for _ in range(2):  # the grant's first token and two more make three this hour
            pair = await browser.post("/v1/tokens/refresh", headers=bearer(token))
            assert pair.status == 200, await pair.text()
            token = (await pair.json())["refresh_token"]
        for _ in range(2):
            refused = await browser.post("/v1/tokens/refresh", headers=bearer(token))
            assert refused.status == 429 and "Retry-After" in refused.headers, await refused.text()
        # Refused, not used: the grant lives, and its access token still reads the session.
        access = (await pair.json())["access_token"]
        assert (await browser.get(f"/v1/sessions/{s['id']}/messages", headers=bearer(access))).status == 200


async def test_a_stream_ends_when_its_grant_is_revoked_by_refresh_reuse(
    fast: Client, browser: aiohttp.ClientSession
) -> None:
    s = await new_session(fast, with_token=True)
    stream = await browser.get(f"/v1/sessions/{s['id']}/stream", params={"token": s["access_token"]})
    assert stream.status == 200
    rotated = await browser.post("/v1/tokens/refresh", headers=bearer(s["refresh_token"]))
    assert rotated.status == 200
    reused = await browser.post("/v1/tokens/refresh", headers=bearer(s["refresh_token"]))
    assert reused.status == 401  # the grant is revoked, and the open stream with it
    got = await _closed(stream)
    assert [ev.event for ev in got] == ["stream.closed"]
    assert got[0].data["reason"] == "credential_revoked"
    assert got[0].id == 0  # where it stood: nothing was sent yet
    # The session goes on; the revoked stream just does not see it.
    sent = await fast.post(f"/v1/sessions/{s['id']}/messages", json={"content": "after"})
    assert sent.status == 200


async def test_a_busy_stream_ends_too_and_its_id_resumes_exactly(
    make_client: ClientFactory,
) -> None:
    client = await make_client(streams=FAST, simulated={"tokens_per_second": 40, "reply_tokens": 200})
    s = await new_session(client, with_token=True)
    async with aiohttp.ClientSession(base_url=str(client.make_url(""))) as browser:
        stream = await browser.post(
            f"/v1/sessions/{s['id']}/messages", json={"content": "long", "stream": True},
            headers=bearer(s["access_token"]),
        )
        assert stream.status == 200
        first = await read_until(stream, "message.delta")
        assert (await browser.post("/v1/tokens/refresh", headers=bearer(s["refresh_token"]))).status == 200
        assert (await browser.post("/v1/tokens/refresh", headers=bearer(s["refresh_token"]))).status == 401
        got = first + await _closed(stream)
    assert got[-1].event == "stream.closed" and got[-1].data["reason"] == "credential_revoked"
    assert "task.completed" not in [ev.event for ev in got], "it ended before the answer did"
    last = got[-2].id
    assert got[-1].id == last
    # An API key resumes at that id: nothing lost, nothing twice.
    resumed = await client.get(f"/v1/sessions/{s['id']}/stream", headers={"Last-Event-ID": str(last)})
    rest = await read_until(resumed, "task.completed")
    assert rest[0].id == last + 1  # type: ignore[operator]


async def test_a_stream_ends_when_its_access_token_expires(make_client: ClientFactory) -> None:
    client = await make_client(streams=FAST, tokens={"access_ttl_seconds": 1})
    s = await new_session(client, with_token=True)
    async with aiohttp.ClientSession(base_url=str(client.make_url(""))) as browser:
        stream = await browser.get(f"/v1/sessions/{s['id']}/stream", headers=bearer(s["access_token"]))
        assert stream.status == 200
        got = await _closed(stream)
    assert got[-1].data["reason"] == "credential_expired"


async def test_a_stream_ends_when_the_key_behind_it_is_revoked(fast: Client, browser: aiohttp.ClientSession) -> None:
    store = fast.app[STORE]
    record, key = await create_key(store, "backend")
    s = await new_session(fast)
    pair = await (await fast.post(f"/v1/sessions/{s['id']}/tokens", headers={"X-API-Key": key})).json()
    by_token = await browser.get(f"/v1/sessions/{s['id']}/stream", headers=bearer(pair["access_token"]))
    by_key = await browser.get(f"/v1/sessions/{s['id']}/stream", headers={"X-API-Key": key})
    assert by_token.status == 200 and by_key.status == 200
    assert await store.revoke_api_key(record.id, "2026-01-01T00:00:00Z")  # as `sessiond keys revoke` does
    for stream in (by_token, by_key):
        got = await _closed(stream)
        assert got[-1].data["reason"] == "credential_revoked"


async def test_one_token_cannot_take_every_stream_slot(make_client: ClientFactory) -> None:
    client = await make_client(
        admission={"max_streams_per_token": 2, "max_open_streams": 100},
        simulated={"tokens_per_second": 20, "reply_tokens": 40},  # the streamed send lasts 2 s
    )
    s = await new_session(client, with_token=True)
    path = f"/v1/sessions/{s['id']}/stream"
    async with aiohttp.ClientSession(base_url=str(client.make_url(""))) as browser:
        held = [
            await browser.get(path, headers=bearer(s["access_token"])),
            await browser.post(
                f"/v1/sessions/{s['id']}/messages", json={"content": "hi", "stream": True},
                headers=bearer(s["access_token"]),
            ),
        ]
        assert [r.status for r in held] == [200, 200]
        third = await browser.get(path, headers=bearer(s["access_token"]))
        assert third.status == 429, await third.text()
        assert third.headers["Retry-After"] == "1"
        assert "streams" in (await third.json())["detail"]
        # Refreshing gives a new access token of the same grant: no new slot.
        pair = await (await browser.post("/v1/tokens/refresh", headers=bearer(s["refresh_token"]))).json()
        assert (await browser.get(path, headers=bearer(pair["access_token"]))).status == 429
        # Another caller still gets in: the cap is per holder, not the global one.
        other = await client.get(path)
        assert other.status == 200
        # A slot is given back when its stream ends (the streamed send, with its task).
        async with asyncio.timeout(10):
            await read_until(held[1], "task.completed")
            assert [ev async for ev in events(held[1])] == []
        again = await browser.get(path, headers=bearer(pair["access_token"]))
        assert again.status == 200
        for r in (other, again, held[0]):
            r.close()


async def test_one_guest_or_end_user_cannot_take_every_stream_slot(make_client: ClientFactory) -> None:
    client = await make_client(
        admission={"max_streams_per_guest": 2, "max_streams_per_end_user": 2, "max_open_streams": 100}
    )
    # A guest with many sessions (many tokens) holds at most its cap, over all of them.
    guest = [await (await client.post("/v1/guests/sessions", json={"ip": "198.51.100.7"})).json() for _ in range(3)]
    assert len({g["guest"]["id"] for g in guest}) == 1
    async with aiohttp.ClientSession(base_url=str(client.make_url(""))) as browser:
        opened = [
            await browser.get(f"/v1/sessions/{g['id']}/stream", headers=bearer(g["access_token"])) for g in guest
        ]
        assert [r.status for r in opened] == [200, 200, 429]
        # Another guest is not locked out by the first.
        newcomer = await (await client.post("/v1/guests/sessions", json={"ip": "203.0.113.9"})).json()
        fresh = await browser.get(f"/v1/sessions/{newcomer['id']}/stream", headers=bearer(newcomer["access_token"]))
        assert fresh.status == 200
        for r in (*opened, fresh):
            r.close()
    # An end user, over the sessions and keys acting for them.
    u1 = {"X-End-User-ID": "u1"}
    mine = [await (await client.post("/v1/sessions", json={}, headers=u1)).json() for _ in range(3)]
    streams = [await client.get(f"/v1/sessions/{m['id']}/stream", headers=u1) for m in mine]
    assert [r.status for r in streams] == [200, 200, 429]
    sent = await client.post(
        f"/v1/sessions/{mine[2]['id']}/messages", json={"content": "x", "stream": True}, headers=u1
    )
    assert sent.status == 429  # a streamed send opens a stream too
    assert (await client.get(f"/v1/sessions/{mine[2]['id']}/stream", headers={"X-End-User-ID": "u2"})).status == 404
    for r in streams:
        r.close()


async def test_one_session_holds_at_most_its_streams(make_client: ClientFactory) -> None:
    client = await make_client(admission={"max_streams_per_session": 3})
    s = await new_session(client)
    streams = [await client.get(f"/v1/sessions/{s['id']}/stream") for _ in range(4)]
    assert [r.status for r in streams] == [200, 200, 200, 429]
    assert (await client.get(f"/v1/sessions/{(await new_session(client))['id']}/stream")).status == 200
