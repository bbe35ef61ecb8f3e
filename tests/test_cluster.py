"""Cluster mode: real server processes sharing the real Redis and a real PostgreSQL database."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from actors.agent.backends.simulated import SimulatedProvider
from actors.cluster.forward import RemoteSession
from actors.cluster.node import Cluster, ClusterSettings
from actors.core.commands import CancelTask, GetMessages, GetSession, Navigate, Passivate, PatchSession, SendMessage
from actors.core.errors import (
    ActorStoppedError,
    ConflictError,
    NotFoundError,
    OverloadedError,
    PreconditionFailedError,
    TaskRunningError,
)
from actors.core.replies import MessagePage, TaskHandle
from actors.registry import Registry
from actors.session.actor import ActorSettings, SessionActor
from actors.store.postgres import PostgresStore
from server import sse
from server.admission import Admission
from server.appkeys import REGISTRY
from server.config import AdmissionSection
from tests.conftest import HEADERS, ClientFactory, ServerProcess
from tests.pg import create_database, database, drop_database
from tests.sse import Frames, events, read_until

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
                ids = [e.id for e in got if e.id is not None]
                assert len(ids) == len(got), "every event has an id"
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
            frame=sse.frame,
            cluster=Cluster(
                redis_url, ClusterSettings(node_id=f"race{i}", prefix=prefix, lease_ms=5000), frame=sse.frame
            ),
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
            details = await remote.ask(GetSession())
            assert details.id == record.id and local.id == record.id
    finally:
        for r in registries:
            await r.drain()
        for s in stores:
            await s.aclose()
        await drop_database(dsn)


@asynccontextmanager
async def _two_nodes(redis_url: str, name: str) -> AsyncIterator[tuple[Registry, Registry]]:
    """Two registries on one new PostgreSQL database and Redis prefix (the simulated model at
    20 tokens/s, 400 a reply), started; drained and dropped after."""
    dsn = await create_database()
    prefix = f"t{secrets.token_hex(4)}"
    stores = [PostgresStore(dsn) for _ in range(2)]
    a, b = (
        Registry(
            s,
            SimulatedProvider(tokens_per_second=20, reply_tokens=400),
            settings=ActorSettings(),
            idle_seconds=60,
            frame=sse.frame,
            cluster=Cluster(
                redis_url, ClusterSettings(node_id=f"{name}{i}", prefix=prefix, lease_ms=5000), frame=sse.frame
            ),
        )
        for i, s in enumerate(stores)
    )
    try:
        for s in stores:
            await s.open()
        for r in (a, b):
            await r.start()
        yield a, b
    finally:
        for r in (a, b):
            await r.drain()
        for s in stores:
            await s.aclose()
        await drop_database(dsn)


async def test_forwarded_replies_and_errors_keep_their_types(redis_url: str) -> None:
    """Two nodes on the same Redis and PostgreSQL: a command asked on the node that does not
    own the session answers with the reply type it names, and fails with the error class a
    local ask raises: 404, 412 and 409 keep their code, and the stop of a session whose lease
    moved is an ActorStoppedError, the one error the edge retries by looking the session up
    again."""
    async with _two_nodes(redis_url, "typed") as (a, b):
        record = await a.create(Registry.new_record(namespace="default"))
        local = await a.get(record.id)
        remote = await b.get(record.id)
        assert isinstance(local, SessionActor) and isinstance(remote, RemoteSession)

        with pytest.raises(NotFoundError) as missing:
            await remote.ask(Navigate(message_id="msg_missing"))
        assert (missing.value.status, missing.value.code) == (404, "not_found")
        assert "msg_missing" in missing.value.detail
        with pytest.raises(PreconditionFailedError) as stale:
            await remote.ask(PatchSession(title="stale", if_match=record.version + 7))
        assert (stale.value.status, stale.value.code) == (412, "version_mismatch")
        with pytest.raises(ConflictError) as idle:
            await remote.ask(CancelTask())
        assert type(idle.value) is ConflictError and idle.value.status == 409

        handle = await remote.ask(SendMessage(content="a long answer"))
        assert isinstance(handle, TaskHandle) and handle.subscription is None
        with pytest.raises(TaskRunningError) as busy:
            await remote.ask(SendMessage(content="too soon"))
        assert (busy.value.status, busy.value.code) == (409, "task_running")
        assert await remote.ask(CancelTask()) == handle.task_id
        outcome = await asyncio.wait_for(handle.done, 10)
        assert outcome.status == "cancelled" and outcome.message.role == "assistant"
        page = await remote.ask(GetMessages())
        assert isinstance(page, MessagePage)
        assert [n.role for n, _, _ in page.items] == ["user", "assistant"]

        # The session moves: its actor on the first node stops, the second node takes the lease.
        assert await local.ask(Passivate(0)) is True
        await local.wait_stopped()
        assert a.cluster is not None
        await a.cluster.leases.release(record.id)
        moved = await b.get(record.id)
        assert isinstance(moved, SessionActor)
        with pytest.raises(ActorStoppedError) as stopped:
            await remote.ask(GetSession())  # still addressed to the first node
        assert stopped.value.status == 503 and stopped.value.retry_after == 1
        # What the edge does on ActorStoppedError: look the session up again and ask again.
        again = await b.get(record.id)
        details = await again.ask(GetSession())
        assert details.id == record.id and details.message_count == 2


async def test_a_forwarded_task_is_admitted_against_its_owners_load(redis_url: str) -> None:
    """A task asked through another node starts on the session's owner: the owner's own
    [admission] max_running_tasks refuses it there (503 overloaded, on the asking node too),
    as it would a request of its own; reads still pass."""
    async with _two_nodes(redis_url, "admit") as (a, b):
        owner_admission = Admission(AdmissionSection(max_running_tasks=1))
        a.admit_task = lambda: owner_admission.check_task(a.stats.tasks_running)
        busy, other = [await a.create(Registry.new_record(namespace="default")) for _ in range(2)]
        running = await (await a.get(busy.id)).ask(SendMessage(content="a long answer"))
        assert isinstance(running, TaskHandle) and a.stats.tasks_running == 1
        assert isinstance(await a.get(other.id), SessionActor)
        remote = await b.get(other.id)
        assert isinstance(remote, RemoteSession)
        with pytest.raises(OverloadedError) as full:
            await remote.ask(SendMessage(content="one more"))
        assert (full.value.status, full.value.code) == (503, "overloaded") and full.value.retry_after
        assert (await remote.ask(GetSession())).message_count == 0, "refused before the session saw it"
        assert await (await a.get(busy.id)).ask(CancelTask()) == running.task_id
        await asyncio.wait_for(running.done, 10)
        started = await remote.ask(SendMessage(content="now"))
        assert isinstance(started, TaskHandle)
        assert await remote.ask(CancelTask()) == started.task_id


@pytest.fixture
async def dsn() -> AsyncIterator[str]:
    async with database() as url:
        yield url


async def test_a_remote_stream_is_byte_for_byte_the_local_one(
    dsn: str, redis_url: str, make_client: ClientFactory, tmp_path: Path
) -> None:
    # dsn comes first: the database is dropped only after the servers using it have stopped.
    prefix = f"t{secrets.token_hex(4)}"
    sections: dict[str, Any] = {
        "store": {"kind": "postgres", "postgres_dsn": dsn},
        "fanout": {"kind": "redis"},
        "redis": {"url": redis_url},
    }
    owner = await make_client(tmp_path / "a", cluster={"node_id": "a", "prefix": prefix}, **sections)
    other = await make_client(tmp_path / "b", cluster={"node_id": "b", "prefix": prefix}, **sections)
    async with owner.post("/v1/sessions", json={"tools": ["calculator"]}) as r:
        assert r.status == 201
        sid = (await r.json())["id"]
    async with (
        owner.get(f"/v1/sessions/{sid}/stream", headers={"Last-Event-ID": "0"}) as local,
        other.get(f"/v1/sessions/{sid}/stream", headers={"Last-Event-ID": "0"}) as remote,
    ):
        assert sid in owner.app[REGISTRY] and sid not in other.app[REGISTRY]  # b reads it from Redis
        content = 'naïve "quotes" ☕\n/tool calculator {"expression": "6*7"}'
        async with other.post(f"/v1/sessions/{sid}/messages", json={"content": content}) as r:
            assert r.status == 200, await r.text()
        here = await Frames(local).until("task.completed")
        there = await Frames(remote).until("task.completed")
    assert b"event: tool.result" in b"".join(here) and b"event: message.delta" in b"".join(here)
    assert there == here


async def test_a_waiting_tool_call_is_approved_on_another_node_and_survives_its_owner(
    server_process: Any, cluster_env: dict[str, str], tmp_path: Any
) -> None:
    a, b = _nodes(server_process, cluster_env, 2, tmp_path)
    url_a, url_b = a.start(), b.start()
    async with aiohttp.ClientSession(headers=HEADERS) as http:
        body = {"name": "careful", "tools": ["calculator"], "approval": "always"}
        async with http.post(f"{url_a}/v1/agents", json=body) as r:
            agent = (await r.json())["id"]

        async def ask(url: str, sid: str, expression: str) -> tuple[aiohttp.ClientResponse, str]:
            content = f'/tool calculator {{"expression": "{expression}"}}'
            r = await http.post(f"{url}/v1/sessions/{sid}/messages", json={"content": content, "stream": True})
            asked = (await asyncio.wait_for(read_until(r, "tool.approval_requested"), 10))[-1]
            return r, asked.data["call_id"]

        async with http.post(f"{url_a}/v1/sessions", json={"agent_id": agent}) as r:
            sid = (await r.json())["id"]
        # Owned by a, approved through b: the decision is forwarded, the task goes on on a.
        stream, call_id = await ask(url_a, sid, "6 * 7")
        async with http.post(f"{url_b}/v1/sessions/{sid}/tool-calls/{call_id}/approve") as r:
            assert r.status == 200, await r.text()
        done = await asyncio.wait_for(read_until(stream, TERMINAL), 10)
        stream.close()
        assert done[-1].event == "task.completed"
        assert next(e.data for e in done if e.event == "tool.result")["output"] == "42"

        # The owner dies while the next call waits: b takes the session over, still waiting.
        stream, call_id = await ask(url_a, sid, "2 ** 5")
        stream.close()
        a.kill()
        for _ in range(100):  # bounded: each failed try waits out one forward timeout (1 s)
            async with http.post(f"{url_b}/v1/sessions/{sid}/tool-calls/{call_id}/approve") as r:
                if r.status == 200:
                    break
                assert r.status == 503 and r.headers.get("Retry-After"), await r.text()
        else:
            raise AssertionError("the surviving node never took the approval")
        async with http.get(f"{url_b}/v1/sessions/{sid}/stream") as r:
            tail = await asyncio.wait_for(read_until(r, TERMINAL), 10)
        assert tail[-1].event == "task.completed"
        assert next(e.data for e in tail if e.event == "tool.result")["output"] == "32"
        async with http.get(f"{url_b}/v1/sessions/{sid}/messages") as r:
            answer = (await r.json())["items"][-1]
        assert answer["content"] == "calculator: 32" and answer["status"] == "completed"
