"""Webhooks: signed POSTs from a durable outbox, retried, visible, and delivered after a crash."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from standardwebhooks import Webhook

from actors.core.records import PutDelivery
from actors.store.postgres import PostgresStore
from actors.store.sqlite import SqliteStore
from server.config import ConfigError
from server.webhooks import endpoints_of
from tests.conftest import HEADERS, ClientFactory, make_config, new_session
from tests.pg import create_database, database, drop_database
from tests.sse import read_until
from tests.test_cluster import _nodes
from tests.test_openapi import _Spec

Client = TestClient[Any, Any]

KEY = os.urandom(32)
SECRET = "whsec_" + base64.b64encode(KEY).decode()
FAST = {"backoff_seconds": 0.01, "max_backoff_seconds": 0.05, "poll_seconds": 0.05}
ENDS = {"task.completed", "task.failed", "task.cancelled", "task.interrupted"}


class Received(msgspec.Struct):
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return msgspec.json.decode(self.body)


class Receiver:
    """A real HTTP receiver: answers ``fail`` statuses first (one per request), then 200; with
    ``hold``, the first request waits for ``release`` before it is answered."""

    def __init__(self, fail: list[int] | None = None, *, hold: bool = False, body: bytes = b"nope") -> None:
        self.fail = list(fail or [])
        self.hold = hold
        self.body = body
        self.release = asyncio.Event()
        self.got: list[Received] = []
        self._arrived = asyncio.Condition()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        async with self._arrived:
            self.got.append(Received({k.lower(): v for k, v in request.headers.items()}, body))
            first = len(self.got) == 1
            self._arrived.notify_all()
        if self.hold and first:
            await self.release.wait()
        if self.fail:
            return web.Response(status=self.fail.pop(0), body=self.body)
        return web.Response(status=204)

    async def wait_for(self, count: int) -> list[Received]:
        async with asyncio.timeout(15), self._arrived:
            await self._arrived.wait_for(lambda: len(self.got) >= count)
        return list(self.got)


@pytest.fixture
async def receive(aiohttp_server: Any) -> Callable[..., Any]:
    async def start(*args: Any, **kwargs: Any) -> Receiver:
        rx = Receiver(*args, **kwargs)
        app = web.Application()
        app.router.add_post("/hook", rx.handle)
        app.router.add_post("/elsewhere", rx.handle)

        async def moved(request: web.Request) -> web.Response:
            raise web.HTTPFound("/elsewhere")

        app.router.add_post("/moved", moved)

        async def stall(request: web.Request) -> web.Response:
            await asyncio.Event().wait()  # never answers (until the test ends)
            raise AssertionError("unreachable")

        app.router.add_post("/stall", stall)
        server: TestServer = await aiohttp_server(app)
        rx.url = str(server.make_url("/hook"))
        return rx

    return start


def _endpoint(url: str, **fields: Any) -> dict[str, Any]:
    return {"endpoints": {"rx": {"url": url, "secret": SECRET, **fields}}, **FAST}


@pytest.fixture(params=["sqlite", "postgres"])
async def store_kind(request: Any) -> AsyncIterator[dict[str, Any]]:
    """The [store] section of a test server: SQLite in tmp_path, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield {}
        return
    async with database() as dsn:
        yield {"kind": "postgres", "postgres_dsn": dsn}


def verify_with_the_standard_library(received: Received, key: bytes) -> None:
    """The Standard Webhooks check, written out: HMAC-SHA256 of "{id}.{timestamp}.{body}"."""
    h = received.headers
    signed = f"{h['webhook-id']}.{h['webhook-timestamp']}.".encode() + received.body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert f"v1,{expected}" in h["webhook-signature"].split(" ")
    assert abs(time.time() - int(h["webhook-timestamp"])) < 300


async def deliveries(client: Client, **query: Any) -> dict[str, Any]:
    resp = await client.get("/v1/webhooks/deliveries", params=query)
    assert resp.status == 200, await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


async def until_settled(client: Client, count: int = 1, **query: Any) -> list[dict[str, Any]]:
    """The deliveries once ``count`` of them are no longer pending. The outcome of an attempt is
    written after the receiver answered, with no event to await: polled, with a deadline."""
    async with asyncio.timeout(15):
        while True:
            items = (await deliveries(client, **query))["items"]
            if len([d for d in items if d["status"] != "pending"]) >= count:
                return items  # type: ignore[no-any-return]
            await asyncio.sleep(0.02)


