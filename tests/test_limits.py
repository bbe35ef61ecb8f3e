"""Rate limits: exact under concurrency (memory, and Redis across two server processes), 429 with
Retry-After, refused messages not counted, tokens per day, per-key and per-end-user limits."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import HEADERS, ClientFactory, new_session

Client = TestClient[Any, Any]

# Fast, short answers; room for every admitted message to queue behind the running one.
FAST = {"simulated": {"tokens_per_second": 0, "reply_tokens": 3}, "sessions": {"max_queued": 64}}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def assert_rate_limited(resp: aiohttp.ClientResponse, *, within: int) -> dict[str, Any]:
    assert resp.status == 429, await resp.text()
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    retry = int(resp.headers["Retry-After"])
    assert 1 <= retry <= within
    body: dict[str, Any] = await resp.json(content_type=None)
    assert body["code"] == "rate_limited" and body["status"] == 429
    return body


async def _send(
    http: aiohttp.ClientSession, url: str, session: dict[str, Any], text: str
) -> tuple[int, dict[str, Any]]:
    resp = await http.post(
        f"{url}/v1/sessions/{session['id']}/messages?queue=true",
        json={"content": text},
        headers=bearer(session["access_token"]),
    )
    if resp.status == 429:
        return 429, await assert_rate_limited(resp, within=3600)
    body = await resp.json(content_type=None)
    return resp.status, body


async def test_200_concurrent_sends_admit_exactly_20(make_client: ClientFactory) -> None:
    client = await make_client(**FAST)
    s = await (await client.post("/v1/guests/sessions", json={"ip": "192.0.2.10", "fingerprint": "f"})).json()
    url = str(client.make_url("")).rstrip("/")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as browser:
        results = await asyncio.gather(*(_send(browser, url, s, f"m{i}") for i in range(200)))
    statuses = Counter(status for status, _ in results)
    assert statuses == {200: 20, 429: 180}, statuses
    assert all(body["status"] == "completed" for status, body in results if status == 200)
    usage = await (await client.get(f"/v1/guests/{s['guest']['id']}/usage")).json()
    assert usage["messages_this_hour"] == 20 and usage["messages_today"] == 20
    history = await (await client.get(f"/v1/sessions/{s['id']}/messages")).json()
    assert history["total"] == 40  # 20 questions, 20 answers: nothing refused got in


@pytest.mark.slow
@pytest.mark.redis
async def test_two_processes_on_redis_admit_exactly_20(server_process: Any, redis_url: str, tmp_path: Path) -> None:
    env = {
        "SESSIOND_LIMITS_BACKEND": "redis",
        "SESSIOND_REDIS_URL": redis_url,
        # Every node must share the secret: guest witnesses are keyed by it, tokens signed with it.
        "SESSIOND_TOKENS_SECRET": "a-cluster-wide-secret-0123456789abcdef",
        "SESSIOND_SIMULATED_REPLY_TOKENS": "3",
        "SESSIOND_SESSIONS_MAX_QUEUED": "64",
    }
    for node in ("a", "b"):
        (tmp_path / node).mkdir()
    a = server_process(env=env, data_dir=tmp_path / "a" / "data")
    b = server_process(env=env, data_dir=tmp_path / "b" / "data")
    url_a, url_b = a.start(), b.start()
    async with aiohttp.ClientSession(headers=HEADERS) as backend:
        # The visitor arrives at node A, then (another network, same browser) at node B.
        ra = await backend.post(f"{url_a}/v1/guests/sessions", json={"ip": "192.0.2.1", "fingerprint": "fp"})
        rb = await backend.post(f"{url_b}/v1/guests/sessions", json={"ip": "198.51.100.1", "fingerprint": "fp"})
        assert ra.status == rb.status == 201
        sa, sb = await ra.json(), await rb.json()
    assert sa["guest"]["id"] == sb["guest"]["id"], "both nodes must see one guest"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as browser:
        sends = [_send(browser, url_a, sa, f"a{i}") for i in range(100)]
        sends += [_send(browser, url_b, sb, f"b{i}") for i in range(100)]
        results = await asyncio.gather(*sends)
    statuses = Counter(status for status, _ in results)
    assert statuses == {200: 20, 429: 180}, statuses
    async with aiohttp.ClientSession(headers=HEADERS) as backend:
        for url in (url_a, url_b):
            usage = await (await backend.get(f"{url}/v1/guests/{sa['guest']['id']}/usage")).json()
            assert usage["messages_this_hour"] == 20
        answered = 0
        for url, s in ((url_a, sa), (url_b, sb)):
            history = await (await backend.get(f"{url}/v1/sessions/{s['id']}/messages")).json()
            answered += history["total"] // 2
    assert answered == 20


async def test_a_refused_message_is_not_counted(make_client: ClientFactory) -> None:
    client = await make_client(limits={"guest_messages_per_hour": 2}, **FAST)
    s = await (await client.post("/v1/guests/sessions", json={"ip": "192.0.2.20"})).json()
    path = f"/v1/sessions/{s['id']}/messages"
    stale = await client.post(path, json={"content": "x"}, headers={"If-Match": '"999"'})
    assert stale.status == 412
    bad_parent = await client.post(path, json={"content": "x", "parent_id": "msg_nope"})
    assert bad_parent.status == 404
    usage = await (await client.get(f"/v1/guests/{s['guest']['id']}/usage")).json()
    assert usage["messages_this_hour"] == 0
    assert (await client.post(path, json={"content": "one"})).status == 200
    assert (await client.post(path, json={"content": "two"})).status == 200
    body = await assert_rate_limited(await client.post(path, json={"content": "three"}), within=3600)
    assert "2 messages this hour" in body["detail"]


async def test_regenerate_and_edit_count_as_messages(make_client: ClientFactory) -> None:
    client = await make_client(limits={"guest_messages_per_hour": 2}, **FAST)
    s = await (await client.post("/v1/guests/sessions", json={"ip": "192.0.2.21"})).json()
    sent = await (await client.post(f"/v1/sessions/{s['id']}/messages", json={"content": "q"})).json()
    regen = await client.post(f"/v1/sessions/{s['id']}/messages/{sent['message']['id']}/regenerate", json={})
    assert regen.status == 200
    edit = await client.post(
        f"/v1/sessions/{s['id']}/messages/{sent['message']['parent_id']}/edit", json={"content": "q2"}
    )
    await assert_rate_limited(edit, within=3600)
    # Reading and navigating cost nothing.
    assert (await client.get(f"/v1/sessions/{s['id']}/messages")).status == 200
    nav = await client.post(f"/v1/sessions/{s['id']}/navigate", json={"message_id": sent["message"]["id"]})
    assert nav.status == 200


async def test_tokens_per_day(make_client: ClientFactory) -> None:
    client = await make_client(
        limits={"guest_tokens_per_day": 10}, simulated={"tokens_per_second": 0, "reply_tokens": 20}
    )
    s = await (await client.post("/v1/guests/sessions", json={"ip": "192.0.2.30"})).json()
    path = f"/v1/sessions/{s['id']}/messages"
    first = await client.post(path, json={"content": "tell me"})
    assert first.status == 200
    used = (await first.json())["usage"]["total"]
    assert used > 10
    body = await assert_rate_limited(await client.post(path, json={"content": "more"}), within=86400)
    assert "tokens today" in body["detail"]
    usage = await (await client.get(f"/v1/guests/{s['guest']['id']}/usage")).json()
    assert usage["tokens_today"] == used and usage["messages_today"] == 1


async def test_tokens_of_a_streamed_answer_count_even_if_the_client_leaves(make_client: ClientFactory) -> None:
    client = await make_client(
        limits={"guest_tokens_per_day": 10}, simulated={"tokens_per_second": 200, "reply_tokens": 20}
    )
    s = await (await client.post("/v1/guests/sessions", json={"ip": "192.0.2.31"})).json()
    resp = await client.post(f"/v1/sessions/{s['id']}/messages", json={"content": "x", "stream": True})
    assert resp.status == 200
    await resp.content.readline()
    resp.close()  # gone mid-answer
    # The answer goes on without the client; its tokens are counted when it ends.
    again = await client.get(f"/v1/sessions/{s['id']}/stream")
    async for line in again.content:
        if line.startswith(b"event: task.completed"):
            break
    again.close()
    usage = await (await client.get(f"/v1/guests/{s['guest']['id']}/usage")).json()
    assert usage["tokens_today"] > 10
    late = await client.post(f"/v1/sessions/{s['id']}/messages", json={"content": "y"})
    await assert_rate_limited(late, within=86400)


async def test_limits_per_api_key_and_per_end_user(make_client: ClientFactory) -> None:
    client = await make_client(
        limits={
            "keys": {"config": {"messages_per_hour": 3}},
            "end_users": {"alice": {"messages_per_day": 1}, "*": {"messages_per_day": 2}},
        },
        **FAST,
    )
    alice = await new_session(client, end_user_id="alice")
    bob = await new_session(client, end_user_id="bob")
    nobody = await new_session(client)

    async def send(s: dict[str, Any]) -> aiohttp.ClientResponse:
        return await client.post(f"/v1/sessions/{s['id']}/messages", json={"content": "hi"})

    assert (await send(alice)).status == 200
    body = await assert_rate_limited(await send(alice), within=86400)
    assert "user:alice" in body["detail"]
    assert (await send(bob)).status == 200
    assert (await send(bob)).status == 200  # "*" gives bob 2 a day
    body = await assert_rate_limited(await send(nobody), within=3600)  # the key's 3 an hour are spent
    assert "key:config" in body["detail"]


async def test_guest_limits_can_be_turned_off(make_client: ClientFactory) -> None:
    client = await make_client(limits={"guest_messages_per_hour": 0, "guest_messages_per_day": 0}, **FAST)
    s = await (await client.post("/v1/guests/sessions", json={"ip": "192.0.2.40"})).json()
    for i in range(3):
        assert (await client.post(f"/v1/sessions/{s['id']}/messages", json={"content": f"{i}"})).status == 200
    usage = await (await client.get(f"/v1/guests/{s['guest']['id']}/usage")).json()
    assert usage["messages_this_hour"] == 3 and usage["limits"]["messages_per_hour"] == 0


async def test_redis_backend_counts_and_refuses_in_one_process(make_client: ClientFactory, redis_url: str) -> None:
    client = await make_client(
        limits={"backend": "redis", "guest_messages_per_hour": 2}, redis={"url": redis_url}, **FAST
    )
    s = await (await client.post("/v1/guests/sessions", json={"ip": "192.0.2.50"})).json()
    path = f"/v1/sessions/{s['id']}/messages"
    assert (await client.post(path, json={"content": "x"}, headers={"If-Match": '"999"'})).status == 412
    assert (await client.post(path, json={"content": "one"})).status == 200
    assert (await client.post(path, json={"content": "two"})).status == 200
    await assert_rate_limited(await client.post(path, json={"content": "three"}), within=3600)
    usage = await (await client.get(f"/v1/guests/{s['guest']['id']}/usage")).json()
    assert usage["messages_this_hour"] == 2


async def test_redis_backend_keys_live_under_the_cluster_prefix(make_client: ClientFactory, redis_url: str) -> None:
    """Two deployments sharing a Redis are told apart (and cleaned) by [cluster] prefix."""
    import redis.asyncio as aioredis

    client = await make_client(
        limits={"backend": "redis", "guest_messages_per_hour": 5},
        redis={"url": redis_url},
        cluster={"prefix": "deploy-a"},
        **FAST,
    )
    s = await (await client.post("/v1/guests/sessions", json={"ip": "192.0.2.60"})).json()
    assert (await client.post(f"/v1/sessions/{s['id']}/messages", json={"content": "one"})).status == 200
    conn = aioredis.from_url(redis_url)
    try:
        keys = [k.decode() for k in cast(list[bytes], await conn.keys("*"))]  # no decode_responses: bytes
    finally:
        await conn.aclose()
    assert any(k.startswith("deploy-a:limits:") for k in keys), keys
    assert any(k.startswith("deploy-a:guest:") for k in keys), keys
    assert not [k for k in keys if not k.startswith("deploy-a:")], keys


async def test_an_unreachable_redis_stops_the_start(tmp_path: Path, server_process: Any) -> None:
    proc = server_process(env={"SESSIOND_LIMITS_BACKEND": "redis", "SESSIOND_REDIS_URL": "redis://:pw@127.0.0.1:1/0"})
    with pytest.raises(RuntimeError) as err:
        proc.start()
    assert "does not answer" in str(err.value) and "pw" not in str(err.value)


@pytest.fixture
def private_redis() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A Redis server of this test's own (so the test may stop it), on a free port."""
    exe = shutil.which("redis-server")
    if exe is None:
        if os.environ.get("SESSIOND_REQUIRE_REDIS") == "1":
            pytest.fail("SESSIOND_REQUIRE_REDIS=1 but there is no redis-server to start")
        pytest.skip("no redis-server binary")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if b"Ready to accept connections" in line:
            break
    else:
        pytest.fail("redis-server did not start")
    try:
        yield f"redis://127.0.0.1:{port}/0", proc
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()


async def test_without_redis_messages_are_refused_not_let_through(
    make_client: ClientFactory, private_redis: tuple[str, subprocess.Popen[bytes]]
) -> None:
    url, redis_proc = private_redis
    client = await make_client(limits={"backend": "redis"}, redis={"url": url}, **FAST)
    s = await (await client.post("/v1/guests/sessions", json={"ip": "192.0.2.60"})).json()
    assert (await client.post(f"/v1/sessions/{s['id']}/messages", json={"content": "one"})).status == 200
    redis_proc.terminate()
    redis_proc.wait(10)
    for resp in (
        await client.post(f"/v1/sessions/{s['id']}/messages", json={"content": "two"}),
        await client.post("/v1/guests/sessions", json={"ip": "192.0.2.60"}),
        await client.get(f"/v1/guests/{s['guest']['id']}/usage"),
    ):
        assert resp.status == 503, await resp.text()
        assert resp.headers["Retry-After"] == "1"
        assert (await resp.json(content_type=None))["code"] == "unavailable"
    history = await (await client.get(f"/v1/sessions/{s['id']}/messages")).json()
    assert history["total"] == 2  # the refused message never reached the session
