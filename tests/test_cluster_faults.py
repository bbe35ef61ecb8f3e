"""Cluster mode under faults: real server processes, real PostgreSQL, and a private redis-server
each test starts, stops and restarts (never the shared one).

The promise checked throughout: never a silent gap. A reader either gets every event after its
id, in order, once, or it is told ``stream.reset`` where it cannot; and every task's stream
ends with that task's own terminal event.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import asyncpg  # type: ignore[import-untyped]
import pytest
import redis.asyncio as aioredis

from tests.conftest import HEADERS, ServerProcess
from tests.faults import CuttingProxy, PrivateRedis
from tests.pg import create_database, drop_database
from tests.sse import SseEvent, events, read_until

pytestmark = pytest.mark.slow
TERMINAL = {"task.completed", "task.failed", "task.cancelled", "task.interrupted"}


@pytest.fixture
async def pg_dsn() -> AsyncIterator[str]:
    # Requested before server_process: the database is dropped after the servers stopped.
    dsn = await create_database()
    try:
        yield dsn
    finally:
        await drop_database(dsn)


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[PrivateRedis]:
    redis = PrivateRedis(tmp_path / "redis")
    await redis.start()
    try:
        yield redis
    finally:
        redis.stop()


def _env(dsn: str, redis: PrivateRedis, **extra: str) -> dict[str, str]:
    return {
        "SESSIOND_STORE_KIND": "postgres",
        "SESSIOND_STORE_POSTGRES_DSN": dsn,
        "SESSIOND_FANOUT_KIND": "redis",
        "SESSIOND_REDIS_URL": redis.url,
        "SESSIOND_CLUSTER_PREFIX": f"t{secrets.token_hex(4)}",
        "SESSIOND_TOKENS_SECRET": secrets.token_urlsafe(48),
        "SESSIOND_CLUSTER_LEASE_MS": "2000",
        "SESSIOND_CLUSTER_FORWARD_TIMEOUT_SECONDS": "1",
        **extra,
    }


class Nodes:
    """The nodes of one cluster a test started: node i is ``procs[i]`` at ``urls[i]``, named n<i>."""

    def __init__(self, procs: list[ServerProcess], urls: list[str], env: dict[str, str]) -> None:
        self.procs = procs
        self.urls = urls
        self.env = env  # the settings they share

    @property
    def prefix(self) -> str:
        return self.env["SESSIOND_CLUSTER_PREFIX"]


class StartNodes(Protocol):
    async def __call__(self, n: int = 2, *, dsn: dict[int, str] | None = None, **settings: str) -> Nodes: ...


@pytest.fixture
def start_nodes(
    pg_dsn: str, private_redis: PrivateRedis, server_process: Callable[..., ServerProcess], tmp_path: Path
) -> StartNodes:
    """Start ``n`` nodes on the test's database and private Redis, with ``settings`` (SESSIOND_*)
    on top of the cluster's defaults; ``dsn`` gives some nodes another way to the database (a
    CuttingProxy's)."""

    async def start(n: int = 2, *, dsn: dict[int, str] | None = None, **settings: str) -> Nodes:
        env = _env(pg_dsn, private_redis, **settings)
        procs = [
            server_process(
                env={
                    **env,
                    "SESSIOND_CLUSTER_NODE_ID": f"n{i}",
                    **({"SESSIOND_STORE_POSTGRES_DSN": dsn[i]} if dsn and i in dsn else {}),
                },
                data_dir=tmp_path / f"node{i}",
            )
            for i in range(n)
        ]
        # In threads: a proxy the nodes connect through runs on this loop.
        urls = [await asyncio.to_thread(p.start) for p in procs]
        return Nodes(procs, urls, env)

    return start


@pytest.fixture
async def pg_proxy(pg_dsn: str) -> AsyncIterator[tuple[CuttingProxy, str]]:
    """A connection-cutting proxy to PostgreSQL, and the test database's DSN through it.
    Requested before ``start_nodes``: it closes after the nodes stopped."""
    proxy = CuttingProxy("127.0.0.1", 5432)
    await proxy.start()
    try:
        yield proxy, pg_dsn.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    finally:
        await proxy.aclose()


def _count(node: ServerProcess, text: str) -> int:
    """How many lines of sessiond's own log (not a traceback's) hold ``text``."""
    return sum(1 for line in node.output if '"logger":"sessiond.' in line and text in line)


async def _owned_by(http: aiohttp.ClientSession, url: str) -> str:
    """A new session whose actor lives on the node at ``url``."""
    async with http.post(f"{url}/v1/sessions", json={}) as r:
        assert r.status == 201
        sid: str = (await r.json())["id"]
    async with http.get(f"{url}/v1/sessions/{sid}") as r:
        assert r.status == 200  # activated here: this node holds its lease
    return sid


