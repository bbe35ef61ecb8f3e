"""Session tokens: what they grant, rotation with reuse detection, tampering, revocation, logs."""

from __future__ import annotations

import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp.test_utils import TestClient

from server.appkeys import STORE, TOKENS
from server.auth.keys import create_key
from tests.conftest import HEADERS, ClientFactory, new_session
from tests.sse import read_until

Client = TestClient[Any, Any]


@pytest.fixture
async def browser(client: Client) -> AsyncIterator[aiohttp.ClientSession]:
    """A client of the same server holding no API key: what a browser has."""
    async with aiohttp.ClientSession(base_url=str(client.make_url(""))) as session:
        yield session


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def problem(resp: aiohttp.ClientResponse, status: int) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    body: dict[str, Any] = await resp.json(content_type=None)
    return body


async def test_with_token_gives_a_pair_that_converses_in_its_session(
    client: Client, browser: aiohttp.ClientSession
) -> None:
    resp = await client.post("/v1/sessions", json={"with_token": True, "title": "mine"})
    assert resp.status == 201 and resp.headers["Cache-Control"] == "no-store"
    s = await resp.json()
    assert s["token_type"] == "Bearer"
    assert s["expires_in"] == 900
    assert s["refresh_token"].startswith("rt_")
    claims = jwt.decode(s["access_token"], options={"verify_signature": False})
    assert jwt.get_unverified_header(s["access_token"])["alg"] == "HS256"
    assert claims["sid"] == s["id"] and claims["ns"] == "default"
    assert claims["exp"] - claims["iat"] == 900
    assert {"iss", "aud", "jti"} <= claims.keys()

    h = bearer(s["access_token"])
    sent = await browser.post(f"/v1/sessions/{s['id']}/messages", json={"content": "hello"}, headers=h)
    assert sent.status == 200, await sent.text()
    answer = (await sent.json())["message"]["content"]
    history = await browser.get(f"/v1/sessions/{s['id']}/messages", headers=h)
    assert [m["content"] for m in (await history.json())["items"]] == ["hello", answer]
    assert (await browser.get(f"/v1/sessions/{s['id']}/tree", headers=h)).status == 200
    assert (await browser.get(f"/v1/sessions/{s['id']}/checkpoints", headers=h)).status == 200


async def test_a_token_may_do_nothing_else(client: Client, browser: aiohttp.ClientSession) -> None:
    mine = await new_session(client, with_token=True)
    other = await new_session(client, title="someone else's")
    h = bearer(mine["access_token"])
    # Another session does not exist, as far as this token can tell.
    for method, path in [
        ("GET", f"/v1/sessions/{other['id']}/messages"),
        ("POST", f"/v1/sessions/{other['id']}/messages"),
        ("GET", f"/v1/sessions/{other['id']}"),
        ("DELETE", f"/v1/sessions/{other['id']}"),
        ("GET", f"/v1/sessions/{other['id']}/stream"),
    ]:
        body = await problem(await browser.request(method, path, headers=h, json={"content": "x"}), 404)
        assert "someone else's" not in str(body)
    # Its own session, but not a conversation route; and everything outside sessions.
    for method, path in [
        ("GET", "/v1/sessions"),
        ("POST", "/v1/sessions"),
        ("DELETE", f"/v1/sessions/{mine['id']}"),
        ("PATCH", f"/v1/sessions/{mine['id']}"),
        ("POST", f"/v1/sessions/{mine['id']}/tokens"),
        ("POST", "/v1/guests/sessions"),
    ]:
        body = await problem(await browser.request(method, path, headers=h, json={}), 403)
        assert body["code"] == "forbidden"
    assert (await client.get(f"/v1/sessions/{mine['id']}")).status == 200  # nothing was deleted


async def test_stream_accepts_the_token_in_the_query_and_nowhere_else(
    client: Client, browser: aiohttp.ClientSession
) -> None:
    s = await new_session(client, with_token=True)
    token = s["access_token"]
    sent = await browser.post(f"/v1/sessions/{s['id']}/messages", json={"content": "hi"}, headers=bearer(token))
    assert sent.status == 200
    stream = await browser.get(f"/v1/sessions/{s['id']}/stream?last_event_id=0&token={token}")
    assert stream.status == 200
    got = await read_until(stream, "task.completed")
    stream.close()
    assert got[0].event == "task.started" and got[-1].event == "task.completed"
    await problem(await browser.get(f"/v1/sessions/{s['id']}/messages?token={token}"), 401)
    await problem(await browser.post(f"/v1/sessions/{s['id']}/messages?token={token}", json={"content": "x"}), 401)


