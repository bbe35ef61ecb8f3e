"""Hostile guests: messages sent together cannot overshoot a daily token limit (tokens are
reserved at admission and settled at the end, in memory and in Redis); a message the session
refuses gives its slot back; a signed guest id is trusted first; an IP is never re-linked to
whichever fingerprint came last; IPv6 counts per /64 and IPv4-mapped addresses as IPv4."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import ClientFactory

Client = TestClient[Any, Any]


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Limits counted in this process, or in Redis (shared by every process)."""
    if request.param == "memory":
        return {}
    return {"limits": {"backend": "redis"}, "redis": {"url": request.getfixturevalue("redis_url")}}


def _sections(backend: dict[str, Any], limits: dict[str, Any], **sections: dict[str, Any]) -> dict[str, Any]:
    return {**backend, **sections, "limits": {**backend.get("limits", {}), **limits}}


async def test_twenty_long_messages_at_once_do_not_overshoot_the_daily_tokens(
    backend: dict[str, Any], make_client: ClientFactory
) -> None:
    limit = 2000
    client = await make_client(**_sections(
        backend,
        {"guest_tokens_per_day": limit, "reserve_reply_tokens": 200, "guest_messages_per_hour": 0,
         "guest_messages_per_day": 0},
        simulated={"tokens_per_second": 200, "reply_tokens": 200},  # each answer takes a second
    ))
    sessions = [
        await (await client.post("/v1/guests/sessions", json={"ip": "192.0.2.77"})).json() for _ in range(20)
    ]
    guest_id = sessions[0]["guest"]["id"]
    assert {s["guest"]["id"] for s in sessions} == {guest_id}
    long = "word " * 400  # 2 000 bytes: about 400 prompt tokens for the simulated model

    async def as_guest(s: dict[str, Any]) -> tuple[int, int]:
        async with aiohttp.ClientSession(base_url=str(client.make_url(""))) as browser:
            resp = await browser.post(
                f"/v1/sessions/{s['id']}/messages", json={"content": long},
                headers={"Authorization": f"Bearer {s['access_token']}"},
            )
            if resp.status != 200:
                assert resp.status == 429, await resp.text()
                return resp.status, 0
            return 200, (await resp.json())["usage"]["total"]

    results = await asyncio.gather(*(as_guest(s) for s in sessions))
    admitted = [used for status, used in results if status == 200]
    assert admitted, "the first message had room"
    assert len(admitted) < 20, "most were refused: their tokens were reserved by the first ones"
    usage = await (await client.get(f"/v1/guests/{guest_id}/usage")).json()
    assert usage["tokens_today"] == sum(admitted)  # settled to what the answers really used
    assert usage["tokens_today"] <= limit, f"{usage['tokens_today']} tokens against a limit of {limit}"


async def test_a_message_refused_by_a_full_queue_gives_back_its_hourly_slot(
    backend: dict[str, Any], make_client: ClientFactory
) -> None:
    client = await make_client(**_sections(
        backend,
        {"guest_messages_per_hour": 3},
        sessions={"max_queued": 1},
        simulated={"tokens_per_second": 20, "reply_tokens": 60},  # three seconds: it stays running
    ))
    s = await (await client.post("/v1/guests/sessions", json={"ip": "192.0.2.78"})).json()
    path = f"/v1/sessions/{s['id']}/messages"
    running = await client.post(path, json={"content": "first", "stream": True})
    assert running.status == 200
    await running.content.readline()  # the task has started
    queued = await client.post(path, params={"queue": "true"}, json={"content": "second", "stream": True})
    assert queued.status == 200
    refused = await client.post(path, params={"queue": "true"}, json={"content": "third"})
    assert refused.status in (409, 429, 503), await refused.text()
    assert refused.status != 429, "refused by the queue, not by the limit"
    usage = await (await client.get(f"/v1/guests/{s['guest']['id']}/usage")).json()
    assert usage["messages_this_hour"] == 2, usage
    running.close()
    queued.close()


# -- identity --------------------------------------------------------------------------------

ID_SECRET = "a-secret-shared-with-the-site-backend-0123456789"


def sign(visitor: str, secret: str = ID_SECRET) -> str:
    mac = hmac.new(secret.encode(), visitor.encode(), hashlib.sha256).digest()
    return f"{visitor}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


async def _guest_id(client: Client, **body: Any) -> str:
    resp = await client.post("/v1/guests/sessions", json=body)
    assert resp.status == 201, await resp.text()
    return (await resp.json())["guest"]["id"]  # type: ignore[no-any-return]


async def test_a_signed_guest_id_is_trusted_first_and_cannot_be_taken_by_ip_or_fingerprint(
    backend: dict[str, Any], make_client: ClientFactory
) -> None:
    client = await make_client(**{**backend, "guests": {"id_secret": ID_SECRET}})
    mine = await _guest_id(client, ip="198.51.100.1", fingerprint="fp-victim", signed_id=sign("visitor-42"))
    # The same signed id from another network, another browser: the same guest.
    assert await _guest_id(client, ip="203.0.113.50", fingerprint="fp-new", signed_id=sign("visitor-42")) == mine
    # Someone with the victim's IP and fingerprint, but not the signed id, is someone else.
    assert await _guest_id(client, ip="198.51.100.1", fingerprint="fp-victim") != mine
    # A forged or foreign signature is refused, and so is a signed id with no secret configured.
    for bad in ("visitor-42.AAAA", "visitor-42", sign("visitor-42", "another-secret-of-enough-length-0123456")):
        resp = await client.post("/v1/guests/sessions", json={"ip": "198.51.100.1", "signed_id": bad})
        assert resp.status == 422, await resp.text()
    plain = await make_client(**backend)
    resp = await plain.post("/v1/guests/sessions", json={"ip": "198.51.100.1", "signed_id": sign("visitor-42")})
    assert resp.status == 422 and "id_secret" in (await resp.json())["detail"]


async def test_an_ip_is_never_relinked_to_the_fingerprint_that_came_last(
    backend: dict[str, Any], make_client: ClientFactory
) -> None:
    client = await make_client(**backend)
    victim = await _guest_id(client, ip="192.0.2.10", fingerprint="fp-victim")
    attacker = await _guest_id(client, ip="192.0.2.99", fingerprint="fp-attacker")
    # The attacker visits from the victim's IP: still the attacker (fingerprint first)...
    assert await _guest_id(client, ip="192.0.2.10", fingerprint="fp-attacker") == attacker
    # ...and the victim's IP still belongs to the victim: a new browser there is the victim.
    assert await _guest_id(client, ip="192.0.2.10", fingerprint="fp-victim-phone") == victim
    assert await _guest_id(client, ip="192.0.2.10") == victim


async def test_ipv6_is_one_guest_per_64_and_ipv4_mapped_is_ipv4(
    backend: dict[str, Any], make_client: ClientFactory
) -> None:
    client = await make_client(**backend)
    v4 = await _guest_id(client, ip="192.0.2.200")
    assert await _guest_id(client, ip="::ffff:192.0.2.200") == v4
    v6 = await _guest_id(client, ip="2001:db8:1:2::1")
    assert await _guest_id(client, ip="2001:db8:1:2:ffff:ffff:ffff:fffe") == v6  # the same /64
    assert await _guest_id(client, ip="2001:db8:1:3::1") != v6  # another /64