async def _take(resp: aiohttp.ClientResponse, n: int, out: list[SseEvent]) -> None:
    """Read ``n`` more events of ``resp`` into ``out``."""
    got = 0
    async for ev in events(resp):
        out.append(ev)
        got += 1
        if got == n:
            return
    raise AssertionError("the stream ended early")


async def _resume(http: aiohttp.ClientSession, url: str, sid: str, last: int, deadline: float = 20) -> list[SseEvent]:
    """Resume ``sid`` on ``url`` after ``last`` until a task's end; 503 with Retry-After (the only
    other answer allowed while a node or Redis is coming back) is retried, bounded."""
    until = time.monotonic() + deadline
    got: list[SseEvent] = []
    while time.monotonic() < until:
        cursor = got[-1].id if got and got[-1].id is not None else last
        async with http.get(f"{url}/v1/sessions/{sid}/stream", headers={"Last-Event-ID": str(cursor)}) as r:
            if r.status != 200:
                assert r.status == 503 and r.headers.get("Retry-After"), (r.status, await r.text())
                continue
            got += await asyncio.wait_for(read_until(r, TERMINAL), 15)
            if got and got[-1].event in TERMINAL:
                return got
    raise AssertionError(f"no end of the task on {url} in {deadline}s: {[e.event for e in got]}")


def _assert_no_silent_gap(reference: list[int], after: int, got: list[SseEvent]) -> None:
    """Each event ``got`` (resumed after id ``after``) is the next one of ``reference`` (the ids
    the owner showed), unless a stream.reset came just before it: no skip without saying so."""
    order = {seq: i for i, seq in enumerate(reference)}
    ids = [e.id for e in got if e.event != "stream.reset"]
    assert len(ids) == len(set(ids)), "no event twice"
    prev, reset = after, False
    for ev in got:
        if ev.event == "stream.reset":
            reset = True
            continue
        assert ev.id is not None and ev.id > prev, "in order, nothing from before the resume point"
        if not reset:
            want = next((s for s in reference if s > prev), None)
            assert ev.id == want, f"silent gap: {ev.id} ({ev.event}) follows {prev}, not {want}"
        elif ev.id in order:
            pass  # past a reset the stream goes on wherever the server says
        prev, reset = ev.id, False


async def test_events_published_while_redis_is_down_are_retried_in_order(
    start_nodes: StartNodes, private_redis: PrivateRedis
) -> None:
    """Redis stops mid-answer (saving its keys) and comes back: the owner kept every event it
    could not publish and publishes them in order, so a client resuming through another node
    gets exactly what the owner's own stream had, with no reset."""
    nodes = await start_nodes(
        2,
        SESSIOND_SIMULATED_TOKENS_PER_SECOND="40",
        SESSIOND_SIMULATED_REPLY_TOKENS="80",
        SESSIOND_CLUSTER_LEASE_MS="15000",
    )
    a = nodes.procs[0]
    url_a, url_b = nodes.urls
    async with aiohttp.ClientSession(headers=HEADERS) as http:
        sid = await _owned_by(http, url_a)
        own: list[SseEvent] = []
        async with http.post(f"{url_a}/v1/sessions/{sid}/messages", json={"content": "hi", "stream": True}) as r:
            assert r.status == 200
            await _take(r, 5, own)
            await private_redis.shutdown_saving()
            await _take(r, 15, own)  # shown while Redis is away: kept for it
            await private_redis.start()
            own += await asyncio.wait_for(read_until(r, TERMINAL), 20)
        assert own[-1].event == "task.completed"
        start = own[0].id
        assert start is not None
        got = await _resume(http, url_b, sid, start - 1)
    assert [e.id for e in got] == [e.id for e in own], "through Redis, every event the owner showed, in order"
    assert not any(e.event == "stream.reset" for e in got)
    deltas = "".join(e.data["delta"] for e in got if e.event == "message.delta")
    completed = next(e for e in got if e.event == "message.completed")
    assert deltas == completed.data["message"]["content"]
    # One line when the outage begins and one summary when it ends, not a line per batch.
    assert _count(a, "publishing events to Redis failed") == 1, "\n".join(a.output)
    assert _count(a, "Redis takes events again after") == 1, "\n".join(a.output)


