"""Cluster mode: real server processes sharing the real Redis and a real PostgreSQL database."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from actors.agent.backends.simulated import SimulatedProvider
from actors.cluster.node import Cluster, ClusterSettings, RemoteSession
from actors.registry import Registry
from actors.session.actor import ActorSettings, SessionActor
from actors.store.postgres import PostgresStore
from tests.conftest import HEADERS, ServerProcess
from tests.pg import create_database, drop_database
from tests.sse import events, read_until

pytestmark = pytest.mark.slow
TERMINAL = {"task.completed", "task.failed", "task.cancelled", "task.interrupted"}


@pytest.fixture
async def cluster_env(redis_url: str) -> AsyncIterator[dict[str, str]]:
    dsn = await create_database()
    try:
        yield {
            "SESSIOND_STORE_KIND": "postgres",
            "SESSIOND_STORE_POSTGRES_DSN": dsn,
            "SESSIOND_FANOUT_KIND": "redis",
            "SESSIOND_REDIS_URL": redis_url,
            "SESSIOND_CLUSTER_PREFIX": f"t{secrets.token_hex(4)}",
            "SESSIOND_TOKENS_SECRET": secrets.token_urlsafe(48),  # one secret for every node
            "SESSIOND_CLUSTER_LEASE_MS": "2000",
            "SESSIOND_CLUSTER_FORWARD_TIMEOUT_SECONDS": "1",
        }
    finally:
        await drop_database(dsn)


def _nodes(
    server_process: Callable[..., ServerProcess], env: dict[str, str], n: int, tmp: Any, **extra: str
) -> list[ServerProcess]:
    return [
        server_process(env={**env, "SESSIOND_CLUSTER_NODE_ID": f"n{i}", **extra}, data_dir=tmp / f"node{i}")
        for i in range(n)
    ]


async def test_three_nodes_200_sessions_round_robin(
    server_process: Any, cluster_env: dict[str, str], tmp_path: Any
) -> None:
    # Generous leases: this test is about fan-out and forwarding under load, not failover.
    nodes = _nodes(
        server_process,
        cluster_env,
        3,
        tmp_path,
        SESSIOND_SIMULATED_REPLY_TOKENS="12",
        SESSIOND_CLUSTER_LEASE_MS="15000",
        SESSIOND_CLUSTER_FORWARD_TIMEOUT_SECONDS="10",
    )
    urls = [n.start() for n in nodes]
    limit = asyncio.Semaphore(40)
    async with aiohttp.ClientSession(headers=HEADERS) as http:

        async def one(i: int) -> None:
            async with limit:
                create, watch, send = urls[i % 3], urls[(i + 1) % 3], urls[(i + 2) % 3]
                async with http.post(f"{create}/v1/sessions", json={"title": f"s{i}"}) as r:
                    assert r.status == 201
                    sid = (await r.json())["id"]
                async with http.get(f"{watch}/v1/sessions/{sid}/stream", headers={"Last-Event-ID": "0"}) as stream:
                    assert stream.status == 200
                    reader = asyncio.create_task(read_until(stream, "task.completed"))
                    body = {"content": f"hello {i}", "stream": i % 2 == 1}
                    async with http.post(f"{send}/v1/sessions/{sid}/messages", json=body) as r:
                        assert r.status == 200, await r.text()
                        if body["stream"]:
                            # The sender's own stream, forwarded from the owner through Redis.
                            own = await read_until(r, "task.completed")
                            completed = next(e for e in own if e.event == "message.completed")
                            answer = {"message": completed.data["message"]}
                        else:
                            answer = await r.json()
                    got = await asyncio.wait_for(reader, 30)
                    if body["stream"]:
                        assert [e.id for e in own] == [e.id for e in got], "the sender sees what the watcher sees"
                ids = [e.id for e in got]
                assert ids == sorted(set(ids)), "every event once, in order"
                assert got[0].event == "task.started" and got[-1].event == "task.completed"
                deltas = "".join(e.data["delta"] for e in got if e.event == "message.delta")
                assert deltas == answer["message"]["content"] and len(deltas.split()) == 12

        await asyncio.gather(*(one(i) for i in range(200)))


async def test_sigkill_owner_moves_the_session(server_process: Any, cluster_env: dict[str, str], tmp_path: Any) -> None:
    a, b = _nodes(
        server_process,
        cluster_env,
        2,
        tmp_path,
        SESSIOND_SIMULATED_TOKENS_PER_SECOND="20",
        SESSIOND_SIMULATED_REPLY_TOKENS="400",
    )
    url_a, url_b = a.start(), b.start()
    async with aiohttp.ClientSession(headers=HEADERS) as http:
        async with http.post(f"{url_a}/v1/sessions", json={}) as r:
            sid = (await r.json())["id"]
        seen: list[Any] = []
        async with http.post(f"{url_a}/v1/sessions/{sid}/messages", json={"content": "busy", "stream": True}) as r:
            assert r.status == 200  # acknowledged: durable
            async for ev in events(r):
                seen.append(ev)
                if len(seen) == 5:
                    break
        a.kill()
        killed = time.monotonic()
        history: dict[str, Any] = {}
        for _ in range(100):  # bounded: each failed try waits out one forward timeout (1 s)
            async with http.get(f"{url_b}/v1/sessions/{sid}/messages") as r:
                if r.status == 200:
                    history = await r.json()
                    break
                assert r.status == 503 and r.headers.get("Retry-After")
        moved_after = time.monotonic() - killed
        assert history, "the session never answered from the surviving node"
        assert moved_after < 2.0 + 1.0 + 2.0, f"took {moved_after:.1f}s for a 2 s lease"
        assert [m["content"] for m in history["items"] if m["role"] == "user"] == ["busy"]
        last = seen[-1].id
        async with http.get(f"{url_b}/v1/sessions/{sid}/stream", headers={"Last-Event-ID": str(last)}) as r:
            tail = await asyncio.wait_for(read_until(r, TERMINAL), 10)
        assert tail[0].id > last, "no duplicate ids after the move"
        assert tail[-1].event == "task.interrupted"


async def test_two_nodes_racing_activate_exactly_one_actor(redis_url: str) -> None:
    dsn = await create_database()
    prefix = f"t{secrets.token_hex(4)}"
    stores = [PostgresStore(dsn) for _ in range(2)]
    registries = [
        Registry(
            s,
            SimulatedProvider(tokens_per_second=0, reply_tokens=3),
            settings=ActorSettings(),
            idle_seconds=60,
            cluster=Cluster(redis_url, ClusterSettings(node_id=f"race{i}", prefix=prefix, lease_ms=5000)),
        )
        for i, s in enumerate(stores)
    ]
    try:
        for s in stores:
            await s.open()
        for r in registries:
            await r.start()
        for _ in range(20):
            record = await registries[0].create(Registry.new_record(namespace="default"))
            got = await asyncio.gather(*(r.get(record.id) for r in registries))
            assert sorted(type(g).__name__ for g in got) == ["RemoteSession", "SessionActor"]
            assert sum(record.id in r for r in registries) == 1
            remote = next(g for g in got if isinstance(g, RemoteSession))
            local = next(g for g in got if isinstance(g, SessionActor))
            # A command on the other node is forwarded to the one actor and answered as if local.
            details = await remote.ask(__import__("actors.core.commands", fromlist=["GetSession"]).GetSession())
            assert details.id == record.id and local.id == record.id
    finally:
        for r in registries:
            await r.drain()
        for s in stores:
            await s.aclose()
        await drop_database(dsn)