async def test_a_receiver_that_fails_three_times_gets_it_once_more_under_the_same_id(
    make_client: ClientFactory, receive: Any, store_kind: dict[str, Any]
) -> None:
    rx = await receive([500, 503, 502])
    client = await make_client(webhooks=_endpoint(rx.url), store=store_kind)
    s = await new_session(client, end_user_id="u1", namespace="support")
    sent = await (await client.post(f"/v1/sessions/{s['id']}/messages", json={"content": "hello"})).json()

    got = await rx.wait_for(4)
    items = await until_settled(client)
    assert len(rx.got) == 4, "delivered more than once after it was accepted"
    assert len({g.headers["webhook-id"] for g in got}) == 1, "each attempt must carry the same webhook-id"
    assert len({g.body for g in got}) == 1
    for g in got:
        verify_with_the_standard_library(g, KEY)
        assert Webhook(SECRET).verify(g.body, g.headers)["type"] == "task.completed"  # the reference verifier
        assert g.headers["content-type"] == "application/json"
    payload = got[-1].json
    assert payload["type"] == "task.completed"
    data = payload["data"]
    assert data["session_id"] == s["id"] and data["task_id"] == sent["task_id"]
    assert data["message_id"] == sent["message"]["id"] and data["usage"] == sent["usage"]
    assert data["namespace"] == "support" and data["end_user_id"] == "u1"
    assert items[0]["id"] == got[0].headers["webhook-id"]
    assert items[0]["status"] == "delivered" and items[0]["attempts"] == 4
    assert items[0]["last_status"] == 204 and items[0]["last_error"] is None
    assert items[0]["delivered_at"] is not None and items[0]["next_attempt_at"] is None
    metrics = await (await client.get("/metrics")).text()
    assert 'sessiond_webhook_attempts_total{endpoint="rx",outcome="retry"} 3.0' in metrics
    assert 'sessiond_webhook_attempts_total{endpoint="rx",outcome="delivered"} 1.0' in metrics


async def test_the_deliveries_route_shows_failures_with_their_last_error(
    make_client: ClientFactory, receive: Any, store_kind: dict[str, Any]
) -> None:
    rx = await receive([500] * 10, body=b"receiver exploded" + b"!" * 2_000_000)  # read 4 KiB of it at most
    moved, stalled = rx.url.replace("/hook", "/moved"), rx.url.replace("/hook", "/stall")
    config = {
        "endpoints": {
            "broken": {"url": rx.url, "secret": SECRET, "events": ["task.completed"]},
            "moved": {"url": moved, "secret": SECRET, "events": ["task.completed"]},
            "stalled": {"url": stalled, "secret": SECRET, "events": ["task.completed"]},
        },
        "max_attempts": 2,
        "timeout_seconds": 0.5,
        **FAST,
    }
    client = await make_client(webhooks=config, store=store_kind)
    s = await new_session(client)
    assert (await client.post(f"/v1/sessions/{s['id']}/messages", json={"content": "hi"})).status == 200

    items = await until_settled(client, 3)
    by_endpoint = {d["endpoint"]: d for d in items}
    broken, redirected = by_endpoint["broken"], by_endpoint["moved"]
    assert broken["status"] == "failed" and broken["attempts"] == 2 and broken["last_status"] == 500
    assert "HTTP 500" in broken["last_error"] and "receiver exploded" in broken["last_error"]
    assert len(broken["last_error"]) <= 500
    slow = by_endpoint["stalled"]
    assert slow["status"] == "failed" and slow["last_status"] is None
    assert slow["last_error"] == "no answer within 0.5s"
    assert redirected["status"] == "failed" and redirected["last_status"] == 302
    assert "redirects are not followed" in redirected["last_error"]
    # The redirect was not followed: /elsewhere (the same receiver) never heard of it.
    assert len(rx.got) == 2 and all(g.headers["webhook-id"] == broken["id"] for g in rx.got)
    assert broken["event_type"] == "task.completed" and broken["session_id"] == s["id"]

    # The answer is what the OpenAPI document says it is.
    spec = _Spec(await (await client.get("/openapi.json")).json())
    resp = await client.get("/v1/webhooks/deliveries")
    spec.validate("GET", "/v1/webhooks/deliveries", resp.status, resp.headers["Content-Type"], await resp.json())

    # Filters and pages.
    assert [d["endpoint"] for d in (await deliveries(client, endpoint="moved"))["items"]] == ["moved"]
    assert len((await deliveries(client, status="failed"))["items"]) == 3
    assert (await deliveries(client, status="delivered"))["items"] == []
    pages = [await deliveries(client, limit=2)]
    pages.append(await deliveries(client, limit=2, cursor=pages[0]["next_cursor"]))
    assert pages[0]["next_cursor"] and pages[1]["next_cursor"] is None
    assert [d["id"] for p in pages for d in p["items"]] == [d["id"] for d in items]
    assert (await client.get("/v1/webhooks/deliveries", params={"status": "lost"})).status == 422
    assert (await client.get("/v1/webhooks/deliveries", params={"cursor": "garbage"})).status == 422