async def test_events_past_the_outbox_bound_reset_readers_who_missed_them(
    start_nodes: StartNodes, private_redis: PrivateRedis
) -> None:
    """With room for only a few events while Redis is away, the owner drops the rest and says
    so; a client resuming through another node is told stream.reset at the hole (never a
    silent skip) and still gets the task's end."""
    nodes = await start_nodes(
        2,
        SESSIOND_SIMULATED_TOKENS_PER_SECOND="40",
        SESSIOND_SIMULATED_REPLY_TOKENS="60",
        SESSIOND_CLUSTER_LEASE_MS="15000",
        SESSIOND_CLUSTER_OUTBOX_EVENTS="3",
    )
    a = nodes.procs[0]
    url_a, url_b = nodes.urls
    async with aiohttp.ClientSession(headers=HEADERS) as http:
        sid = await _owned_by(http, url_a)
        own: list[SseEvent] = []
        async with http.post(f"{url_a}/v1/sessions/{sid}/messages", json={"content": "hi", "stream": True}) as r:
            assert r.status == 200
            await _take(r, 5, own)
            await private_redis.shutdown_saving()  # its keys (the lease) come back with it
            await _take(r, 15, own)
            await private_redis.start()
            own += await asyncio.wait_for(read_until(r, TERMINAL), 20)
        assert own[-1].event == "task.completed"
        reference = [e.id for e in own if e.id is not None]
        last_seen = reference[4]  # what a client had read before the outage
        got = await _resume(http, url_b, sid, last_seen)
    assert got[-1].event == "task.completed" and got[-1].id == reference[-1]
    assert any(e.event == "stream.reset" for e in got), ("the hole is said, not skipped", got)
    _assert_no_silent_gap(reference, last_seen, got)
    assert any("cluster outbox full" in line for line in a.output)


async def test_sigkill_mid_answer_keeps_the_folded_text_and_resets_across_the_hole(
    start_nodes: StartNodes
) -> None:
    """The owner dies mid-answer. On every surviving node, the new owner included, a client
    that resumes from the last delta it saw gets no duplicate and no silent gap: stream.reset
    where the lost node's tail may be missing, then the task's own task.interrupted. The reply
    is stored interrupted with the text folded before the crash."""
    nodes = await start_nodes(
        3,
        SESSIOND_SIMULATED_TOKENS_PER_SECOND="40",
        SESSIOND_SIMULATED_REPLY_TOKENS="400",
        SESSIOND_SESSIONS_FOLD_SECONDS="0.2",
    )
    a = nodes.procs[0]
    url_a, url_b, url_c = nodes.urls
    async with aiohttp.ClientSession(headers=HEADERS) as http:
        sid = await _owned_by(http, url_a)
        own: list[SseEvent] = []
        async with http.post(f"{url_a}/v1/sessions/{sid}/messages", json={"content": "hi", "stream": True}) as r:
            assert r.status == 200
            began = time.monotonic()
            async for ev in events(r):
                own.append(ev)
                if ev.event == "message.delta" and time.monotonic() - began > 0.8:
                    break  # streamed for four folds
            a.kill()
        seen = "".join(e.data["delta"] for e in own if e.event == "message.delta")
        task_id = own[0].data["task_id"]
        last = own[-1].id
        assert last is not None
        tails = await asyncio.gather(_resume(http, url_b, sid, last), _resume(http, url_c, sid, last))
        for tail in tails:
            ids = [e.id for e in tail if e.event != "stream.reset"]
            assert all(i is not None and i > last for i in ids) and len(ids) == len(set(ids)), "no duplicate"
            assert tail[-1].event == "task.interrupted" and tail[-1].data["task_id"] == task_id
            assert "stream.reset" in [e.event for e in tail], "the lost node's tail is said to be missing"
            after = [e for e in tail if e.event == "message.delta"]
            # Whatever came before the reset is the owner's tail as Redis kept it, in order.
            assert [e.id for e in after] == sorted(e.id for e in after if e.id is not None)
        async with http.get(f"{url_b}/v1/sessions/{sid}/messages") as r:
            assert r.status == 200
            reply = (await r.json())["items"][-1]
    assert reply["role"] == "assistant" and reply["status"] == "interrupted"
    assert reply["content"], "the text folded before the crash is kept"
    assert seen.startswith(reply["content"]) or reply["content"].startswith(seen)
    assert reply["content"].startswith("Simulated")


