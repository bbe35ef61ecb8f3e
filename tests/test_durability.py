"""What the server acknowledged survives SIGKILL, passivation and shutdown; ids never repeat."""

from __future__ import annotations

import asyncio
import gc
import weakref
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from actors.core.commands import Passivate
from actors.session.actor import SessionActor
from server.appkeys import REGISTRY
from tests.conftest import HEADERS, ClientFactory, new_session
from tests.sse import events, read_until

TERMINAL = {"task.completed", "task.failed", "task.cancelled", "task.interrupted"}


@pytest.mark.slow
async def test_sigkill_with_100_sends_in_flight(server_process: Any, tmp_path: Path) -> None:
    paced = {"SESSIOND_SIMULATED_TOKENS_PER_SECOND": "40", "SESSIOND_SIMULATED_REPLY_TOKENS": "400"}
    srv = server_process(env=paced)
    url = srv.start()
    acked: dict[str, str] = {}  # session id -> content of the acknowledged message
    last_seen: dict[str, int] = {}
    finished: set[str] = set()
    half = asyncio.Event()

    async with aiohttp.ClientSession(url, headers=HEADERS) as http:

        async def create() -> str:
            async with http.post("/v1/sessions", json={}) as r:
                assert r.status == 201
                return str((await r.json())["id"])

        sids = await asyncio.gather(*(create() for _ in range(100)))

        async def send(i: int, sid: str) -> None:
            async with http.post(f"/v1/sessions/{sid}/messages", json={"content": f"message {i}", "stream": True}) as r:
                if r.status != 200:
                    return
                acked[sid] = f"message {i}"
                async for ev in events(r):
                    assert ev.id is not None
                    last_seen[sid] = ev.id
                    if len(last_seen) >= 60:
                        half.set()
                    if ev.event in TERMINAL:
                        finished.add(sid)
                        return

        tasks = [asyncio.create_task(send(i, sid)) for i, sid in enumerate(sids)]
        await asyncio.wait_for(half.wait(), 60)
        srv.kill()
        await asyncio.gather(*tasks, return_exceptions=True)

    assert len(acked) >= 60
    again = server_process(env=paced)
    url = again.start()
    interrupted = 0
    async with aiohttp.ClientSession(url, headers=HEADERS) as http:
        for sid, content in acked.items():
            async with http.get(f"/v1/sessions/{sid}/messages") as r:
                assert r.status == 200
                history = await r.json()
            assert [m["content"] for m in history["items"] if m["role"] == "user"] == [content]
            if sid in finished or sid not in last_seen:
                continue
            async with http.get(f"/v1/sessions/{sid}/stream", headers={"Last-Event-ID": str(last_seen[sid])}) as r:
                tail = await asyncio.wait_for(read_until(r, TERMINAL), 10)
            assert tail[0].id is not None and tail[0].id > last_seen[sid], "an event id was reused after the crash"
            assert tail[-1].event == "task.interrupted"
            assert history["items"][-1]["status"] == "interrupted"
            interrupted += 1
    assert interrupted > 0


async def test_past_max_live_the_quiet_sessions_used_longest_ago_are_passivated(make_client: ClientFactory) -> None:
    """A caller reading many sessions cannot keep them all in memory for idle_seconds: past
    max_live (and a sixteenth, at least one), the quiet ones used longest ago go at once,
    however recent; one with an open stream stays; an evicted one comes back whole."""
    client = await make_client(sessions={"max_live": 4})  # evicts when a 6th is live, down to 4
    registry = client.app[REGISTRY]
    ids = [(await new_session(client, title=f"s{i}"))["id"] for i in range(8)]
    watched = await client.get(f"/v1/sessions/{ids[0]}/stream")  # used first, but not quiet
    assert watched.status == 200
    quiet: list[SessionActor] = []  # the live quiet ones, used longest ago first
    evicted: list[str] = []
    for sid in ids[1:]:
        assert (await client.get(f"/v1/sessions/{sid}")).status == 200
        live = 1 + len(quiet) + 1  # the streamed one, the quiet ones, this one
        told = quiet[: live - 4] if live > 5 else []
        for actor in told:
            await asyncio.wait_for(actor.wait_stopped(), 10)
            assert actor.stop_reason == "passivated" and actor.id not in registry
            evicted.append(actor.id)
        actor = await registry.get(sid)
        assert isinstance(actor, SessionActor)
        quiet = [*quiet[len(told):], actor]
        assert len(registry) <= 5
    assert evicted == ids[1:5] and registry.stats.evictions == 4
    assert {*ids[:1], *ids[5:]} == {a.id for a in registry.actors()}, "the streamed one and the newest"
    back = await (await client.get(f"/v1/sessions/{ids[1]}")).json()
    assert back["title"] == "s1"
    watched.close()