async def test_end_users_and_session_tokens_cannot_read_deliveries(make_client: ClientFactory, receive: Any) -> None:
    rx = await receive()
    client = await make_client(webhooks=_endpoint(rx.url))
    s = await new_session(client, end_user_id="u1", with_token=True)
    await client.post(f"/v1/sessions/{s['id']}/messages", json={"content": "hi"})
    await until_settled(client)
    as_user = await client.get("/v1/webhooks/deliveries", headers={"X-End-User-ID": "u1"})
    assert as_user.status == 403 and as_user.content_type == "application/problem+json"
    bare = aiohttp.ClientSession(str(client.make_url("")))
    try:
        token = {"Authorization": f"Bearer {s['access_token']}"}
        async with bare.get("/v1/webhooks/deliveries", headers=token) as r:
            assert r.status == 403
        async with bare.get("/v1/webhooks/deliveries") as r:
            assert r.status == 401
    finally:
        await bare.close()


async def test_events_reach_only_the_endpoints_that_want_them(make_client: ClientFactory, receive: Any) -> None:
    rx, other = await receive(), await receive()
    config = {
        "endpoints": {
            "all": {"url": rx.url, "secret": SECRET},
            "other": {"url": other.url, "secret": SECRET, "namespaces": ["elsewhere"]},
        },
        **FAST,
    }
    client = await make_client(webhooks=config, tools={"approval": {"calculator": "always"}})
    s = await new_session(client, tools=["calculator"])
    sid = s["id"]
    resp = await client.post(
        f"/v1/sessions/{sid}/messages", json={"content": '/tool calculator {"expression": "6 * 7"}', "stream": True}
    )
    asked = (await read_until(resp, "tool.approval_requested"))[-1]
    cancelled = await client.post(f"/v1/sessions/{sid}/cancel")
    assert cancelled.status == 200
    await read_until(resp, ENDS)
    assert (await client.delete(f"/v1/sessions/{sid}")).status == 204

    got = await rx.wait_for(3)
    types = [g.json["type"] for g in got]
    assert sorted(types) == ["session.deleted", "task.cancelled", "tool.approval_requested"]
    approval = next(g.json["data"] for g in got if g.json["type"] == "tool.approval_requested")
    assert approval["call_id"] == asked.data["call_id"] and approval["name"] == "calculator"
    assert approval["arguments"] == {"expression": "6 * 7"} and approval["event_id"] == asked.id
    deleted = next(g.json["data"] for g in got if g.json["type"] == "session.deleted")
    assert deleted["session_id"] == sid
    assert len({g.headers["webhook-id"] for g in got}) == 3
    # The session is gone; its deliveries are not (they outlive it until delivered).
    await until_settled(client, 3)
    assert other.got == [], "an endpoint for another namespace heard of this one"


async def test_a_server_sigkilled_before_the_receiver_answered_delivers_once_back(
    server_process: Any, receive: Any, store_kind: dict[str, Any], tmp_path: Path
) -> None:
    rx = await receive(hold=True)
    env = {
        "SESSIOND_WEBHOOKS_ENDPOINTS": f'{{ rx = {{ url = "{rx.url}", secret = "{SECRET}" }} }}',
        "SESSIOND_WEBHOOKS_POLL_SECONDS": "0.05",
        # The node restarted under its own name takes back its lease on the row at once.
        "SESSIOND_CLUSTER_NODE_ID": "node-a",
    }
    for key, value in store_kind.items():
        env[f"SESSIOND_STORE_{key.upper()}"] = value
    srv = server_process(env=env)
    url = srv.start()
    async with aiohttp.ClientSession(url, headers=HEADERS) as http:
        async with http.post("/v1/sessions", json={}) as r:
            sid = (await r.json())["id"]
        async with http.post(f"/v1/sessions/{sid}/messages", json={"content": "hi"}) as r:
            task_id = (await r.json())["task_id"]
    first = (await rx.wait_for(1))[0]
    srv.kill()  # the row is committed; its delivery was under way, never answered
    rx.release.set()

    again = server_process(env=env)
    url = again.start()
    got = await rx.wait_for(2)
    async with aiohttp.ClientSession(url, headers=HEADERS) as http:
        async with asyncio.timeout(15):
            while True:
                async with http.get("/v1/webhooks/deliveries") as r:
                    items = (await r.json())["items"]
                if items and items[0]["status"] == "delivered":
                    break
                await asyncio.sleep(0.02)
    assert len(got) == 2 and got[1].headers["webhook-id"] == first.headers["webhook-id"]
    assert got[1].body == first.body and got[1].json["data"]["task_id"] == task_id
    verify_with_the_standard_library(got[1], KEY)
    assert items[0]["id"] == first.headers["webhook-id"] and items[0]["attempts"] == 1
    assert len(rx.got) == 2