async def test_sigkill_mid_answer_on_one_node_keeps_the_folded_text(server_process: Any, tmp_path: Path) -> None:
    """One node, SQLite: SIGKILL mid-answer and restart: the reply is interrupted with the text
    streamed up to the last fold, not empty."""
    env = {
        "SESSIOND_SIMULATED_TOKENS_PER_SECOND": "40",
        "SESSIOND_SIMULATED_REPLY_TOKENS": "400",
        "SESSIOND_SESSIONS_FOLD_SECONDS": "0.2",
    }
    node = server_process(env=env, data_dir=tmp_path / "data")
    url = node.start()
    async with aiohttp.ClientSession(headers=HEADERS) as http:
        async with http.post(f"{url}/v1/sessions", json={}) as r:
            sid = (await r.json())["id"]
        own: list[SseEvent] = []
        async with http.post(f"{url}/v1/sessions/{sid}/messages", json={"content": "hi", "stream": True}) as r:
            assert r.status == 200
            began = time.monotonic()
            async for ev in events(r):
                own.append(ev)
                # Ten folds' worth: a fold running late on a loaded machine still leaves most
                # of what was seen durable.
                if ev.event == "message.delta" and time.monotonic() - began > 2.0:
                    break
            node.kill()
        seen = "".join(e.data["delta"] for e in own if e.event == "message.delta")
        again = server_process(env=env, data_dir=tmp_path / "data")
        url = again.start()
        async with http.get(f"{url}/v1/sessions/{sid}/messages") as r:
            assert r.status == 200
            reply = (await r.json())["items"][-1]
        async with http.get(f"{url}/v1/sessions/{sid}/stream", headers={"Last-Event-ID": str(own[-1].id)}) as r:
            tail = await asyncio.wait_for(read_until(r, TERMINAL), 10)
    assert reply["status"] == "interrupted"
    assert len(reply["content"]) >= len(seen) // 2 and reply["content"], "up to the last fold, not empty"
    assert seen.startswith(reply["content"]) or reply["content"].startswith(seen)
    assert [e.event for e in tail] == ["stream.reset", "task.interrupted"], "said, then the task's end"


async def _to_the_end(resp: aiohttp.ClientResponse) -> list[SseEvent]:
    """Every event until the server ends the stream (a task's stream ends after its own end)."""
    return [ev async for ev in events(resp)]


async def _queue_behind(
    http: aiohttp.ClientSession, url_owner: str, url_other: str, sid: str
) -> tuple[aiohttp.ClientResponse, aiohttp.ClientResponse, list[SseEvent], asyncio.Task[Any]]:
    """A running streamed task on the owner; behind it, through the other node, a queued streamed
    send (its response, read to its first event) and a queued non-streamed one (a task awaiting
    its JSON answer)."""
    running = await http.post(f"{url_owner}/v1/sessions/{sid}/messages", json={"content": "one", "stream": True})
    assert running.status == 200
    head: list[SseEvent] = []
    await _take(running, 3, head)
    queued = await http.post(
        f"{url_other}/v1/sessions/{sid}/messages?queue=true", json={"content": "two", "stream": True}
    )
    assert queued.status == 200, await queued.text()

    async def plain() -> tuple[int, Any]:
        async with http.post(
            f"{url_other}/v1/sessions/{sid}/messages?queue=true", json={"content": "three", "stream": False}
        ) as r:
            return r.status, await r.json()

    answer = asyncio.create_task(plain())
    # Both are queued once the session's tree holds their user turns (bounded: a request in flight).
    until = time.monotonic() + 5
    while True:
        async with http.get(f"{url_owner}/v1/sessions/{sid}/tree") as r:
            users = {n["content"] for n in (await r.json())["nodes"] if n["role"] == "user"}
        if {"two", "three"} <= users:
            break
        assert time.monotonic() < until, "the queued sends never reached the session"
    return running, queued, head, answer


@pytest.mark.parametrize("how", ["cancel", "drain"])
async def test_every_queued_task_stream_ends_after_a_cancel_or_a_drain(
    start_nodes: StartNodes, how: str
) -> None:
    """A cancel (through the other node) or a drain (SIGTERM of the owner) with two tasks queued
    behind a running one: the running stream, on the owner, ends with its task's end; the
    queued streamed send, through the other node, ends with its own task's terminal event;
    the queued non-streamed send through the other node is answered 200 with its status."""
    nodes = await start_nodes(
        2,
        SESSIOND_SIMULATED_TOKENS_PER_SECOND="40",
        SESSIOND_SIMULATED_REPLY_TOKENS="400",
        SESSIOND_CLUSTER_LEASE_MS="15000",
        SESSIOND_CLUSTER_FORWARD_TIMEOUT_SECONDS="5",
    )
    a = nodes.procs[0]
    url_a, url_b = nodes.urls
    async with aiohttp.ClientSession(headers=HEADERS) as http:
        sid = await _owned_by(http, url_a)
        running, queued, head, answer = await _queue_behind(http, url_a, url_b, sid)
        want = "task.cancelled" if how == "cancel" else "task.interrupted"
        if how == "cancel":
            async with http.post(f"{url_b}/v1/sessions/{sid}/cancel") as r:
                assert r.status == 200, await r.text()
        else:
            assert a.terminate() == 0
        own = await asyncio.wait_for(read_until(running, TERMINAL), 10)
        theirs = await asyncio.wait_for(_to_the_end(queued), 10)
        status, body = await asyncio.wait_for(answer, 10)
        running.release()
        queued.release()
    assert own[-1].event == want and own[-1].data["task_id"] == head[0].data["task_id"]
    assert theirs, "the queued stream said something"
    assert theirs[-1].event == want, [e.event for e in theirs]
    assert theirs[-1].data["task_id"] != head[0].data["task_id"], "its own task's end, not the running one's"
    assert status == 200, body
    assert body["status"] == want.removeprefix("task.") and body["task_id"] not in (
        head[0].data["task_id"],
        theirs[-1].data["task_id"],
    )