async def _answered(client: Any, sid: str, content: str) -> None:
    sent = await client.post(f"/v1/sessions/{sid}/messages", json={"content": content})
    assert sent.status == 200, await sent.text()
    assert (await sent.json())["status"] == "completed"


async def test_past_replay_memory_bytes_quiet_sessions_go_first_then_busy_logs_shrink(
    make_client: ClientFactory,
) -> None:
    """The live sessions' replay logs together stay under [sessions] replay_memory_bytes: past
    it, the quiet sessions used longest ago are passivated, down to an eighth below it; if the
    busy ones alone hold more, the largest logs lose their oldest events down to one size they
    all fit under (a smaller one keeps everything), and a resume from before what is left is
    told stream.reset, one after it is exact."""
    client = await make_client(simulated={"reply_tokens": 100})
    registry = client.app[REGISTRY]
    assert registry.replay_memory_bytes == 1 << 30  # config.toml's default
    busy_id, small_id, old_id, recent_id = [(await new_session(client))["id"] for _ in range(4)]
    watched = [await client.get(f"/v1/sessions/{sid}/stream") for sid in (busy_id, small_id)]  # never quiet
    assert [w.status for w in watched] == [200, 200]
    for i in range(3):
        await _answered(client, busy_id, f"question {i}")
    await _answered(client, small_id, "one question")
    await _answered(client, old_id, "the oldest quiet one")
    await _answered(client, recent_id, "the newest quiet one")
    ids = (busy_id, small_id, old_id, recent_id)
    actors = {sid: await registry.get(sid) for sid in ids}
    busy, small, old, recent = (actors[sid] for sid in ids)
    assert isinstance(busy, SessionActor) and isinstance(small, SessionActor)
    assert isinstance(old, SessionActor) and isinstance(recent, SessionActor)
    sizes = {sid: a.log.size for sid, a in actors.items()}
    assert registry.replay_bytes() == sum(sizes.values()) and sizes[busy_id] > 2 * sizes[small_id] > 0
    assert registry.shed_memory() == 0  # under the bound: nothing

    # Over it by less than the oldest quiet log: that one goes, the newer quiet one stays.
    registry.replay_memory_bytes = sum(sizes.values()) - 1  # to an eighth below it: the oldest is enough
    assert registry.shed_memory() == sizes[old_id]
    await asyncio.wait_for(old.wait_stopped(), 10)
    assert old.stop_reason == "passivated" and recent.is_alive and busy.is_alive
    assert registry.stats.evictions == 1 and busy.log.floor == 0

    # Below what the busy ones hold: the newer quiet one goes, then the largest log shrinks to
    # what leaves room for the smaller one whole.
    budget = registry.replay_memory_bytes = (sizes[busy_id] + sizes[small_id]) * 7 // 10
    cap = budget - budget // 8 - sizes[small_id]
    assert sizes[small_id] < cap < sizes[busy_id]
    freed = registry.shed_memory()
    await asyncio.wait_for(recent.wait_stopped(), 10)
    # Cut just below the cap: by less than one frame (an answer's end of 100 tokens is under 2 KiB).
    assert busy.is_alive and busy.log.floor > 0 and cap - 2048 < busy.log.size <= cap
    assert small.log.size == sizes[small_id] and small.log.floor == 0
    assert freed == sizes[recent_id] + sizes[busy_id] - busy.log.size
    assert registry.stats.replay_shed == sizes[busy_id] - busy.log.size

    reset = await client.get(f"/v1/sessions/{busy_id}/stream", headers={"Last-Event-ID": "1"})
    got = await read_until(reset, "stream.reset", limit=1)
    reset.close()
    assert [e.event for e in got] == ["stream.reset"]
    after = busy.log.floor + 1
    exact = await client.get(f"/v1/sessions/{busy_id}/stream", headers={"Last-Event-ID": str(after)})
    tail = await read_until(exact, set(), limit=busy.log.last_seq - after)
    exact.close()
    assert [e.id for e in tail] == list(range(after + 1, busy.log.last_seq + 1)) and tail[-1].event == "task.completed"
    for w in watched:
        w.close()
    # What passivation dropped from memory is all in the store.
    history = await (await client.get(f"/v1/sessions/{old_id}/messages")).json()
    assert [m["content"] for m in history["items"] if m["role"] == "user"] == ["the oldest quiet one"]


async def test_the_replay_memory_bound_holds_by_itself(make_client: ClientFactory) -> None:
    """Nobody asks: once a second the server finds the live logs past the bound and passivates
    the quiet session holding them; /metrics shows the bytes and the eviction."""
    client = await make_client(sessions={"replay_memory_bytes": 1024}, simulated={"reply_tokens": 50})
    registry = client.app[REGISTRY]
    sid = (await new_session(client))["id"]
    await _answered(client, sid, "a long enough answer")
    actor = await registry.get(sid)
    assert isinstance(actor, SessionActor) and actor.log.size > 1024
    await asyncio.wait_for(actor.wait_stopped(), 10)
    assert actor.stop_reason == "passivated" and registry.stats.evictions == 1
    text = await (await client.get("/metrics")).text()
    assert "sessiond_evictions_total 1.0" in text and "sessiond_replay_bytes 0.0" in text


