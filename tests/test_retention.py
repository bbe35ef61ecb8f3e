"""Retention: sessions past their rule are deleted or trimmed by the sweeper, through their actor,
exactly those and never one with a running task; temporary sessions go when idle. On SQLite and
on PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from actors.core.retention import ExpiryQuery
from server.appkeys import REGISTRY, STORE, SWEEPER
from tests.conftest import ClientFactory, new_session
from tests.fake_models import FakeOpenAI
from tests.pg import database
from tests.sse import events, read_until

Client = TestClient[Any, Any]
Factory = Callable[..., Awaitable[Client]]
T = TypeVar("T")

FAST = {"sweep_seconds": 0.05, "batch": 100}
AGENTS = {"tutor": {"name": "Tutor"}, "quick": {"name": "Quick"}}
TERMINAL = {"task.completed", "task.failed", "task.cancelled", "task.interrupted"}


@pytest.fixture(params=["sqlite", "postgres"])
async def factory(request: Any, make_client: ClientFactory, tmp_path: Path) -> AsyncIterator[Factory]:
    """Makes a server on the store of the parameter, with the retention settings given."""
    made: list[Client] = []

    def sections(extra: dict[str, Any] | None, retention: dict[str, Any]) -> dict[str, Any]:
        return {"retention": {**FAST, **retention}, "agents": AGENTS, **(extra or {})}

    if request.param == "sqlite":
        async def sqlite(extra: dict[str, Any] | None = None, **retention: Any) -> Client:
            return await make_client(**sections(extra, retention))

        yield sqlite
        return
    async with database() as dsn:
        async def postgres(extra: dict[str, Any] | None = None, **retention: Any) -> Client:
            c = await make_client(store={"kind": "postgres", "postgres_dsn": dsn}, **sections(extra, retention))
            made.append(c)
            return c

        yield postgres
        for c in made:
            await c.close()  # before the database is dropped


async def _eventually(check: Callable[[], Awaitable[T | None]], what: str, within: float = 15.0) -> T:
    """Poll ``check`` until it answers something true (there is no event to await)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = await check()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def _metric(client: Client, name: str) -> float:
    text = await (await client.get("/metrics")).text()
    found = re.search(rf"^sessiond_retention_{name}_total (\S+)$", text, re.M)
    assert found, f"no sessiond_retention_{name}_total in /metrics"
    return float(found.group(1))


async def _sweeps_after(client: Client, n: int = 2) -> None:
    """Wait for ``n`` more full sweeps: whatever was due before has been acted on."""
    start = await _metric(client, "sweeps")

    async def swept() -> bool:
        return await _metric(client, "sweeps") >= start + n

    await _eventually(swept, f"{n} more sweeps")


async def _status(client: Client, sid: str) -> int:
    return (await client.get(f"/v1/sessions/{sid}")).status


async def _gone(client: Client, sid: str) -> None:
    async def gone() -> bool:
        return await _status(client, sid) == 404

    await _eventually(gone, f"session {sid} deleted")


async def _send(client: Client, sid: str, content: str) -> dict[str, Any]:
    resp = await client.post(f"/v1/sessions/{sid}/messages", json={"content": content})
    assert resp.status == 200, await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


async def _search(client: Client, q: str) -> set[str]:
    body = await (await client.get("/v1/sessions/search", params={"q": q})).json()
    return {h["session"]["id"] for h in body["items"]}