async def test_every_queued_task_stream_ends_after_a_failover(
    start_nodes: StartNodes
) -> None:
    """SIGKILL of the owner with two tasks queued behind a running one: once another node has
    the session, the queued streamed send (through a survivor) ends with its own
    task.interrupted, and the queued non-streamed one is answered 200 ``interrupted``."""
    nodes = await start_nodes(
        2,
        SESSIOND_SIMULATED_TOKENS_PER_SECOND="40",
        SESSIOND_SIMULATED_REPLY_TOKENS="400",
        SESSIOND_CLUSTER_FORWARD_TIMEOUT_SECONDS="3",
    )
    a = nodes.procs[0]
    url_a, url_b = nodes.urls
    async with aiohttp.ClientSession(headers=HEADERS) as http:
        sid = await _owned_by(http, url_a)
        running, queued, head, answer = await _queue_behind(http, url_a, url_b, sid)
        a.kill()
        running.release()
        last = head[-1].id
        assert last is not None
        # A client resuming through the survivor: it becomes the owner once the lease expires.
        tail = await _resume(http, url_b, sid, last)
        theirs = await asyncio.wait_for(_to_the_end(queued), 10)
        status, body = await asyncio.wait_for(answer, 10)
        queued.release()
    assert tail[-1].event == "task.interrupted" and tail[-1].data["task_id"] == head[0].data["task_id"]
    assert theirs[-1].event == "task.interrupted", [e.event for e in theirs]
    assert theirs[-1].data["task_id"] != head[0].data["task_id"]
    assert "stream.reset" in [e.event for e in theirs], "the lost node's tail is said to be missing"
    assert status == 200, body
    assert body["status"] == "interrupted"


async def test_outages_answer_503_with_retry_after_and_readyz_says_so(
    pg_proxy: tuple[CuttingProxy, str], start_nodes: StartNodes, private_redis: PrivateRedis
) -> None:
    """Redis away: a send and a stream resume through a node that does not own the session, and
    an activation, answer 503 with Retry-After (never 500), and /readyz is not ready; once Redis
    is back the very first request is answered (stale connections reconnect). PostgreSQL away
    (its connections cut by a proxy): create and send answer 503 with Retry-After; once it is
    back the session answers again. sessiond logs no traceback for any of it, one line each."""
    proxy, through = pg_proxy
    nodes = await start_nodes(2, dsn={0: through, 1: through}, SESSIOND_CLUSTER_LEASE_MS="15000")
    a, b = nodes.procs
    url_a, url_b = nodes.urls
    async with aiohttp.ClientSession(headers=HEADERS) as http:
        sid = await _owned_by(http, url_a)
        async with http.post(f"{url_a}/v1/sessions", json={}) as r:
            dormant = (await r.json())["id"]  # stored, active nowhere

        await private_redis.shutdown_saving()
        for method, url, body in [
            ("POST", f"{url_b}/v1/sessions/{sid}/messages", {"content": "hi"}),
            ("GET", f"{url_b}/v1/sessions/{sid}/stream", None),
            ("GET", f"{url_a}/v1/sessions/{dormant}", None),
        ]:
            async with http.request(method, url, json=body) as r:
                assert r.status == 503 and r.headers.get("Retry-After"), (url, r.status, await r.text())
                assert r.content_type == "application/problem+json"
        async with http.get(f"{url_a}/readyz") as r:
            ready = await r.json()
            assert r.status == 503 and ready["status"] == "not_ready" and ready["checks"]["redis"] != "ok"
        await private_redis.start()
        async with http.get(f"{url_a}/readyz") as r:
            assert r.status == 200, await r.text()
        async with http.post(f"{url_b}/v1/sessions/{sid}/messages", json={"content": "back"}) as r:
            assert r.status == 200, await r.text()  # the first request after the restart
            assert (await r.json())["status"] == "completed"

        await proxy.cut()
        async with http.post(f"{url_a}/v1/sessions", json={}) as r:
            assert r.status == 503 and r.headers.get("Retry-After"), await r.text()
        async with http.post(f"{url_a}/v1/sessions/{sid}/messages", json={"content": "down"}) as r:
            assert r.status == 503 and r.headers.get("Retry-After"), await r.text()
        async with http.get(f"{url_a}/readyz") as r:
            assert r.status == 503 and (await r.json())["checks"]["store"] != "ok"
        await proxy.restore()
        until = time.monotonic() + 10
        while True:  # the pool reconnects; until then 503 with Retry-After is the only answer
            async with http.post(f"{url_a}/v1/sessions/{sid}/messages", json={"content": "again"}) as r:
                if r.status == 200:
                    break
                assert r.status == 503 and r.headers.get("Retry-After"), await r.text()
            assert time.monotonic() < until, "the session never answered again"
        async with http.get(f"{url_b}/v1/sessions/{sid}/messages") as r:
            users = [m["content"] for m in (await r.json())["items"] if m["role"] == "user"]
    assert users[0] == "back" and users[-1] == "again" and "hi" not in users
    for node in (a, b):
        ours = [line for line in node.output if '"logger":"sessiond.' in line]
        assert not [line for line in ours if "Traceback" in line], "\n".join(ours)
        # Each outage is said once, however many requests met it (and summed up once it ends).
        assert _count(node, "\"msg\":\"Redis unreachable (") == 1, "\n".join(ours)
    assert _count(a, "store unreachable (") == 1, "\n".join(a.output)
    assert _count(a, "store reachable again after") == 1, "\n".join(a.output)


