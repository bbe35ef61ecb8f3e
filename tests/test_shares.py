"""Read-only share links: they show the title and the path up to their message and nothing else
of the session, stop at once when revoked or expired (the same 404 as a token never made), only
a session's writers make them, and anyone with an API key may continue one as a copy. On SQLite
and on PostgreSQL; the views are counted per client address."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from server.logs import redact_path
from tests.conftest import ClientFactory, new_session
from tests.fake_models import FakeOpenAI
from tests.pg import database

Client = TestClient[Any, Any]
Maker = Callable[..., Awaitable[Client]]


@pytest.fixture(params=["sqlite", "postgres"])
async def make(request: Any, make_client: ClientFactory) -> AsyncIterator[Maker]:
    """A server on the store of the parameter; sections override the test config."""
    made: list[Client] = []
    if request.param == "sqlite":
        yield make_client
        return
    async with database() as dsn:

        async def factory(**sections: dict[str, Any]) -> Client:
            store = {"kind": "postgres", "postgres_dsn": dsn}
            c = await make_client(store=store, **sections)
            made.append(c)
            return c

        yield factory
        for c in made:
            await c.close()  # before the database is dropped


@pytest.fixture
async def model() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI("fake") as fake:
        yield fake


async def _ok(resp: Any, status: int = 200) -> Any:
    assert resp.status == status, await resp.text()
    return None if status == 204 else await resp.json()


async def _view(client: Client, token: str, **params: str) -> aiohttp.ClientResponse:
    """Open a share link as a stranger would: no credential of any kind."""
    async with aiohttp.ClientSession() as anonymous:
        resp = await anonymous.get(client.make_url(f"/v1/shares/{token}"), params=params)
        await resp.read()
        return resp


async def _view_json(client: Client, token: str) -> dict[str, Any]:
    resp = await _view(client, token)
    assert resp.status == 200, await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


async def test_a_share_shows_the_path_and_nothing_else(make: Maker, model: FakeOpenAI) -> None:
    client = await make(
        providers={"main": {"kind": "openai", "base_url": model.url + "/v1", "model": "m"}},
        agents={"default": {"model": ["main"]}},
    )
    s = await new_session(
        client, title="Trip plan", system_prompt="SYSPROMPT-zebra", metadata={"secret": "META-walrus"},
        context={"plan": "CTX-otter"}, tools=["calculator"],
    )
    sid = s["id"]
    model.tool_call = ("calculator", '{"expression": "6 * 7"}')
    first = await _ok(await client.post(f"/v1/sessions/{sid}/messages", json={"content": "what is six times seven"}))
    model.tool_call = None
    second = await _ok(await client.post(f"/v1/sessions/{sid}/messages", json={"content": "and the weather"}))
    # Another branch, then back: the share shows the active path only.
    await _ok(await client.post(
        f"/v1/sessions/{sid}/messages/{second['message']['parent_id']}/edit", json={"content": "OTHER-BRANCH-heron"}
    ))
    await _ok(await client.post(f"/v1/sessions/{sid}/navigate", json={"message_id": second["message"]["id"]}))
    path = (await _ok(await client.get(f"/v1/sessions/{sid}/messages")))["items"]
    assert first["message"]["id"] in [m["id"] for m in path]

    made = await _ok(await client.post(f"/v1/sessions/{sid}/shares"), 201)
    assert made["token"].startswith("sh_") and len(made["token"]) >= 3 + 43  # 256 bits
    assert made["url"].endswith(f"/#share={made['token']}")
    assert made["message_id"] == second["message"]["id"] and made["expires_at"] is None

    resp = await _view(client, made["token"])
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
    raw = await resp.text()
    for secret in ("SYSPROMPT-zebra", "META-walrus", "CTX-otter", "OTHER-BRANCH-heron", "6 * 7", sid):
        assert secret not in raw, secret
    for field in ("tool_calls", "arguments", "call_1", "output", "metadata", "context", "system_prompt",
                  "usage", "model", "agent_id", "end_user_id"):
        assert f'"{field}"' not in raw, field
    shared = await resp.json()
    assert shared["title"] == "Trip plan"
    assert [(m["id"], m["role"], m["content"], m["created_at"]) for m in shared["messages"]] == [
        (m["id"], m["role"], m["content"], m["created_at"]) for m in path
    ]
    assert shared["messages"][1]["content"] == "fake read the tool result: 42"

    # What is written after the link was made is not shared.
    await _ok(await client.post(f"/v1/sessions/{sid}/messages", json={"content": "LATER-ibis"}))
    assert "LATER-ibis" not in str(await _view_json(client, made["token"]))

    html = await (await _view(client, made["token"], format="html")).json()
    assert all(m["content_html"] for m in html["messages"])


async def test_cut_off_expiry_and_revoke(make: Maker) -> None:
    client = await make()
    s = await new_session(client, title="notes")
    sid = s["id"]
    one = await _ok(await client.post(f"/v1/sessions/{sid}/messages", json={"content": "one"}))
    await _ok(await client.post(f"/v1/sessions/{sid}/messages", json={"content": "two"}))

    # A cut-off: the path up to that message, whatever came after it.
    cut = await _ok(await client.post(f"/v1/sessions/{sid}/shares", json={"message_id": one["message"]["id"]}), 201)
    shared = await _view_json(client, cut["token"])
    assert [m["content"] for m in shared["messages"]] == ["one", one["message"]["content"]]
    missing = await client.post(f"/v1/sessions/{sid}/shares", json={"message_id": "msg_nope"})
    assert missing.status == 404

    # Hostile or impossible expiries are refused.
    for body in ({"expires_at": "2001-01-01T00:00:00Z"}, {"expires_at": "2030-01-01T00:00:00"},
                 {"expires_at": "soon"}, {"expires_in": 0}, {"expires_in": 10, "expires_at": "2099-01-01T00:00:00Z"},
                 {"unknown": 1}):
        resp = await client.post(f"/v1/sessions/{sid}/shares", json=body)
        assert resp.status == 422, body
        assert resp.headers["Content-Type"].startswith("application/problem+json")
    later = await _ok(await client.post(f"/v1/sessions/{sid}/shares", json={"expires_at": "2035-01-01T00:00:00Z"}), 201)
    assert later["expires_at"] == "2035-01-01T00:00:00Z"

    # Expiry: a link of one second works, then answers 404 (polled with a deadline).
    brief = await _ok(await client.post(f"/v1/sessions/{sid}/shares", json={"expires_in": 1}), 201)
    assert (await _view(client, brief["token"])).status == 200
    deadline = time.monotonic() + 10
    while (await _view(client, brief["token"])).status == 200:
        assert time.monotonic() < deadline, "the link did not expire"
        await asyncio.sleep(0.1)
    gone = await _view(client, brief["token"])
    never = await _view(client, "sh_" + "A" * 43)
    assert gone.status == never.status == 404
    assert (await gone.json())["detail"] == (await never.json())["detail"]
    listed = (await _ok(await client.get(f"/v1/sessions/{sid}/shares")))["items"]
    assert {x["id"] for x in listed} == {cut["id"], later["id"]}
    assert all("token" not in x for x in listed)

    # Revoked: at once, and like any unknown token.
    await _ok(await client.delete(f"/v1/sessions/{sid}/shares/{cut['id']}"), 204)
    revoked = await _view(client, cut["token"])
    assert revoked.status == 404 and (await revoked.json())["detail"] == (await never.json())["detail"]
    assert (await client.delete(f"/v1/sessions/{sid}/shares/{cut['id']}")).status == 404
    for bad in ("x", "sh_short", "sh_" + "A" * 43 + "/../x", "%00"):
        assert (await _view(client, bad)).status == 404

    # A deleted session takes its links with it.
    await _ok(await client.delete(f"/v1/sessions/{sid}"), 204)
    assert (await _view(client, later["token"])).status == 404


async def test_only_the_sessions_writers_make_list_and_revoke_links(make: Maker) -> None:
    client = await make(shares={"max_per_session": 2})
    alice = {"X-End-User-ID": "alice"}
    bob = {"X-End-User-ID": "bob"}
    resp = await client.post("/v1/sessions", json={"title": "alice's"}, headers=alice)
    sid = (await _ok(resp, 201))["id"]
    await _ok(await client.post(f"/v1/sessions/{sid}/messages", json={"content": "hi"}, headers=alice))
    link = await _ok(await client.post(f"/v1/sessions/{sid}/shares", headers=alice), 201)

    # Bob sees nothing of alice's session: 404, as for a session that does not exist.
    assert (await client.post(f"/v1/sessions/{sid}/shares", headers=bob)).status == 404
    assert (await client.get(f"/v1/sessions/{sid}/shares", headers=bob)).status == 404
    assert (await client.delete(f"/v1/sessions/{sid}/shares/{link['id']}", headers=bob)).status == 404
    assert (await _view(client, link["token"])).status == 200  # still live

    # A session token may share its own session, and no other.
    pair = await _ok(await client.post(f"/v1/sessions/{sid}/tokens"))
    bearer = {"Authorization": f"Bearer {pair['access_token']}"}
    async with aiohttp.ClientSession() as browser:
        own = await browser.post(client.make_url(f"/v1/sessions/{sid}/shares"), headers=bearer)
        assert own.status == 201, await own.text()
        other = await new_session(client)
        assert (await browser.get(client.make_url(f"/v1/sessions/{other['id']}/shares"), headers=bearer)).status == 404
        listed = await browser.get(client.make_url(f"/v1/sessions/{sid}/shares"), headers=bearer)
        assert len((await listed.json())["items"]) == 2
        # Continuing as a copy makes a session: an API key's business, not a session token's.
        copy = await browser.post(client.make_url(f"/v1/shares/{link['token']}/fork"), headers=bearer)
        assert copy.status == 403

    # Bounded per session: the third live link waits for one to go.
    full = await client.post(f"/v1/sessions/{sid}/shares", headers=alice)
    assert full.status == 409 and (await full.json())["code"] == "share_limit"
    await _ok(await client.delete(f"/v1/sessions/{sid}/shares/{link['id']}", headers=alice), 204)
    await _ok(await client.post(f"/v1/sessions/{sid}/shares", headers=alice), 201)


async def test_the_bound_holds_when_links_are_made_at_once(make: Maker) -> None:
    client = await make(shares={"max_per_session": 2})
    s = await new_session(client)
    answers = await asyncio.gather(*(client.post(f"/v1/sessions/{s['id']}/shares") for _ in range(8)))
    assert sorted(r.status for r in answers) == [201, 201] + [409] * 6
    listed = await _ok(await client.get(f"/v1/sessions/{s['id']}/shares"))
    assert len(listed["items"]) == 2


async def test_continue_a_shared_conversation_as_a_copy(make: Maker) -> None:
    client = await make()
    alice = {"X-End-User-ID": "alice"}
    bob = {"X-End-User-ID": "bob"}
    resp = await client.post("/v1/sessions", json={
        "title": "recipes", "system_prompt": "SYSPROMPT-lynx", "metadata": {"k": "META-crane"}, "tools": ["calculator"],
    }, headers=alice)
    sid = (await _ok(resp, 201))["id"]
    tool = {"content": '/tool calculator {"expression": "2+2"}'}
    await _ok(await client.post(f"/v1/sessions/{sid}/messages", json=tool, headers=alice))
    link = await _ok(await client.post(f"/v1/sessions/{sid}/shares", headers=alice), 201)
    shared = await _view_json(client, link["token"])

    copy = await _ok(await client.post(f"/v1/shares/{link['token']}/fork", json={}, headers=bob), 201)
    assert copy["id"] != sid and copy["end_user_id"] == "bob" and copy["title"] == "recipes"
    assert copy["metadata"] == {} and copy["system_prompt"] is None and copy["forked_from"] is None
    history = (await _ok(await client.get(f"/v1/sessions/{copy['id']}/messages", headers=bob)))["items"]
    assert [(m["role"], m["content"]) for m in history] == [(m["role"], m["content"]) for m in shared["messages"]]
    assert not {m["id"] for m in history} & {m["id"] for m in shared["messages"]}
    exported = await (await client.get(f"/v1/sessions/{copy['id']}/export", headers=bob)).text()
    assert '"arguments"' not in exported and "SYSPROMPT-lynx" not in exported and "META-crane" not in exported
    # Bob's own from now on: it answers him, and alice's session is not his to see.
    more = await _ok(await client.post(f"/v1/sessions/{copy['id']}/messages", json={"content": "more"}, headers=bob))
    assert more["message"]["role"] == "assistant"
    assert (await client.get(f"/v1/sessions/{sid}", headers=bob)).status == 404
    assert (await client.post("/v1/shares/sh_" + "B" * 43 + "/fork", json={}, headers=bob)).status == 404


async def test_share_views_are_counted_per_address(make_client: ClientFactory) -> None:
    await _views_are_counted(await make_client(limits={"share_views_per_hour": 3}))


async def test_share_views_are_counted_in_redis_across_servers(
    make_client: ClientFactory, redis_url: str, tmp_path: Path
) -> None:
    sections: dict[str, Any] = {"limits": {"share_views_per_hour": 3, "backend": "redis"}, "redis": {"url": redis_url}}
    first = await make_client(**sections)
    await _views_are_counted(first)
    # Another server on the same Redis (and its own database): the address is as full there.
    other = await make_client(tmp_path / "other", **sections)
    assert (await _view(other, "sh_" + "D" * 43)).status == 429


async def _views_are_counted(client: Client) -> None:
    s = await new_session(client)
    link = await _ok(await client.post(f"/v1/sessions/{s['id']}/shares"), 201)
    assert (await _view(client, link["token"])).status == 200
    assert (await _view(client, "sh_" + "C" * 43)).status == 404  # a guess counts too
    assert (await _view(client, link["token"])).status == 200
    over = await _view(client, link["token"])
    assert over.status == 429 and int(over.headers["Retry-After"]) >= 1
    problem = await over.json()
    assert problem["code"] == "rate_limited" and "share_views_per_hour" in problem["detail"]
    metrics = await (await client.get("/metrics")).text()
    assert 'sessiond_rate_limit_rejections_total{limit="share_views_per_hour"} 1.0' in metrics


def test_access_logs_never_carry_a_share_token() -> None:
    assert redact_path("/v1/shares/sh_secret") == "/v1/shares/[redacted]"
    assert redact_path("/v1/shares/sh_secret/fork") == "/v1/shares/[redacted]/fork"
    assert redact_path("/v1/sessions/ses_1/shares/shr_1") == "/v1/sessions/ses_1/shares/shr_1"