async def test_mint_tokens_for_an_existing_session(client: Client, browser: aiohttp.ClientSession) -> None:
    s = await new_session(client, end_user_id="alice")
    resp = await client.post(f"/v1/sessions/{s['id']}/tokens")
    assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
    pair = await resp.json()
    assert pair["session_id"] == s["id"] and pair["token_type"] == "Bearer" and pair["expires_in"] == 900
    assert jwt.decode(pair["access_token"], options={"verify_signature": False})["uid"] == "alice"
    got = await browser.get(f"/v1/sessions/{s['id']}/messages", headers=bearer(pair["access_token"]))
    assert got.status == 200
    # A key acting for another end user cannot mint for alice's session; alice's can.
    await problem(await client.post(f"/v1/sessions/{s['id']}/tokens", headers={"X-End-User-ID": "bob"}), 404)
    assert (await client.post(f"/v1/sessions/{s['id']}/tokens", headers={"X-End-User-ID": "alice"})).status == 200
    await problem(await client.post("/v1/sessions/ses_nope/tokens"), 404)


async def test_refresh_rotates_and_a_reused_token_revokes_the_family(
    client: Client, browser: aiohttp.ClientSession
) -> None:
    s = await new_session(client, with_token=True)
    first_access, rt1 = s["access_token"], s["refresh_token"]
    r = await browser.post("/v1/tokens/refresh", headers=bearer(rt1))
    assert r.status == 200
    second = await r.json()
    assert second["refresh_token"] != rt1 and second["access_token"] != first_access
    assert second["session_id"] == s["id"]
    r = await browser.post("/v1/tokens/refresh", headers=bearer(second["refresh_token"]))
    assert r.status == 200
    third = await r.json()
    path = f"/v1/sessions/{s['id']}/messages"
    assert (await browser.get(path, headers=bearer(third["access_token"]))).status == 200

    # rt1 comes back (a thief's copy): refused, and every token of the grant dies with it.
    body = await problem(await browser.post("/v1/tokens/refresh", headers=bearer(rt1)), 401)
    assert "already used" in body["detail"]
    await problem(await browser.post("/v1/tokens/refresh", headers=bearer(third["refresh_token"])), 401)
    for access in (first_access, second["access_token"], third["access_token"]):
        await problem(await browser.get(path, headers=bearer(access)), 401)
    # Another grant of the same session is untouched.
    other = await (await client.post(f"/v1/sessions/{s['id']}/tokens")).json()
    assert (await browser.get(path, headers=bearer(other["access_token"]))).status == 200


async def test_refresh_and_access_tokens_are_not_interchangeable(
    client: Client, browser: aiohttp.ClientSession
) -> None:
    s = await new_session(client, with_token=True)
    await problem(await browser.get(f"/v1/sessions/{s['id']}/messages", headers=bearer(s["refresh_token"])), 401)
    stream = await browser.get(f"/v1/sessions/{s['id']}/stream?token={s['refresh_token']}")
    await problem(stream, 401)
    await problem(await browser.post("/v1/tokens/refresh", headers=bearer(s["access_token"])), 401)
    await problem(await browser.post("/v1/tokens/refresh"), 401)
    await problem(await browser.post("/v1/tokens/refresh", headers=bearer("rt_madeup")), 401)
    # An API key is not a refresh token either.
    await problem(await client.post("/v1/tokens/refresh"), 401)
    # The refresh token was not spent by any of that.
    assert (await browser.post("/v1/tokens/refresh", headers=bearer(s["refresh_token"]))).status == 200


def _forge(claims: dict[str, Any], key: str, **changes: Any) -> str:
    return jwt.encode({**claims, **changes}, key, algorithm="HS256")


async def test_expired_and_tampered_tokens_are_refused(client: Client, browser: aiohttp.ClientSession) -> None:
    s = await new_session(client, with_token=True)
    secret = client.app[TOKENS].secret
    good = s["access_token"]
    claims = jwt.decode(good, options={"verify_signature": False})
    path = f"/v1/sessions/{s['id']}/messages"
    assert (await browser.get(path, headers=bearer(_forge(claims, secret)))).status == 200  # the forge is faithful

    header, payload, _sig = good.split(".")
    unsigned = jwt.encode(claims, "", algorithm="none")  # PyJWT takes "" as the None key of alg none (typed str)
    now = int(time.time())
    forged = {
        "expired": _forge(claims, secret, iat=now - 2000, exp=now - 1000),
        "alg none": unsigned,
        "alg none, signature kept": unsigned.rstrip(".") + "." + _sig,
        "wrong signature": _forge(claims, "another-secret-that-is-long-enough-0123456789"),
        "signature of another token": f"{header}.{payload}.{_forge(claims, secret, jti='x').split('.')[2]}",
        "wrong aud": _forge(claims, secret, aud="someone-else"),
        "wrong iss": _forge(claims, secret, iss="someone-else"),
        "no exp": jwt.encode({k: v for k, v in claims.items() if k != "exp"}, secret, algorithm="HS256"),
        "HS512": jwt.encode(claims, secret, algorithm="HS512"),
        "another session": _forge(claims, secret, sid="ses_other"),
        "garbage": "not.a.token",
    }
    for name, token in forged.items():
        body = await problem(await browser.get(path, headers=bearer(token)), 401)
        assert body["code"] == "unauthorized", name
    body = await problem(await browser.get(path, headers=bearer(forged["expired"])), 401)
    assert "expired" in body["detail"]


