"""Admission control: past the configured load, new work gets 503 `overloaded` + Retry-After."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import ClientResponse

from tests.conftest import ClientFactory, new_session
from tests.sse import read_until

# A reply that would take minutes: the task runs until the test cancels it.
_SLOW = {"tokens_per_second": 50, "reply_tokens": 100_000}


async def _assert_overloaded(resp: ClientResponse, retry_after: int) -> None:
    assert resp.status == 503
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    assert resp.headers["Retry-After"] == str(retry_after)
    problem = await resp.json(content_type=None)
    assert problem["code"] == "overloaded"
    assert problem["status"] == 503


async def _send(client: Any, session_id: str, *, stream: bool = True) -> ClientResponse:
    resp: ClientResponse = await client.post(
        f"/v1/sessions/{session_id}/messages", json={"content": "hello", "stream": stream}
    )
    return resp


async def test_running_task_limit_refuses_then_admits_again(make_client: ClientFactory) -> None:
    client = await make_client(simulated=_SLOW, admission={"max_running_tasks": 1, "retry_after_seconds": 3})
    a, b = await new_session(client), await new_session(client)

    first = await _send(client, a["id"])
    assert first.status == 200
    started = await read_until(first, "task.started")
    assert started[-1].event == "task.started"

    # The server is full: a send on another session is refused at once, streamed or not.
    await _assert_overloaded(await _send(client, b["id"]), 3)
    await _assert_overloaded(await _send(client, b["id"], stream=False), 3)
    # Reads and new sessions are not new work: still served.
    history = await client.get(f"/v1/sessions/{b['id']}/messages")
    assert history.status == 200
    assert (await history.json())["items"] == []
    await new_session(client)

    # The running task ends (the client cancels it); its stream says so, and the place is free.
    cancel = await client.post(f"/v1/sessions/{a['id']}/cancel")
    assert cancel.status == 200
    ended = await read_until(first, {"task.cancelled", "task.completed"})
    assert ended[-1].event == "task.cancelled"
    first.close()

    second = await _send(client, b["id"])
    assert second.status == 200
    assert (await read_until(second, "task.started"))[-1].event == "task.started"
    await client.post(f"/v1/sessions/{b['id']}/cancel")
    assert (await read_until(second, "task.cancelled"))[-1].event == "task.cancelled"
    second.close()


async def test_open_stream_limit_refuses_new_streams(make_client: ClientFactory) -> None:
    client = await make_client(simulated=_SLOW, admission={"max_open_streams": 1})
    a, b = await new_session(client), await new_session(client)

    first = await _send(client, a["id"])
    assert first.status == 200
    await read_until(first, "task.started")

    # One stream is open, the most allowed: a new stream on any session is refused...
    await _assert_overloaded(await client.get(f"/v1/sessions/{b['id']}/stream"), 1)
    await _assert_overloaded(await client.get(f"/v1/sessions/{a['id']}/stream"), 1)
    # ...while requests that open no stream are answered as usual.
    history = await client.get(f"/v1/sessions/{a['id']}/messages")
    assert history.status == 200
    assert [m["role"] for m in (await history.json())["items"]] == ["user", "assistant"]

    # The first stream ends with its task; once it is closed, a new stream is admitted.
    await client.post(f"/v1/sessions/{a['id']}/cancel")
    assert (await read_until(first, "task.cancelled"))[-1].event == "task.cancelled"
    assert await first.content.read() == b""  # the server closed the stream
    first.close()

    again = await client.get(f"/v1/sessions/{a['id']}/stream", headers={"Last-Event-ID": "0"})
    assert again.status == 200
    replay = await read_until(again, "task.cancelled")
    assert replay[0].event == "task.started"
    again.close()


async def test_bad_body_is_still_answered_by_the_handler(make_client: ClientFactory) -> None:
    client = await make_client(admission={"max_running_tasks": 1})
    s = await new_session(client)
    resp = await client.post(f"/v1/sessions/{s['id']}/messages", data=b"{not json")
    assert resp.status == 400
    resp = await client.post(f"/v1/sessions/{s['id']}/messages", json={"content": "hi", "bogus": 1})
    assert resp.status == 422


async def test_a_burst_cannot_overshoot_the_task_limit(make_client: ClientFactory) -> None:
    client = await make_client(simulated=_SLOW, admission={"max_running_tasks": 2})
    sessions = [await new_session(client) for _ in range(8)]
    # Eight sends at once: admission counts each before any of them reaches its actor.
    responses = await asyncio.gather(*(_send(client, s["id"]) for s in sessions))
    statuses = sorted(r.status for r in responses)
    assert statuses == [200, 200, 503, 503, 503, 503, 503, 503]
    for resp in responses:
        if resp.status == 503:
            await _assert_overloaded(resp, 1)
    admitted = [(s, r) for s, r in zip(sessions, responses, strict=True) if r.status == 200]
    for s, resp in admitted:
        assert (await read_until(resp, "task.started"))[-1].event == "task.started"
        await client.post(f"/v1/sessions/{s['id']}/cancel")
        assert (await read_until(resp, "task.cancelled"))[-1].event == "task.cancelled"
        resp.close()
    # Both places are free again.
    again = await _send(client, sessions[-1]["id"])
    assert again.status == 200
    await client.post(f"/v1/sessions/{sessions[-1]['id']}/cancel")
    assert (await read_until(again, "task.cancelled"))[-1].event == "task.cancelled"
    again.close()
