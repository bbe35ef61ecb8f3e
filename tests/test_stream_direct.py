"""Direct writes: a caught-up stream is written by its session's producer, and falls back to
its cursor when it is behind (a replay), congested (a reader that stopped reading) or its
task ends, then comes back once caught up; every guarantee of a stream holds in both modes."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from server.appkeys import REGISTRY
from tests.conftest import ClientFactory, new_session
from tests.pg import database
from tests.sse import Frames, SseEvent, events, read_until

Client = TestClient[Any, Any]


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: Any) -> AsyncIterator[dict[str, Any]]:
    """The store section of a test server: SQLite in tmp_path, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield {}
        return
    async with database() as dsn:
        yield {"kind": "postgres", "postgres_dsn": dsn}


def _hub(client: Client) -> Any:
    actors = client.app[REGISTRY].actors()
    assert len(actors) == 1
    return actors[0].hub


async def _until(check: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    """Poll ``check`` with a deadline: a hub's follower count announces no event of its own."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not check():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.005)


def _exact(got: list[SseEvent], first: int) -> None:
    ids = [e.id for e in got]
    assert ids == list(range(first, first + len(ids))), "ids go up by one, with no gap and no repeat"


async def _scrape_direct(client: Client) -> float:
    text = await (await client.get("/metrics")).text()
    line = next(x for x in text.splitlines() if x.startswith("sessiond_streams_direct "))
    return float(line.split()[1])


async def test_a_caught_up_stream_is_written_directly_and_exactly(
    make_client: ClientFactory, store: dict[str, Any]
) -> None:
    client = await make_client(store=store, simulated={"tokens_per_second": 400, "reply_tokens": 60})
    s = await new_session(client)
    sid = s["id"]
    watch = await client.get(f"/v1/sessions/{sid}/stream", headers={"Last-Event-ID": "0"})
    frames = Frames(watch)
    hub = _hub(client)
    await _until(lambda: hub.followers == 1, "an idle, caught-up stream follows its session")
    assert await _scrape_direct(client) == 1
    sent = await client.post(f"/v1/sessions/{sid}/messages", json={"content": "hi", "stream": True})
    assert sent.status == 200
    got = await read_until(sent, "task.completed")
    mine = await frames.until("task.completed")
    # The follower got the very frames the session logged, byte for byte, and nothing else.
    assert b"".join(mine) == b"".join(hub.log.since(0)[1])
    assert [int(f.split(b"\n", 1)[0][4:]) for f in mine] == [e.id for e in got]
    _exact(got, 1)
    deltas = "".join(e.data["delta"] for e in got if e.event == "message.delta")
    completed = next(e for e in got if e.event == "message.completed")
    assert completed.data["message"]["content"] == deltas
    assert len(deltas.split()) == 60
    # The task's own stream ended at its task.completed; the session's stream follows on.
    assert await sent.content.read() == b""
    await _until(lambda: hub.followers == 1, "the session stream follows again once caught up")
    watch.close()
    await _until(lambda: hub.subscribers == 0 and hub.followers == 0, "a client that left is no follower")


async def test_a_replay_falls_back_to_the_cursor_then_follows(
    make_client: ClientFactory, store: dict[str, Any]
) -> None:
    client = await make_client(store=store, simulated={"tokens_per_second": 0, "reply_tokens": 30})
    s = await new_session(client)
    sid = s["id"]
    assert (await client.post(f"/v1/sessions/{sid}/messages", json={"content": "one"})).status == 200
    hub = _hub(client)
    last = hub.log.last_seq
    resp = await client.get(f"/v1/sessions/{sid}/stream", headers={"Last-Event-ID": "3"})
    replay = await read_until(resp, "task.completed")
    _exact(replay, 4)
    assert replay[-1].id == last
    await _until(lambda: hub.followers == 1, "a stream that replayed to the end follows")
    assert (await client.post(f"/v1/sessions/{sid}/messages", json={"content": "two"})).status == 200
    live = await read_until(resp, "task.completed")
    _exact(live, last + 1)
    assert [e.event for e in live][:2] == ["task.started", "message.delta"]
    # Resuming from the middle of what was sent directly is exact too.
    mid = live[len(live) // 2].id
    assert mid is not None
    again = await client.get(f"/v1/sessions/{sid}/stream", headers={"Last-Event-ID": str(mid)})
    tail = await read_until(again, "task.completed")
    assert [(e.id, e.event, e.data) for e in tail] == [(e.id, e.event, e.data) for e in live if e.id and e.id > mid]
    resp.close()
    again.close()


async def test_a_reader_that_stops_reading_falls_back_and_comes_back(make_client: ClientFactory) -> None:
    # A small bound, so that a reader that stops reading is found congested quickly; a long
    # log, so that it is never reset and must get every event once it reads again; a short
    # heartbeat, because a stream that caught up while its transport still held more than the
    # bound follows again at its next write, and the test sends nothing new while it waits.
    client = await make_client(
        streams={"direct_write_bytes": 4096, "write_timeout_seconds": 60, "heartbeat_seconds": 1.0},
        sessions={"event_retention": 200_000, "event_retention_bytes": 1 << 30},
        simulated={"tokens_per_second": 0, "reply_tokens": 5000},
    )
    s = await new_session(client)
    sid = s["id"]
    async with aiohttp.ClientSession(headers=dict(client.session.headers), read_bufsize=65536) as slow_session:
        slow = await slow_session.get(client.make_url(f"/v1/sessions/{sid}/stream"), headers={"Last-Event-ID": "0"})
        assert slow.status == 200
        sock = slow.connection.transport.get_extra_info("socket")  # type: ignore[union-attr]
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        fast = await client.get(f"/v1/sessions/{sid}/stream", headers={"Last-Event-ID": "0"})
        hub = _hub(client)
        await _until(lambda: hub.followers == 2, "both idle streams follow")
        # The slow client reads nothing while ten long replies are produced.
        got: list[SseEvent] = []
        fast_events = events(fast)
        for _ in range(10):
            r = await client.post(f"/v1/sessions/{sid}/messages", json={"content": "more"})
            assert r.status == 200
            async for ev in fast_events:
                got.append(ev)
                if ev.event == "task.completed":
                    break
        # The fast reader was never held back: all ten tasks, every id, in order.
        _exact(got, 1)
        assert sum(1 for e in got if e.event == "task.completed") == 10
        last = hub.log.last_seq
        assert got[-1].id == last
        # The fast stream follows; the stalled one does not (it waits for its transport).
        await _until(lambda: hub.followers == 1, "only the reader that reads follows")
        assert hub.subscribers == 2
        # The stalled reader reads again: everything, exactly, then it follows again.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        slow_got: list[SseEvent] = []
        async for ev in events(slow):
            slow_got.append(ev)
            if ev.id == last:
                break
        assert [(e.id, e.event, e.data) for e in slow_got] == [(e.id, e.event, e.data) for e in got]
        await _until(lambda: hub.followers == 2, "a reader that caught up follows again")
        r = await client.post(f"/v1/sessions/{sid}/messages", json={"content": "once more"})
        assert r.status == 200
        tail = await read_until(slow, "task.completed", limit=10**6)
        _exact(tail, last + 1)
        slow.close()
    fast.close()


async def test_a_task_stream_stops_at_its_own_end_when_the_next_task_follows_at_once(
    make_client: ClientFactory,
) -> None:
    client = await make_client(simulated={"tokens_per_second": 100, "reply_tokens": 30})
    s = await new_session(client)
    sid = s["id"]
    first = await client.post(f"/v1/sessions/{sid}/messages", json={"content": "one", "stream": True})
    head = await read_until(first, "message.delta")
    hub = _hub(client)
    await _until(lambda: hub.followers == 1, "the task's own stream follows while the task runs")
    queued = asyncio.create_task(client.post(f"/v1/sessions/{sid}/messages?queue=true", json={"content": "two"}))
    rest = await read_until(first, "task.completed")
    # Nothing after the task's end, though the queued task's events come right behind it.
    assert await first.content.read() == b""
    got = head + rest
    _exact(got, 1)
    assert got[-1].event == "task.completed"
    assert {e.data.get("task_id") for e in got if "task_id" in e.data} == {got[0].data["task_id"]}
    assert (await queued).status == 200


async def test_heartbeats_flow_while_following(make_client: ClientFactory) -> None:
    client = await make_client(streams={"heartbeat_seconds": 0.2})
    s = await new_session(client)
    resp = await client.get(f"/v1/sessions/{s['id']}/stream")
    hub = _hub(client)
    await _until(lambda: hub.followers == 1, "the idle stream follows")
    buf = b""
    async with asyncio.timeout(10):
        while buf.count(b": ping\n\n") < 3:
            buf += await resp.content.readany()
    await _until(lambda: hub.followers == 1, "the stream follows between heartbeats")
    resp.close()


async def test_an_http_1_0_client_gets_direct_writes_unchunked(make_client: ClientFactory) -> None:
    client = await make_client(simulated={"tokens_per_second": 400, "reply_tokens": 20})
    s = await new_session(client)
    sid = s["id"]
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(
        f"GET /v1/sessions/{sid}/stream HTTP/1.0\r\nX-API-Key: {client.session.headers['X-API-Key']}\r\n\r\n".encode()
    )
    await writer.drain()
    actors = client.app[REGISTRY].actors
    await _until(lambda: len(actors()) == 1 and actors()[0].hub.followers == 1, "the HTTP/1.0 stream follows")
    hub = _hub(client)
    assert (await client.post(f"/v1/sessions/{sid}/messages", json={"content": "hi"})).status == 200
    raw = b""
    async with asyncio.timeout(10):
        while b"event: task.completed\n" not in raw or not raw.endswith(b"\n\n"):
            chunk = await reader.read(65536)
            assert chunk, "the stream ended"
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding" not in head
    assert body.startswith(b"retry: ")
    assert body.split(b"\n\n", 1)[1] == b"".join(hub.log.since(0)[1])
    writer.close()
    await _until(lambda: hub.subscribers == 0, "the stream ends with its connection")
