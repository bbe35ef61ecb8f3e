"""Guests: found again by fingerprint or by IP, with a session and tokens; lookup, usage, expiry."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import ClientFactory

Client = TestClient[Any, Any]


async def guest_session(client: Client, **body: Any) -> dict[str, Any]:
    resp = await client.post("/v1/guests/sessions", json=body)
    assert resp.status == 201, await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Config sections: guests in the store (memory limits), or guests and limits in Redis."""
    if request.param == "memory":
        return {}
    return {"limits": {"backend": "redis"}, "redis": {"url": request.getfixturevalue("redis_url")}}


@pytest.fixture
async def guests_client(backend: dict[str, Any], make_client: ClientFactory) -> Client:
    return await make_client(**backend)


async def test_same_fingerprint_or_same_ip_is_the_same_guest(guests_client: Client) -> None:
    c = guests_client
    first = await guest_session(c, ip="203.0.113.7", fingerprint="fp-laptop")
    g = first["guest"]
    assert g["id"].startswith("gst_") and g["namespace"] == "default" and g["created_at"]
    assert first["is_guest"] is True
    assert first["token_type"] == "Bearer" and first["access_token"] and first["refresh_token"].startswith("rt_")

    moved = await guest_session(c, ip="198.51.100.23", fingerprint="fp-laptop")  # same browser, new network
    assert moved["guest"] == g
    new_browser = await guest_session(c, ip="203.0.113.7", fingerprint="fp-phone")  # same network, new browser
    assert new_browser["guest"] == g
    no_fingerprint = await guest_session(c, ip="198.51.100.23")
    assert no_fingerprint["guest"] == g
    # Every visit gets a session of its own.
    assert len({first["id"], moved["id"], new_browser["id"], no_fingerprint["id"]}) == 4

    stranger = await guest_session(c, ip="192.0.2.1", fingerprint="fp-other")
    assert stranger["guest"]["id"] != g["id"]
    elsewhere = await guest_session(c, ip="203.0.113.7", fingerprint="fp-laptop", namespace="tenant-b")
    assert elsewhere["guest"]["id"] != g["id"] and elsewhere["guest"]["namespace"] == "tenant-b"
    assert elsewhere["namespace"] == "tenant-b"

    # Lookups find without creating.
    for query in ("ip=198.51.100.23", "fingerprint=fp-phone", "ip=192.0.2.99&fingerprint=fp-laptop"):
        resp = await c.get(f"/v1/guests?{query}")
        assert resp.status == 200, query
        assert (await resp.json())["id"] == g["id"]
    assert (await c.get("/v1/guests?ip=192.0.2.99")).status == 404
    assert (await c.get("/v1/guests?fingerprint=fp-laptop&namespace=tenant-c")).status == 404
    assert (await c.get("/v1/guests")).status == 422


async def test_a_guest_session_is_usable_with_its_token_and_counted(client: Client) -> None:
    s = await guest_session(client, ip="2001:db8::1", fingerprint="fp")
    async with aiohttp.ClientSession(base_url=str(client.make_url(""))) as browser:
        h = {"Authorization": f"Bearer {s['access_token']}"}
        totals = 0
        for text in ("one", "two"):
            resp = await browser.post(f"/v1/sessions/{s['id']}/messages", json={"content": text}, headers=h)
            assert resp.status == 200
            totals += (await resp.json())["usage"]["total"]
        # The guest's token is a session token like any other: no guest admin with it.
        assert (await browser.get(f"/v1/guests/{s['guest']['id']}/usage", headers=h)).status == 403
    usage = await (await client.get(f"/v1/guests/{s['guest']['id']}/usage")).json()
    assert usage["guest_id"] == s["guest"]["id"]
    assert usage["messages_this_hour"] == 2 and usage["messages_today"] == 2
    assert usage["tokens_today"] == totals > 0
    assert usage["limits"] == {"messages_per_hour": 20, "messages_per_day": 50, "tokens_per_day": 100000}
    assert usage["hour_resets_at"] <= usage["day_resets_at"]
    got = await (await client.get(f"/v1/sessions/{s['id']}")).json()
    assert got["is_guest"] is True


async def test_guest_endpoints_need_a_plain_api_key(client: Client) -> None:
    s = await guest_session(client, ip="192.0.2.5")
    gid = s["guest"]["id"]
    calls = [
        ("POST", "/v1/guests/sessions", {"ip": "192.0.2.5"}),
        ("GET", "/v1/guests?ip=192.0.2.5", None),
        ("GET", f"/v1/guests/{gid}/usage", None),
    ]
    async with aiohttp.ClientSession(base_url=str(client.make_url(""))) as anon:
        for method, path, body in calls:
            assert (await anon.request(method, path, json=body)).status == 401
            as_user = await client.request(method, path, json=body, headers={"X-End-User-ID": "u1"})
            assert as_user.status == 403, path
            assert (await client.request(method, path, json=body)).status in (200, 201)


async def test_bad_guest_requests(client: Client) -> None:
    assert (await client.post("/v1/guests/sessions", json={"fingerprint": "x"})).status == 422
    assert (await client.post("/v1/guests/sessions", json={"ip": "not-an-ip"})).status == 422
    assert (await client.post("/v1/guests/sessions", json={"ip": "192.0.2.1", "extra": 1})).status == 422
    assert (await client.get("/v1/guests/gst_unknown/usage")).status == 404


@pytest.fixture
async def short_lived(backend: dict[str, Any], make_client: ClientFactory) -> Client:
    """Guests that expire as soon as they are made (ttl 0)."""
    return await make_client(guests={"ttl_seconds": 0}, **backend)


async def test_guests_expire(short_lived: Client) -> None:
    first = await guest_session(short_lived, ip="192.0.2.8", fingerprint="fp")
    again = await guest_session(short_lived, ip="192.0.2.8", fingerprint="fp")
    assert again["guest"]["id"] != first["guest"]["id"]
    assert (await short_lived.get("/v1/guests?ip=192.0.2.8")).status == 404
    assert (await short_lived.get(f"/v1/guests/{first['guest']['id']}/usage")).status == 404