async def test_deleting_a_session_revokes_its_tokens(client: Client, browser: aiohttp.ClientSession) -> None:
    s = await new_session(client, with_token=True)
    assert (await client.delete(f"/v1/sessions/{s['id']}")).status == 204
    await problem(await browser.get(f"/v1/sessions/{s['id']}/messages", headers=bearer(s["access_token"])), 401)
    await problem(await browser.post("/v1/tokens/refresh", headers=bearer(s["refresh_token"])), 401)


async def test_revoking_the_minting_key_stops_refresh(client: Client, browser: aiohttp.ClientSession) -> None:
    store = client.app[STORE]
    record, key = await create_key(store, "backend")
    s = await new_session(client)
    pair = await (await client.post(f"/v1/sessions/{s['id']}/tokens", headers={"X-API-Key": key})).json()
    assert (await browser.post("/v1/tokens/refresh", headers=bearer(pair["refresh_token"]))).status == 200
    pair2 = await (await client.post(f"/v1/sessions/{s['id']}/tokens", headers={"X-API-Key": key})).json()
    assert await store.revoke_api_key(record.id, "2026-01-01T00:00:00Z")
    await problem(await browser.post("/v1/tokens/refresh", headers=bearer(pair2["refresh_token"])), 401)


async def test_secret_is_made_once_private_and_kept(make_client: ClientFactory, tmp_path: Path) -> None:
    data = tmp_path / "kept"
    first = await make_client(data_dir=data)
    s = await new_session(first, with_token=True)
    secret_file = data / "jwt_secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert s["access_token"].split(".")[2]  # signed
    await first.close()
    second = await make_client(data_dir=data)  # a restart on the same data dir
    async with aiohttp.ClientSession(base_url=str(second.make_url(""))) as browser:
        got = await browser.get(f"/v1/sessions/{s['id']}/messages", headers=bearer(s["access_token"]))
        assert got.status == 200
        assert (await browser.post("/v1/tokens/refresh", headers=bearer(s["refresh_token"]))).status == 200


async def test_a_configured_secret_is_used(make_client: ClientFactory, tmp_path: Path) -> None:
    secret = "a-configured-secret-of-enough-length-0123456789"
    client = await make_client(tokens={"secret": secret, "access_ttl_seconds": 60, "audience": "my-app"})
    s = await new_session(client, with_token=True)
    claims = jwt.decode(s["access_token"], secret, algorithms=["HS256"], audience="my-app")
    assert claims["exp"] - claims["iat"] == 60 and s["expires_in"] == 60
    assert not (tmp_path / "data" / "jwt_secret").exists()


async def test_tokens_never_reach_the_access_log(server_process: Any, tmp_path: Path) -> None:
    proc = server_process(env={"SESSIOND_LOG_ACCESS": "true"})
    url = proc.start()
    async with aiohttp.ClientSession(base_url=url) as http:
        s = await (await http.post("/v1/sessions", json={"with_token": True}, headers=HEADERS)).json()
        token = s["access_token"]
        stream = await http.get(f"/v1/sessions/{s['id']}/stream?token={token}&last_event_id=0")
        assert stream.status == 200
        stream.close()
        bad = await http.get(f"/v1/sessions/{s['id']}/stream?access_token={token}")
        assert bad.status == 401
        refreshed = await http.post("/v1/tokens/refresh", headers=bearer(s["refresh_token"]))
        assert refreshed.status == 200
    assert proc.terminate() == 0
    assert proc.proc is not None and proc.proc.stdout is not None
    log = "\n".join(proc.output) + proc.proc.stdout.read().decode()
    assert "/stream?" in log and "[redacted]" in log  # the requests were logged...
    for secret in (token, s["refresh_token"], token.split(".")[2]):
        assert secret not in log  # ...without their tokens