async def test_retention_deletes_exactly_what_its_rules_say(factory: Factory) -> None:
    client = await factory(
        namespaces={"old": {"ttl_seconds": 0.3}},
        agents={"quick": {"ttl_seconds": 0.3}, "tutor": {"ttl_seconds": 3600}},
    )
    # Each session to go holds a long rule of its own while it is set up; then a PATCH starts
    # its clock (0.3 s), whatever the machine's load.
    hold = {"ttl_seconds": 3600}
    doomed = await new_session(client, namespace="old", with_token=True, retention=hold)  # the namespace's rule
    await _send(client, doomed["id"], "the periwinkle invoice")
    document_id = await _upload(client, doomed["id"], b"notes about the periwinkle invoice")
    own_short = await new_session(client, retention=hold)  # its own rule, and no configured one
    agent_short = await new_session(client, namespace="fresh", agent_id="quick", retention=hold)  # the agent's
    kept = {
        # The agent's long rule beats the namespace's short one...
        "agent": await new_session(client, namespace="old", agent_id="tutor"),
        # ...and the session's own long rule beats both.
        "own": await new_session(client, namespace="old", agent_id="quick", retention={"ttl_seconds": 3600}),
        "no rule": await new_session(client, namespace="fresh"),
    }
    assert kept["own"]["retention"] == {"ttl_seconds": 3600.0, "action": "delete", "keep_latest": None}
    assert await _search(client, "periwinkle") == {doomed["id"]}
    for sid, rule in ((doomed["id"], None), (own_short["id"], {"ttl_seconds": 0.3}), (agent_short["id"], None)):
        patched = await client.patch(f"/v1/sessions/{sid}", json={"retention": rule})
        assert patched.status == 200, await patched.text()

    for s in (doomed, own_short, agent_short):
        await _gone(client, s["id"])
    await _sweeps_after(client)  # every kept session has been due under a rule it does not follow
    for why, s in kept.items():
        assert await _status(client, s["id"]) == 200, why
    assert await _metric(client, "deleted") == 3
    # What went with the deleted session: its search entries, its own document, its tokens.
    assert await _search(client, "periwinkle") == set()
    assert (await client.get(f"/v1/documents/{document_id}")).status == 404
    refreshed = await client.post(
        "/v1/tokens/refresh", headers={"Authorization": f"Bearer {doomed['refresh_token']}", "X-API-Key": ""}
    )
    assert refreshed.status == 401


async def test_keep_latest_keeps_the_newest_messages_intact(factory: Factory) -> None:
    client = await factory(namespaces={"trim": {"ttl_seconds": 0.5, "action": "keep_latest", "keep_latest": 3}})
    s = await new_session(client, namespace="trim", retention={"ttl_seconds": 3600})  # held while it is built
    sid = s["id"]
    first = await _send(client, sid, "aardvark opening question")
    # An edit of the first question: a side branch the trim must remove too.
    edit = await client.post(
        f"/v1/sessions/{sid}/messages/{first['message']['parent_id']}/edit", json={"content": "kingfisher instead"}
    )
    assert edit.status == 200
    for word in ("badger", "capybara", "dormouse"):
        await _send(client, sid, f"{word} question")
    before = (await (await client.get(f"/v1/sessions/{sid}/messages")).json())["items"]
    assert len(before) == 8
    newest = before[-3:]
    shares = {}
    for name, cut in (("whole", None), ("old", before[1]["id"])):
        made = await client.post(f"/v1/sessions/{sid}/shares", json={"message_id": cut} if cut else {})
        assert made.status == 201, await made.text()
        shares[name] = (await made.json())["token"]
    released = await client.patch(f"/v1/sessions/{sid}", json={"retention": None})  # the namespace's rule now
    assert released.status == 200

    async def trimmed() -> dict[str, Any] | None:
        body = await (await client.get(f"/v1/sessions/{sid}")).json()
        return body if body["message_count"] == 3 else None

    await _eventually(trimmed, "the trim")
    after = (await (await client.get(f"/v1/sessions/{sid}/messages")).json())["items"]
    assert [(m["id"], m["role"], m["content"]) for m in after] == [
        (m["id"], m["role"], m["content"]) for m in newest
    ]
    tree = await (await client.get(f"/v1/sessions/{sid}/tree")).json()
    assert {n["id"] for n in tree["nodes"]} == {m["id"] for m in newest}
    assert after[0]["parent_id"] is None and tree["active_leaf_id"] == newest[-1]["id"]
    checkpoints = (await (await client.get(f"/v1/sessions/{sid}/checkpoints")).json())["items"]
    assert checkpoints and {c["message_id"] for c in checkpoints} <= {m["id"] for m in newest}
    assert await _search(client, "aardvark") == set() and await _search(client, "kingfisher") == set()
    assert await _search(client, "dormouse") == {sid}
    # A share link shows what is kept of its path: nothing, if its message went.
    shown = {name: (await (await client.get(f"/v1/shares/{token}", headers={"X-API-Key": ""})).json())["messages"]
             for name, token in shares.items()}
    assert [m["id"] for m in shown["whole"]] == [m["id"] for m in newest] and shown["old"] == []
    assert await _metric(client, "messages_trimmed") == 10 - 3
    # A stream resuming from before the trim is told to refetch, not replayed deleted messages.
    async with client.get(f"/v1/sessions/{sid}/stream", headers={"Last-Event-ID": "1"}) as stream:
        first_event = await asyncio.wait_for(anext(events(stream)), 10)
    assert first_event.event == "stream.reset"
    # The trimmed tree goes on as any other, and is not trimmed again until it grows.
    await _sweeps_after(client)
    assert await _metric(client, "trimmed") == 1
    # After a restart too: the stream still resets, at the same place, and new ids go on above.
    reset_at = first_event.id
    assert reset_at is not None and reset_at > 1
    await client.close()
    client = await factory()
    async with client.get(f"/v1/sessions/{sid}/stream", headers={"Last-Event-ID": "1"}) as stream:
        again = await asyncio.wait_for(anext(events(stream)), 10)
    assert (again.event, again.id) == ("stream.reset", reset_at)
    async with client.post(f"/v1/sessions/{sid}/messages", json={"content": "echidna", "stream": True}) as resp:
        got = await asyncio.wait_for(read_until(resp, TERMINAL), 30)
    assert got[-1].event == "task.completed" and got[0].id is not None and got[0].id > reset_at