# -- the outbox itself -----------------------------------------------------------------------


@pytest.fixture
async def outbox_store(store_kind: dict[str, Any], tmp_path: Path) -> AsyncIterator[SqliteStore | PostgresStore]:
    store: SqliteStore | PostgresStore
    if store_kind:
        store = PostgresStore(store_kind["postgres_dsn"])
    else:
        store = SqliteStore(tmp_path / "outbox.db")
    await store.open()
    try:
        yield store
    finally:
        await store.aclose()


async def test_two_nodes_claiming_at_once_never_share_a_row(outbox_store: SqliteStore | PostgresStore) -> None:
    now = time.time()
    rows = [PutDelivery(f"whk_{i:03d}", "rx", "ses_x", "task.completed", b"{}", now - 1) for i in range(40)]
    await outbox_store.commit(rows)
    a, b = await asyncio.gather(
        outbox_store.claim_deliveries("node-a", now, 60, 25), outbox_store.claim_deliveries("node-b", now, 60, 25)
    )
    ids_a, ids_b = {d.id for d in a}, {d.id for d in b}
    assert not ids_a & ids_b
    assert ids_a | ids_b == {r.id for r in rows} and max(len(a), len(b)) == 25
    assert await outbox_store.claim_deliveries("node-c", now, 60, 100) == []  # all leased
    one = a[0]
    assert one.body == b"{}" and one.attempts == 0
    # Only the lease holder records an outcome; a lapsed lease lets another node take the row.
    finish = {"status": "pending", "attempts": 1, "next_attempt_at": now, "last_error": "HTTP 500",
              "last_status": 500, "delivered_at": None}
    assert not await outbox_store.finish_delivery(one.id, "node-c", **finish)  # type: ignore[arg-type]
    assert await outbox_store.finish_delivery(one.id, "node-a" if one in a else "node-b", **finish)  # type: ignore[arg-type]
    retaken = await outbox_store.claim_deliveries("node-c", now + 61, 60, 100)
    assert {d.id for d in retaken} == {r.id for r in rows}
    assert next(d for d in retaken if d.id == one.id).attempts == 1
    assert await outbox_store.release_deliveries("node-c") == 40


def test_endpoints_are_checked_when_the_server_starts(tmp_path: Path) -> None:
    def load(**endpoint: Any) -> Any:
        section = {"url": "https://hooks.example.com/x", "secret": SECRET, **endpoint}
        return endpoints_of(make_config(tmp_path, webhooks={"endpoints": {"e": section}}), env={"HOOK": SECRET})

    assert load()[0].secret == KEY
    assert load(secret="", secret_env="HOOK")[0].secret == KEY
    for bad, words in (
        ({"url": "ftp://hooks.example.com/x"}, "http:// or https://"),
        ({"url": "https://user:pw@hooks.example.com/x"}, "credentials"),
        ({"secret": "plain-secret"}, "whsec_"),
        ({"secret": "whsec_!!!"}, "base64"),
        ({"secret": "whsec_" + base64.b64encode(b"short").decode()}, "at least 16"),
        ({"secret_env": "HOOK"}, "exactly one"),
        ({"secret": "", "secret_env": "UNSET_VARIABLE"}, "not set"),
        ({"events": ["task.started"]}, "choose from"),
    ):
        with pytest.raises(ConfigError, match=words):
            load(**bad)