async def test_redis_restarted_empty_mid_answer_leaves_one_actor(
    start_nodes: StartNodes, private_redis: PrivateRedis
) -> None:
    """Redis comes back empty (its leases gone) while the owner streams an answer; sends then
    arrive through both nodes. The old owner cannot prove its lease, so it takes none: exactly
    one actor runs the session, the user turns form one line (no siblings), and no reply is
    left ``running`` while the session is idle."""
    nodes = await start_nodes(
        2,
        SESSIOND_SIMULATED_TOKENS_PER_SECOND="40",
        SESSIOND_SIMULATED_REPLY_TOKENS="400",
        SESSIOND_SESSIONS_FOLD_SECONDS="0.2",
        SESSIOND_CLUSTER_LEASE_MS="3000",
    )
    url_a, url_b = nodes.urls
    async with aiohttp.ClientSession(headers=HEADERS) as http:
        sid = await _owned_by(http, url_a)
        own: list[SseEvent] = []
        async with http.post(f"{url_a}/v1/sessions/{sid}/messages", json={"content": "busy", "stream": True}) as r:
            assert r.status == 200
            await _take(r, 5, own)
            private_redis.kill()
            await private_redis.start()  # empty: no lease, no stream

            async def send(url: str, content: str) -> tuple[int, Any]:
                until = time.monotonic() + 15
                while True:
                    path = f"{url}/v1/sessions/{sid}/messages?queue=true"
                    async with http.post(path, json={"content": content}) as s:
                        if s.status == 200:
                            return s.status, await s.json()
                        assert s.status == 503 and s.headers.get("Retry-After"), (s.status, await s.text())
                    assert time.monotonic() < until, "never answered"

            answers = await asyncio.gather(send(url_a, "via a"), send(url_b, "via b"))
            tail = await asyncio.wait_for(_to_the_end(r), 15)
        seen = [*own, *tail]
        if seen[-1].event not in TERMINAL:
            # The old owner stopped, writing and showing nothing more; the client resumes by
            # its id, where the session lives now, and gets its task's end.
            last = seen[-1].id
            assert last is not None
            seen += await _resume(http, url_a, sid, last)
        assert seen[-1].event == "task.interrupted" and seen[-1].data["task_id"] == own[0].data["task_id"]
        async with http.get(f"{url_b}/v1/sessions/{sid}/tree") as r:
            tree = await r.json()
        async with http.get(f"{url_a}/v1/sessions/{sid}") as r:
            session = await r.json()
    assert all(status == 200 for status, _ in answers)
    by_id = {n["id"]: n for n in tree["nodes"]}
    users = [n for n in tree["nodes"] if n["role"] == "user"]
    assert sorted(u["content"] for u in users) == ["busy", "via a", "via b"]
    for u in users:
        siblings = [n for n in tree["nodes"] if n["parent_id"] == u["parent_id"] and n["role"] == "user"]
        assert len(siblings) == 1, f"user turns became siblings: {[s['content'] for s in siblings]}"
    assert session["status"] == "idle"
    assert not [n for n in by_id.values() if n["status"] == "running"], "a reply left running while idle"