async def test_keep_latest_drops_the_hidden_context_summaries(factory: Factory) -> None:
    model = FakeOpenAI("ctx-model")
    await model.start()
    try:
        client = await factory({
            "providers": {"fake": {"kind": "openai", "base_url": f"{model.url}/v1", "model": "ctx-model"}},
            "agents": {"default": {"model": ["fake"]}},
            "context": {"strategy": "summarize", "windows": {"ctx-model": 1200}, "reserve_tokens": 200,
                        "summary_tokens": 100},
        })
        messages: list[dict[str, Any]] = []
        for i in range(60):  # far more than the window holds: the answer needs a summary
            for role, text in (("user", f"question {i} about item {i}"), ("assistant", f"answer {i} is fine")):
                messages.append({"id": f"msg_{role[0]}{i}", "parent_id": messages[-1]["id"] if messages else None,
                                 "role": role, "content": text, "created_at": "2026-01-01T00:00:00Z"})
        doc = {"format": "sessiond.session", "version": 1, "active_leaf_id": messages[-1]["id"],
               "messages": messages, "session": {"id": "ses_summarised", "created_at": "2026-01-01T00:00:00Z"}}
        assert (await client.post("/v1/sessions/import", json=doc)).status == 201
        sid = "ses_summarised"
        await _send(client, sid, "one more question")
        store = client.app[STORE]
        loaded = await store.load_session(sid, events=10)
        assert loaded is not None and len(loaded.summaries) == 1
        rule = {"ttl_seconds": 0.1, "action": "keep_latest", "keep_latest": 4}
        assert (await client.patch(f"/v1/sessions/{sid}", json={"retention": rule})).status == 200

        async def trimmed() -> bool:
            return bool((await (await client.get(f"/v1/sessions/{sid}")).json())["message_count"] == 4)

        await _eventually(trimmed, "the trim")
        loaded = await store.load_session(sid, events=10)
        assert loaded is not None and loaded.summaries == [] and len(loaded.nodes) == 4
    finally:
        await model.stop()


async def test_a_deletion_by_retention_sends_the_session_deleted_webhook(
    factory: Factory, aiohttp_server: Any
) -> None:
    got: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def hook(request: web.Request) -> web.Response:
        await got.put(await request.json())
        return web.Response(status=204)

    receiver = web.Application()
    receiver.router.add_post("/hook", hook)
    server = await aiohttp_server(receiver)
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    endpoint = {"url": str(server.make_url("/hook")), "secret": secret, "events": ["session.deleted"]}
    client = await factory({"webhooks": {"endpoints": {"rx": endpoint}, "poll_seconds": 0.05}})
    s = await new_session(client, retention={"ttl_seconds": 0.1})
    delivered = await asyncio.wait_for(got.get(), 15)
    assert delivered["type"] == "session.deleted" and delivered["data"]["session_id"] == s["id"]
    assert await _status(client, s["id"]) == 404