async def test_a_passivated_session_leaves_memory_at_once(make_client: ClientFactory) -> None:
    """Passivation frees what a session held (its replay log, its tree) when it stops, by
    reference counting alone: no cycle keeps a stopped actor until a full collection, which a
    busy server makes rarely ([server] gc_young_objects), so evicted and idle sessions would
    hold their memory long after they went."""
    client = await make_client()
    registry = client.app[REGISTRY]
    async with aiohttp.ClientSession(headers=HEADERS) as http:  # its connections go with it
        async with http.post(client.make_url("/v1/sessions"), json={}) as r:
            sid = (await r.json())["id"]
        for stream in (True, False):  # a stream of its own, and a send after its end
            url = client.make_url(f"/v1/sessions/{sid}/messages")
            async with http.post(url, json={"content": "hello", "stream": stream}) as r:
                assert r.status == 200
                await r.read()
    actor = await registry.get(sid)
    assert isinstance(actor, SessionActor) and actor.log.size > 0
    gone = weakref.ref(actor)
    gc.collect()
    gc.disable()
    try:
        actor.tell(Passivate(0))
        await asyncio.wait_for(actor.wait_stopped(), 10)
        assert actor.stop_reason == "passivated"
        del actor
        for _ in range(10):  # the loop's pending callbacks of the stop, a turn at a time
            if gone() is None:
                break
            await asyncio.sleep(0)
        assert gone() is None, "a stopped actor is kept alive by a reference cycle"
    finally:
        gc.enable()


async def test_passivate_and_reactivate_keeps_everything(make_client: ClientFactory) -> None:
    client = await make_client(sessions={"idle_seconds": 0.2})
    registry = client.app[REGISTRY]
    s = await new_session(client, metadata={"k": "v"}, title="kept")
    sid = s["id"]
    sent = await client.post(f"/v1/sessions/{sid}/messages", json={"content": "remember me", "stream": True})
    first = await read_until(sent, "task.completed")
    tree = await (await client.get(f"/v1/sessions/{sid}/tree")).json()
    details = await (await client.get(f"/v1/sessions/{sid}")).json()

    actor = await registry.get(sid)
    assert isinstance(actor, SessionActor)
    await asyncio.wait_for(actor.wait_stopped(), 10)
    assert sid not in registry
    assert actor.stop_reason == "passivated" and registry.stats.passivations >= 1

    assert await (await client.get(f"/v1/sessions/{sid}/tree")).json() == tree
    again = await (await client.get(f"/v1/sessions/{sid}")).json()
    assert {k: again[k] for k in ("metadata", "title", "usage", "message_count", "version")} == {
        k: details[k] for k in ("metadata", "title", "usage", "message_count", "version")
    }
    # Durable events replay after reactivation; new ids continue right after the old ones.
    replay = await client.get(f"/v1/sessions/{sid}/stream", headers={"Last-Event-ID": "0"})
    durable = await read_until(replay, "task.completed")
    replay.close()
    assert [e.event for e in durable] == ["task.started", "message.completed", "checkpoint.created", "task.completed"]
    assert [e.id for e in durable] == [first[0].id, *(e.id for e in first[-3:])]
    more = await client.post(f"/v1/sessions/{sid}/messages", json={"content": "and more", "stream": True})
    nxt = await read_until(more, "task.completed")
    assert first[-1].id is not None and nxt[0].id == first[-1].id + 1


@pytest.mark.slow
async def test_sigterm_interrupts_running_tasks_and_exits_cleanly(server_process: Any) -> None:
    srv = server_process(env={"SESSIOND_SIMULATED_TOKENS_PER_SECOND": "20", "SESSIOND_SIMULATED_REPLY_TOKENS": "400"})
    url = srv.start()
    async with aiohttp.ClientSession(url, headers=HEADERS) as http:
        async with http.post("/v1/sessions", json={}) as r:
            sid = (await r.json())["id"]
        async with http.post(f"/v1/sessions/{sid}/messages", json={"content": "x", "stream": True}) as r:
            got = []
            async for ev in events(r):
                got.append(ev)
                if len(got) == 3:
                    srv.proc.send_signal(15)
                if ev.event in TERMINAL:
                    break
        assert got[-1].event == "task.interrupted"
    assert srv.proc.wait(20) == 0
    again = server_process()
    url = again.start()
    async with aiohttp.ClientSession(url, headers=HEADERS) as http:
        async with http.get(f"/v1/sessions/{sid}/messages") as r:
            items = (await r.json())["items"]
    assert items[-1]["status"] == "interrupted"
    assert items[-1]["content"] == "".join(e.data["delta"] for e in got if e.event == "message.delta")