async def test_stream_maxlen_trims_across_nodes_with_a_reset_never_a_gap(
    start_nodes: StartNodes
) -> None:
    """With ``stream_maxlen = 20``: a resume through another node from an id still in the
    Redis stream gets exactly the owner's events after it; from an id trimmed away, it gets
    stream.reset first (never a silent jump)."""
    nodes = await start_nodes(
        2,
        SESSIOND_SIMULATED_REPLY_TOKENS="60",
        SESSIOND_CLUSTER_STREAM_MAXLEN="20",
        SESSIOND_CLUSTER_LEASE_MS="15000",
    )
    url_a, url_b = nodes.urls
    async with aiohttp.ClientSession(headers=HEADERS) as http:
        sid = await _owned_by(http, url_a)
        async with http.post(f"{url_a}/v1/sessions/{sid}/messages", json={"content": "hi", "stream": True}) as r:
            own = await asyncio.wait_for(read_until(r, TERMINAL), 20)
        ids = [e.id for e in own if e.id is not None]
        assert len(ids) > 40
        kept_from = ids[-15]  # within the last 20
        recent = await _resume(http, url_b, sid, kept_from)
        async with http.get(f"{url_b}/v1/sessions/{sid}/stream", headers={"Last-Event-ID": str(ids[2])}) as r:
            assert r.status == 200
            first = await asyncio.wait_for(anext(aiter(events(r))), 10)
    assert [e.id for e in recent] == ids[-14:] and recent[-1].event == "task.completed"
    assert first.event == "stream.reset", first
    assert first.id is not None and first.id >= ids[-20], "it goes on from what Redis still holds"


async def test_a_stalled_owner_gives_way_and_takes_nothing_after(
    start_nodes: StartNodes
) -> None:
    """The owner stalls (SIGSTOP) past lease_ms mid-answer: the other node takes the session;
    when the stalled node resumes (SIGCONT) it finds its lease gone and stops its actor, and a
    send through it reaches the new owner. One line of user turns, no reply left running."""
    nodes = await start_nodes(
        2,
        SESSIOND_SIMULATED_TOKENS_PER_SECOND="40",
        SESSIOND_SIMULATED_REPLY_TOKENS="400",
        SESSIOND_SESSIONS_FOLD_SECONDS="0.2",
    )
    a = nodes.procs[0]
    url_a, url_b = nodes.urls
    async with aiohttp.ClientSession(headers=HEADERS) as http:
        sid = await _owned_by(http, url_a)
        own: list[SseEvent] = []
        async with http.post(f"{url_a}/v1/sessions/{sid}/messages", json={"content": "busy", "stream": True}) as r:
            assert r.status == 200
            await _take(r, 5, own)
            assert a.proc is not None
            a.proc.send_signal(signal.SIGSTOP)
            try:
                last = own[-1].id
                assert last is not None
                tail = await _resume(http, url_b, sid, last)  # b takes the session once the lease expires
            finally:
                a.proc.send_signal(signal.SIGCONT)
        # Through the node that stalled: it may not take the send itself any more.
        until = time.monotonic() + 20
        while True:
            after = await http.post(f"{url_a}/v1/sessions/{sid}/messages", json={"content": "after", "stream": True})
            if after.status == 200:
                break
            assert after.status == 503 and after.headers.get("Retry-After"), (after.status, await after.text())
            after.release()
            assert time.monotonic() < until, "the send through the resumed node was never answered"
        first: list[SseEvent] = []
        await _take(after, 2, first)
        async with http.post(f"{url_b}/v1/sessions/{sid}/cancel") as c:
            assert c.status == 200, await c.text()
        ended = await asyncio.wait_for(read_until(after, TERMINAL), 10)
        after.release()
        async with http.get(f"{url_b}/v1/sessions/{sid}/tree") as r:
            tree = await r.json()
        async with http.get(f"{url_b}/v1/sessions/{sid}") as r:
            session = await r.json()
    assert tail[-1].event == "task.interrupted" and tail[-1].data["task_id"] == own[0].data["task_id"]
    users = [n for n in tree["nodes"] if n["role"] == "user"]
    assert [u["content"] for u in users].count("busy") == 1 and "after" in [u["content"] for u in users]
    for u in users:
        siblings = [n for n in tree["nodes"] if n["parent_id"] == u["parent_id"] and n["role"] == "user"]
        assert len(siblings) == 1, f"user turns became siblings: {[s['content'] for s in siblings]}"
    assert session["status"] == "idle"
    assert not [n for n in tree["nodes"] if n["status"] == "running"], "a reply left running while idle"
    assert ended[-1].event == "task.cancelled"