async def test_a_session_with_a_running_task_is_never_cut(factory: Factory) -> None:
    # 30 tokens at 10 a second: the answer runs about 3 s, far past the session's 1 s rule.
    client = await factory({"simulated": {"tokens_per_second": 10, "reply_tokens": 30}})
    s = await new_session(client, retention={"ttl_seconds": 1})
    sid = s["id"]
    async with client.post(f"/v1/sessions/{sid}/messages", json={"content": "tell me", "stream": True}) as resp:
        assert resp.status == 200
        got = await asyncio.wait_for(read_until(resp, TERMINAL), 30)
    # The sweeper found it due while it answered, and left it alone.
    assert await _metric(client, "busy") > 0
    assert got[-1].event == "task.completed"
    done = next(e for e in got if e.event == "message.completed")
    deltas = [e for e in got if e.event == "message.delta"]
    assert len(deltas) == 30 and done.data["message"]["content"] == "".join(e.data["delta"] for e in deltas)
    # Once idle past its rule, it goes.
    await _gone(client, sid)


async def test_a_busy_session_does_not_hold_back_the_others(factory: Factory) -> None:
    # One session a sweep: the busy one, due first, would take every batch if not set aside.
    client = await factory({"simulated": {"tokens_per_second": 10, "reply_tokens": 40}}, batch=1)
    hold = {"ttl_seconds": 3600}
    busy = (await new_session(client, retention=hold))["id"]
    idle = (await new_session(client, retention=hold))["id"]
    async with client.post(f"/v1/sessions/{busy}/messages", json={"content": "go on", "stream": True}) as resp:
        assert resp.status == 200
        stream = events(resp)
        assert (await asyncio.wait_for(anext(stream), 10)).event == "task.started"
        for sid in (busy, idle):
            patched = await client.patch(f"/v1/sessions/{sid}", json={"retention": {"ttl_seconds": 0.1}})
            assert patched.status == 200
        await _gone(client, idle)
        # ...while the other still answers (a task's end makes it fresh, and due last).
        assert (await (await client.get(f"/v1/sessions/{busy}")).json())["status"] == "running"
        rest = [ev async for ev in stream]
    assert rest[-1].event == "task.completed"
    assert await _metric(client, "busy") > 0


async def test_temporary_sessions_go_when_idle(factory: Factory) -> None:
    client = await factory(temporary_ttl_seconds=1.0)
    temporary = await new_session(client, temporary=True)
    assert temporary["temporary"] is True and temporary["retention"] is None
    await _send(client, temporary["id"], "a throwaway question")
    saved = await new_session(client, temporary=True)
    patched = await client.patch(f"/v1/sessions/{saved['id']}", json={"temporary": False})
    assert patched.status == 200 and (await patched.json())["temporary"] is False
    regular = await new_session(client)
    await _gone(client, temporary["id"])
    await _sweeps_after(client)
    assert await _status(client, saved["id"]) == 200
    assert await _status(client, regular["id"]) == 200


async def test_retention_bodies_are_checked(factory: Factory) -> None:
    client = await factory()
    for body in (
        {"temporary": True, "retention": {"ttl_seconds": 60}},
        {"retention": {"ttl_seconds": 0}},
        {"retention": {"ttl_seconds": 60, "action": "keep_latest"}},
        {"retention": {"ttl_seconds": 60, "keep_latest": 3}},
        {"retention": {"ttl_seconds": 60, "action": "archive"}},
        {"retention": {"ttl_seconds": 60, "extra": 1}},
    ):
        resp = await client.post("/v1/sessions", json=body)
        assert resp.status == 422, body
        assert resp.content_type == "application/problem+json"
    s = await new_session(client, retention={"ttl_seconds": 60, "action": "keep_latest", "keep_latest": 5})
    assert s["retention"] == {"ttl_seconds": 60.0, "action": "keep_latest", "keep_latest": 5}
    conflict = await client.patch(f"/v1/sessions/{s['id']}", json={"temporary": True})
    assert conflict.status == 422
    cleared = await client.patch(f"/v1/sessions/{s['id']}", json={"retention": None, "temporary": True})
    assert cleared.status == 200
    body = await cleared.json()
    assert body["retention"] is None and body["temporary"] is True


