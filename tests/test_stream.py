"""Streams: resume by Last-Event-ID without loss or repeat; subscribers see the same thing."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient

from server.appkeys import REGISTRY
from tests.conftest import ClientFactory, new_session
from tests.sse import SseEvent, events, read_until


async def _first(resp: Any, k: int) -> list[SseEvent]:
    got: list[SseEvent] = []
    async for ev in events(resp):
        got.append(ev)
        if len(got) == k:
            break
    return got


async def test_resume_after_k_events_is_exact(make_client: ClientFactory) -> None:
    # Paced, so the task is still running while we are away.
    client = await make_client(simulated={"tokens_per_second": 400, "reply_tokens": 60})
    s = await new_session(client)
    resp = await client.post(f"/v1/sessions/{s['id']}/messages", json={"content": "hi", "stream": True})
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers["Cache-Control"] == "no-cache"
    assert resp.headers["X-Accel-Buffering"] == "no"
    k = 7
    before = await _first(resp, k)
    resp.close()  # cut the connection mid-answer
    assert before[0].event == "task.started"
    last = before[-1].id
    assert last is not None

    again = await client.get(f"/v1/sessions/{s['id']}/stream", headers={"Last-Event-ID": str(last)})
    after = await read_until(again, "task.completed")
    again.close()

    ids = [e.id for e in before + after if e.id is not None]
    assert len(ids) == len(before) + len(after), "every event has an id"
    assert ids == sorted(set(ids)), "ids must strictly increase with no repeat"
    assert after[0].id == last + 1, "nothing may be missing after the resume point"
    deltas = "".join(e.data["delta"] for e in before + after if e.event == "message.delta")
    completed = next(e for e in after if e.event == "message.completed")
    assert completed.data["message"]["content"] == deltas
    assert len(deltas.split()) == 60

    history = await (await client.get(f"/v1/sessions/{s['id']}/messages")).json()
    assert history["items"][-1]["content"] == deltas


async def test_resume_by_query_parameter(client: TestClient[Any, Any]) -> None:
    s = await new_session(client)
    resp = await client.post(f"/v1/sessions/{s['id']}/messages", json={"content": "hi", "stream": True})
    full = await read_until(resp, "task.completed")
    mid = full[len(full) // 2].id
    assert mid is not None
    again = await client.get(f"/v1/sessions/{s['id']}/stream?last_event_id={mid}")
    tail = await read_until(again, "task.completed")
    assert [e.id for e in tail] == [e.id for e in full if e.id is not None and e.id > mid]


async def test_two_subscribers_see_the_same_sequence(make_client: ClientFactory) -> None:
    client = await make_client(simulated={"tokens_per_second": 500, "reply_tokens": 30})
    s = await new_session(client)
    a = await client.get(f"/v1/sessions/{s['id']}/stream", headers={"Last-Event-ID": "0"})
    b = await client.get(f"/v1/sessions/{s['id']}/stream", headers={"Last-Event-ID": "0"})
    reader_a = asyncio.create_task(read_until(a, "task.completed"))
    reader_b = asyncio.create_task(read_until(b, "task.completed"))
    sent = await client.post(f"/v1/sessions/{s['id']}/messages", json={"content": "both"})
    assert sent.status == 200
    got_a, got_b = await asyncio.wait_for(asyncio.gather(reader_a, reader_b), 10)
    assert [(e.id, e.event, e.data) for e in got_a] == [(e.id, e.event, e.data) for e in got_b]
    assert [e.event for e in got_a][:2] == ["task.started", "message.delta"]
    assert got_a[-1].event == "task.completed"


async def test_stream_without_id_starts_at_the_latest_task(client: TestClient[Any, Any]) -> None:
    s = await new_session(client)
    for text in ("one", "two"):
        r = await client.post(f"/v1/sessions/{s['id']}/messages", json={"content": text})
        assert r.status == 200
    resp = await client.get(f"/v1/sessions/{s['id']}/stream")
    got = await read_until(resp, "task.completed")
    started = [e for e in got if e.event == "task.started"]
    assert len(started) == 1
    history = await (await client.get(f"/v1/sessions/{s['id']}/messages")).json()
    assert started[0].data["message_id"] == history["items"][-2]["id"]


async def test_too_old_id_gets_stream_reset(make_client: ClientFactory) -> None:
    client = await make_client(sessions={"event_retention": 50}, simulated={"reply_tokens": 200})
    s = await new_session(client)
    r = await client.post(f"/v1/sessions/{s['id']}/messages", json={"content": "long"})
    assert r.status == 200
    resp = await client.get(f"/v1/sessions/{s['id']}/stream", headers={"Last-Event-ID": "1"})
    first = await _first(resp, 1)
    assert first[0].event == "stream.reset"
    assert first[0].data["last_event_id"] == 1


async def test_a_session_keeps_its_events_bytes_bound_and_replays_exactly_within_it(
    make_client: ClientFactory,
) -> None:
    """Past ``event_retention_bytes`` of frames the oldest events go, whatever their count: an
    older Last-Event-ID gets stream.reset, a newer one every event after it, exactly."""
    client = await make_client(sessions={"event_retention_bytes": 20_000}, simulated={"reply_tokens": 200})
    s = await new_session(client)
    sid = s["id"]
    r = await client.post(f"/v1/sessions/{sid}/messages", json={"content": "long"})
    assert r.status == 200
    log = client.app[REGISTRY].actors()[0].log
    assert 0 < log.size <= 20_000 and len(log) < 200, "bound by bytes, not by the 10 000 events"
    first = await _first(await client.get(f"/v1/sessions/{sid}/stream", headers={"Last-Event-ID": "1"}), 1)
    assert first[0].event == "stream.reset" and first[0].data["last_event_id"] == 1
    after = log.floor
    resp = await client.get(f"/v1/sessions/{sid}/stream", headers={"Last-Event-ID": str(after)})
    got = await read_until(resp, "task.completed")
    assert [e.id for e in got] == list(range(after + 1, log.last_seq + 1))
    deltas = "".join(e.data["delta"] for e in got if e.event == "message.delta")
    completed = next(e for e in got if e.event == "message.completed")
    assert completed.data["message"]["content"].endswith(deltas) and deltas


async def test_an_answers_end_larger_than_the_byte_bound_reaches_its_reader_whole(make_client: ClientFactory) -> None:
    """An answer's end is one publish of three events, the first (message.completed, with the
    whole answer) larger than the bound alone: a reader following the stream gets all three."""
    client = await make_client(sessions={"event_retention_bytes": 2_000}, simulated={"reply_tokens": 400})
    s = await new_session(client)
    resp = await client.post(f"/v1/sessions/{s['id']}/messages", json={"content": "long", "stream": True})
    got = await read_until(resp, "task.completed")
    kinds = [e.event for e in got]
    assert "stream.reset" not in kinds, kinds
    assert kinds[-3:] == ["message.completed", "checkpoint.created", "task.completed"]
    completed = got[-3]
    assert len(completed.data["message"]["content"]) > 2_000
    assert completed.data["message"]["content"] == "".join(e.data["delta"] for e in got if e.event == "message.delta")


async def test_client_leaving_mid_stream_does_not_stop_the_task(make_client: ClientFactory) -> None:
    client = await make_client(simulated={"tokens_per_second": 300, "reply_tokens": 40})
    s = await new_session(client)
    resp = await client.post(f"/v1/sessions/{s['id']}/messages", json={"content": "go", "stream": True})
    await _first(resp, 3)
    resp.close()
    watch = await client.get(f"/v1/sessions/{s['id']}/stream")
    got = await read_until(watch, {"task.completed", "task.failed", "task.cancelled"})
    assert got[-1].event == "task.completed"
    completed = next(e for e in got if e.event == "message.completed")
    assert len(completed.data["message"]["content"].split()) == 40


async def test_slow_subscriber_is_bounded_and_does_not_slow_others(make_client: ClientFactory) -> None:
    client = await make_client(sessions={"event_retention": 500}, simulated={"reply_tokens": 2000})
    s = await new_session(client)
    sid = s["id"]
    # A client that subscribes and then never reads a byte.
    host, port = client.server.host, client.server.port
    _reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"GET /v1/sessions/{sid}/stream HTTP/1.1\r\nHost: x\r\nX-API-Key: {client.session.headers['X-API-Key']}"
        "\r\nLast-Event-ID: 0\r\n\r\n".encode()
    )
    await writer.drain()
    fast = await client.get(f"/v1/sessions/{sid}/stream", headers={"Last-Event-ID": "0"})
    actor = client.app[REGISTRY].actors()[0]
    for _ in range(10):
        r = await client.post(f"/v1/sessions/{sid}/messages", json={"content": "more"})
        assert r.status == 200
    got = await read_until(fast, "task.completed", limit=10**6)
    # The fast reader was never held back: all 10 tasks, every id, in order.
    seen = 0
    async for ev in events(fast):
        got.append(ev)
        if ev.event == "task.completed":
            seen += 1
            if seen == 9:
                break
    ids = [e.id for e in got if e.id is not None]
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    assert sum(1 for e in got if e.event == "task.completed") == 10
    # The server keeps a bounded window for everyone, not a queue per slow reader.
    assert len(actor.log) <= 500 + 500 // 8 + 64
    assert actor.hub.subscribers == 2
    writer.close()