async def test_a_stalled_owners_commit_after_sigcont_is_refused_and_writes_nothing(
    pg_proxy: tuple[CuttingProxy, str], start_nodes: StartNodes, private_redis: PrivateRedis, pg_dsn: str
) -> None:
    """The owner accepts a send (its lease checks out), and then its commit is stuck on the way
    to PostgreSQL while the node stalls (SIGSTOP) past lease_ms; the other node takes the
    session. On SIGCONT the commit arrives under the old lease epoch and the store refuses it:
    the owner logs the refusal, the send is answered (by the new owner, or 503 with
    Retry-After), and nothing of the stale write is in the store."""
    proxy, through = pg_proxy
    nodes = await start_nodes(2, dsn={0: through})  # only the owner's commits pass the proxy
    a = nodes.procs[0]
    url_a, url_b = nodes.urls
    lease_key = f"{nodes.prefix}:lease:"
    redis = aioredis.from_url(private_redis.url)
    async with aiohttp.ClientSession(headers=HEADERS) as http:
        sid = await _owned_by(http, url_a)
        proxy.hold()
        send = asyncio.ensure_future(_post(http, f"{url_a}/v1/sessions/{sid}/messages", {"content": "stale"}))
        await asyncio.wait_for(proxy.held.wait(), 10)  # its commit is on the way, held back
        assert a.proc is not None
        a.proc.send_signal(signal.SIGSTOP)
        try:
            until = time.monotonic() + 10
            while await redis.get(lease_key + sid) is not None:  # no event to await: poll, bounded
                assert time.monotonic() < until, "the stalled owner's lease never expired"
                await asyncio.sleep(0.05)
            async with http.get(f"{url_b}/v1/sessions/{sid}") as r:
                assert r.status == 200, await r.text()  # b activates the session: a higher epoch
            assert await redis.get(lease_key + sid) == b"n1"
        finally:
            a.proc.send_signal(signal.SIGCONT)
            proxy.release()
        status, body, retry_after = await asyncio.wait_for(send, 20)
        async with http.get(f"{url_b}/v1/sessions/{sid}/messages") as r:
            shown = [m["content"] for m in (await r.json())["items"] if m["role"] == "user"]
    await redis.aclose()
    conn = await asyncpg.connect(pg_dsn)
    try:
        stored = [
            json.loads(row[0])["content"]
            for row in await conn.fetch(
                "SELECT body FROM messages WHERE session_id = $1 AND body::jsonb->>'role' = 'user'"
                " ORDER BY pos",
                sid,
            )
        ]
    finally:
        await conn.close()
    assert status == 200 or (status == 503 and retry_after), (status, body)
    assert stored == shown, "what the owner serves is what the store holds: nothing stale beside it"
    assert stored.count("stale") == (1 if status == 200 else 0), stored
    assert any(f"write refused for session {sid}" in line for line in a.output), "\n".join(a.output[-30:])


async def _post(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any, str | None]:
    async with http.post(url, json=body) as r:
        return r.status, await r.json(content_type=None), r.headers.get("Retry-After")


async def test_a_waiting_send_through_a_survivor_is_answered_after_the_owner_is_killed(
    start_nodes: StartNodes
) -> None:
    """A non-streamed send through node b waits for its task on the owner a; a is SIGKILLed mid
    answer and nothing else asks for the session. Once a's lease has expired the send is
    answered (200 ``interrupted``, or 503 with Retry-After), not left waiting for some later
    request to bring the session back."""
    nodes = await start_nodes(
        2,
        SESSIOND_SIMULATED_TOKENS_PER_SECOND="40",
        SESSIOND_SIMULATED_REPLY_TOKENS="400",
        SESSIOND_SESSIONS_FOLD_SECONDS="0.2",
    )
    a = nodes.procs[0]
    url_a, url_b = nodes.urls
    async with aiohttp.ClientSession(headers=HEADERS) as http:
        sid = await _owned_by(http, url_a)
        async with http.get(f"{url_a}/v1/sessions/{sid}/stream") as watch:
            send = asyncio.ensure_future(_post(http, f"{url_b}/v1/sessions/{sid}/messages", {"content": "hi"}))
            seen = await asyncio.wait_for(read_until(watch, "message.delta"), 10)
            a.kill()
        killed = time.monotonic()
        # Lease 2 s, then one watch interval and the activation: well within 10 s.
        status, body, retry_after = await asyncio.wait_for(send, 10)
        took = time.monotonic() - killed
    assert status == 200 or (status == 503 and retry_after), (status, body)
    if status == 200:
        started = next(e for e in seen if e.event == "task.started")
        assert body["status"] == "interrupted" and body["task_id"] == started.data["task_id"], body
    assert took < 10