async def test_a_sweep_acts_on_at_most_its_batch(factory: Factory) -> None:
    client = await factory(sweep_seconds=0, batch=2)  # no sweeps of its own: this test makes them
    sweeper = client.app[SWEEPER]
    ids = [(await new_session(client, retention={"ttl_seconds": 0.05}))["id"] for _ in range(5)]
    store = client.app[STORE]

    async def all_due() -> bool:
        query = ExpiryQuery(now=time.time(), rules=sweeper.settings.rules, limit=100)
        return len(await store.expired_sessions(query)) == 5

    await _eventually(all_due, "five due sessions")
    assert [await sweeper.sweep() for _ in range(4)] == [2, 2, 1, 0]
    for sid in ids:
        assert await _status(client, sid) == 404


async def _upload(client: Client, sid: str, text: bytes, user: str | None = None) -> str:
    form = aiohttp.FormData()
    form.add_field("file", text, filename="notes.txt", content_type="text/plain")
    headers = {"X-End-User-ID": user} if user else {}
    resp = await client.post(f"/v1/sessions/{sid}/upload", data=form, headers=headers)
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["id"])


async def test_a_deleted_session_takes_only_the_documents_that_were_its_alone(factory: Factory) -> None:
    client = await factory()
    source = await new_session(client)
    sent = await _send(client, source["id"], "hello")
    own = await _upload(client, source["id"], b"the source's own notes")
    fork = await client.post(f"/v1/sessions/{source['id']}/fork", json={"message_id": sent["message"]["id"]})
    assert fork.status == 201
    fork_id = (await fork.json())["id"]
    users = await new_session(client, end_user_id="u1")
    theirs = await _upload(client, users["id"], b"an end user's notes", user="u1")

    async def doc(document_id: str) -> int:
        return (await client.get(f"/v1/documents/{document_id}")).status

    assert (await client.delete(f"/v1/sessions/{source['id']}")).status == 204
    assert await doc(own) == 200  # the fork links it still
    assert (await client.delete(f"/v1/sessions/{fork_id}")).status == 204
    assert await doc(own) == 404
    headers = {"X-End-User-ID": "u1"}
    assert (await client.delete(f"/v1/sessions/{users['id']}", headers=headers)).status == 204
    assert await doc(theirs) == 200  # in that user's library


# -- cluster mode -------------------------------------------------------------------------


@pytest.fixture
async def dsn() -> AsyncIterator[str]:
    async with database() as url:
        yield url


@pytest.mark.slow
async def test_one_node_sweeps_and_deletes_through_the_owner(
    dsn: str, redis_url: str, make_client: ClientFactory, tmp_path: Path
) -> None:
    # dsn comes first: the database is dropped only after the servers using it have stopped.
    sections: dict[str, Any] = {
        "store": {"kind": "postgres", "postgres_dsn": dsn},
        "fanout": {"kind": "redis"},
        "redis": {"url": redis_url},
        "retention": {**FAST, "namespaces": {"old": {"ttl_seconds": 0.5}}},
    }
    prefix = f"t{secrets.token_hex(4)}"
    nodes = {
        name: await make_client(tmp_path / name, cluster={"node_id": name, "prefix": prefix}, **sections)
        for name in ("a", "b")
    }
    owned: dict[str, str] = {}  # node -> a session whose actor lives there
    actors = {}
    for name, node in nodes.items():
        s = await new_session(node, namespace="old", retention={"ttl_seconds": 3600})  # held while set up
        await _send(node, s["id"], f"hello from {name}")
        (actor,) = [a for a in node.app[REGISTRY].actors() if a.id == s["id"]]
        owned[name], actors[name] = s["id"], actor
    for name, node in nodes.items():
        assert (await node.patch(f"/v1/sessions/{owned[name]}", json={"retention": None})).status == 200

    for sid in owned.values():
        await _gone(nodes["a"], sid)
    sweeps = {name: await _metric(node, "sweeps") for name, node in nodes.items()}
    (sweeper,) = [name for name, n in sweeps.items() if n > 0]  # one node only ever swept
    other = "b" if sweeper == "a" else "a"
    assert await _metric(nodes[other], "sweeps_skipped") > 0
    assert await _metric(nodes[sweeper], "deleted") == 2
    # The session that lived on the other node was deleted there, by its own actor.
    assert actors[other].stop_reason == "deleted" and owned[other] not in nodes[other].app[REGISTRY]

    # The sweeper drains: it gives the role back, and the other node sweeps from then on.
    await nodes[sweeper].close()
    late = await new_session(nodes[other], namespace="old")
    await _gone(nodes[other], late["id"])
    assert await _metric(nodes[other], "deleted") == 1