def test_namespaces_and_agents_choose_the_sessions_an_endpoint_hears_of() -> None:
    from actors.core.events import MessageCompleted, TaskCompleted, TaskFailed
    from actors.core.records import SessionRecord
    from actors.core.tree import Node, Usage
    from actors.core.webhooks import Outbox, WebhookEndpoint

    outbox = Outbox([
        WebhookEndpoint("support", "http://x/", KEY, namespaces=frozenset({"support"})),
        WebhookEndpoint("triage", "http://x/", KEY, agents=frozenset({"triage"}), events=frozenset({"task.failed"})),
        WebhookEndpoint("default-agent", "http://x/", KEY, agents=frozenset({"default"})),
    ])

    def heard(record: SessionRecord, *events: Any) -> list[str]:
        return sorted(r.endpoint for r in outbox.for_events(record, events, range(1, len(events) + 1)))

    reply = Node("msg_r", "msg_u", "assistant", "hi", "2026-12-01T00:00:00Z")
    done = (MessageCompleted("tsk_1", reply, Usage(1, 2, 3), "sim"), TaskCompleted("tsk_1"))
    plain = SessionRecord("ses_a", "default", "t", "t")
    assert heard(plain, *done) == ["default-agent"]
    assert heard(SessionRecord("ses_b", "support", "t", "t", agent_id="triage"), *done) == ["support"]
    assert heard(SessionRecord("ses_c", "other", "t", "t", agent_id="triage"), TaskFailed("tsk_2", "x")) == ["triage"]
    row = outbox.for_events(plain, done, [7, 8])[0]
    body = msgspec.json.decode(row.body)
    assert body["type"] == "task.completed" and body["data"]["event_id"] == 8
    assert body["data"]["message_id"] == "msg_r" and body["data"]["usage"] == {"prompt": 1, "completion": 2, "total": 3}


@pytest.fixture
async def cluster(redis_url: str) -> AsyncIterator[dict[str, str]]:
    """Cluster mode for server processes: a fresh PostgreSQL database, our Redis database."""
    dsn = await create_database()
    try:
        yield {
            "SESSIOND_STORE_KIND": "postgres",
            "SESSIOND_STORE_POSTGRES_DSN": dsn,
            "SESSIOND_FANOUT_KIND": "redis",
            "SESSIOND_REDIS_URL": redis_url,
            "SESSIOND_CLUSTER_PREFIX": f"t{os.urandom(4).hex()}",
            "SESSIOND_TOKENS_SECRET": base64.urlsafe_b64encode(os.urandom(48)).decode(),
        }
    finally:
        await drop_database(dsn)


@pytest.mark.slow
async def test_in_a_cluster_each_delivery_is_made_by_one_node_at_a_time(
    server_process: Any, cluster: dict[str, str], tmp_path: Path, aiohttp_server: Any
) -> None:
    seen: dict[str, int] = {}
    done = asyncio.Event()
    sessions = 30

    async def once_failing(request: web.Request) -> web.Response:
        await request.read()
        wid = request.headers["webhook-id"]
        seen[wid] = seen.get(wid, 0) + 1
        if sum(1 for n in seen.values() if n >= 2) >= sessions:
            done.set()
        return web.Response(status=503 if seen[wid] == 1 else 200)  # each one fails once

    app = web.Application()
    app.router.add_post("/hook", once_failing)
    server = await aiohttp_server(app)
    url = str(server.make_url("/hook"))
    hooks = {
        "SESSIOND_WEBHOOKS_ENDPOINTS": f'{{ rx = {{ url = "{url}", secret = "{SECRET}" }} }}',
        "SESSIOND_WEBHOOKS_POLL_SECONDS": "0.02",
        "SESSIOND_WEBHOOKS_BACKOFF_SECONDS": "0.01",
        "SESSIOND_WEBHOOKS_MAX_BACKOFF_SECONDS": "0.02",
    }
    nodes = _nodes(server_process, {**cluster, **hooks}, 2, tmp_path)
    urls = [n.start() for n in nodes]
    async with aiohttp.ClientSession(headers=HEADERS) as http:

        async def converse(i: int) -> None:
            async with http.post(f"{urls[i % 2]}/v1/sessions", json={}) as r:
                sid = (await r.json())["id"]
            async with http.post(f"{urls[(i + 1) % 2]}/v1/sessions/{sid}/messages", json={"content": "hi"}) as r:
                assert r.status == 200, await r.text()

        await asyncio.gather(*(converse(i) for i in range(sessions)))
        await asyncio.wait_for(done.wait(), 30)
        async with asyncio.timeout(15):
            while True:
                async with http.get(f"{urls[0]}/v1/webhooks/deliveries", params={"limit": 200}) as r:
                    items = (await r.json())["items"]
                if len(items) == sessions and all(d["status"] == "delivered" for d in items):
                    break
                await asyncio.sleep(0.02)
    assert len(seen) == sessions and set(seen.values()) == {2}, "a delivery was made twice after it was accepted"
    assert all(d["attempts"] == 2 for d in items)
