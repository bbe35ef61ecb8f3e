"""Agents: config and API defined, persisted, used by sessions; usage per end user."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import ClientFactory, new_session
from tests.fake_models import FakeOpenAI, converse


@pytest.fixture
async def model() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI("agent-model") as fake:
        yield fake


def _provider(fake: FakeOpenAI) -> dict[str, Any]:
    return {"kind": "openai", "base_url": fake.url + "/v1", "model": "agent-model"}


async def test_agents_crud(client: TestClient[Any, Any]) -> None:
    listed = (await (await client.get("/v1/agents")).json())["items"]
    assert [a["id"] for a in listed] == ["default"]
    assert listed[0]["model"] == [{"provider": "simulated", "model": None}] and listed[0]["source"] == "config"

    resp = await client.post("/v1/agents", json={
        "name": "helper", "system_prompt": "Be brief.", "model": ["simulated"], "tools": ["calculator"],
        "temperature": 0.3,
    })
    assert resp.status == 201, await resp.text()
    agent = await resp.json()
    assert agent["id"].startswith("agt_") and agent["source"] == "api"
    assert agent["tools"] == ["calculator"] and agent["temperature"] == 0.3

    resp = await client.patch(
        f"/v1/agents/{agent['id']}", json={"system_prompt": "Be very brief.", "temperature": None}
    )
    changed = await resp.json()
    assert resp.status == 200 and changed["system_prompt"] == "Be very brief." and changed["temperature"] is None
    assert changed["name"] == "helper" and changed["tools"] == ["calculator"]
    got = await (await client.get(f"/v1/agents/{agent['id']}")).json()
    assert got == changed
    assert [a["id"] for a in (await (await client.get("/v1/agents")).json())["items"]] == ["default", agent["id"]]

    assert (await client.delete(f"/v1/agents/{agent['id']}")).status == 204
    assert (await client.get(f"/v1/agents/{agent['id']}")).status == 404
    assert (await client.delete(f"/v1/agents/{agent['id']}")).status == 404


async def test_agent_validation(client: TestClient[Any, Any]) -> None:
    for body, word in (
        ({"name": "x", "model": ["nowhere"]}, "nowhere"),
        ({"name": "x", "tools": ["teleport"]}, "teleport"),
        ({"name": "x", "temperature": 3}, "temperature"),
        ({"name": ""}, "name"),
        ({"name": "x", "model": []}, "model"),
        ({"name": "x", "colour": "red"}, "colour"),
    ):
        resp = await client.post("/v1/agents", json=body)
        assert resp.status == 422, body
        assert word in (await resp.json())["detail"]
    resp = await client.patch("/v1/agents/default", json={"name": "mine"})
    assert resp.status == 409 and "config.toml" in (await resp.json())["detail"]
    assert (await client.delete("/v1/agents/default")).status == 409
    resp = await client.post("/v1/agents", headers={"X-End-User-ID": "u1"}, json={"name": "x"})
    assert resp.status == 403


async def test_agents_survive_a_restart(make_client: ClientFactory, tmp_path: Path) -> None:
    client = await make_client(tmp_path / "d")
    agent = await (await client.post("/v1/agents", json={"name": "kept", "system_prompt": "Hi."})).json()
    await client.close()
    client = await make_client(tmp_path / "d")
    got = await (await client.get(f"/v1/agents/{agent['id']}")).json()
    assert got["name"] == "kept" and got["system_prompt"] == "Hi."
    assert got["model"] == [{"provider": "simulated", "model": None}]  # the default agent's route


async def test_an_agent_whose_provider_was_removed_fails_its_tasks_clearly(
    make_client: ClientFactory, model: FakeOpenAI, tmp_path: Path
) -> None:
    client = await make_client(tmp_path / "d", providers={"remote": _provider(model)})
    agent = await (await client.post("/v1/agents", json={"name": "a", "model": ["remote"]})).json()
    s = await new_session(client, agent_id=agent["id"])
    await client.close()
    client = await make_client(tmp_path / "d")  # "remote" is gone from the configuration
    events = await converse(client, s["id"], "hello")
    assert events[-1].event == "task.failed" and "'remote', which is not configured" in events[-1].data["error"]


async def test_a_session_talks_to_its_agent(make_client: ClientFactory, model: FakeOpenAI) -> None:
    client = await make_client(providers={"remote": _provider(model)})
    agent = await (await client.post("/v1/agents", json={
        "name": "pirate", "system_prompt": "Talk like a pirate.", "model": [{"provider": "remote"}],
        "tools": ["calculator"], "temperature": 0.9,
    })).json()
    s = await new_session(client, agent_id=agent["id"])
    assert s["agent_id"] == agent["id"] and s["tools"] == ["calculator"], "the agent's tools by default"
    events = await converse(client, s["id"], "ahoy")
    assert events[-1].event == "task.completed"
    sent = model.requests[0]
    assert sent["messages"][0] == {"role": "system", "content": "Talk like a pirate."}
    assert sent["temperature"] == 0.9 and sent["model"] == "agent-model"
    assert [t["function"]["name"] for t in sent["tools"]] == ["calculator"]

    # Its own system prompt wins over the agent's; its tools too, if it names any.
    s2 = await new_session(client, agent_id=agent["id"], system_prompt="Talk like a poet.", tools=["current_time"])
    await converse(client, s2["id"], "hello")
    assert model.requests[1]["messages"][0] == {"role": "system", "content": "Talk like a poet."}
    assert [t["function"]["name"] for t in model.requests[1]["tools"]] == ["current_time"]

    resp = await client.post("/v1/sessions", json={"agent_id": "agt_missing"})
    assert resp.status == 422 and "agt_missing" in (await resp.json())["detail"]


async def test_config_agents_and_a_raw_system_prompt(make_client: ClientFactory, model: FakeOpenAI) -> None:
    client = await make_client(
        providers={"remote": _provider(model)},
        agents={
            "default": {"model": ["remote/agent-model"], "tools": ["calculator"], "system_prompt": "You help."},
            "support": {"name": "Support desk", "model": ["simulated"], "system_prompt": "Be kind."},
        },
    )
    listed = {a["id"]: a for a in (await (await client.get("/v1/agents")).json())["items"]}
    assert listed["support"]["name"] == "Support desk" and listed["support"]["source"] == "config"
    assert listed["default"]["model"] == [{"provider": "remote", "model": "agent-model"}]

    # A raw system prompt: the default agent's model and tools, the session's own prompt.
    s = await new_session(client, system_prompt="Answer in French.")
    assert s["tools"] == ["calculator"] and s["agent_id"] is None
    events = await converse(client, s["id"], "hello")
    assert next(e.data for e in events if e.event == "message.completed")["message"]["model"] == "remote/agent-model"
    assert model.requests[0]["messages"][0] == {"role": "system", "content": "Answer in French."}

    s = await new_session(client, agent_id="support")
    events = await converse(client, s["id"], "hello")
    assert next(e.data for e in events if e.event == "message.completed")["message"]["model"] == "simulated"


async def test_usage_per_end_user(client: TestClient[Any, Any]) -> None:
    a = await new_session(client, end_user_id="u1")
    b = await new_session(client, end_user_id="u1")
    c = await new_session(client, end_user_id="u2")
    totals = {}
    for s in (a, b, c):
        body = await (await client.post(f"/v1/sessions/{s['id']}/messages", json={"content": "one two three"})).json()
        totals[s["id"]] = body["usage"]
    got = await (await client.get("/v1/usage", params={"end_user_id": "u1"})).json()
    want = [totals[a["id"]][k] + totals[b["id"]][k] for k in ("prompt", "completion", "total")]
    assert got["sessions"] == 2 and [got["usage"][k] for k in ("prompt", "completion", "total")] == want
    mine = await (await client.get("/v1/usage", headers={"X-End-User-ID": "u2"})).json()
    assert mine["end_user_id"] == "u2" and mine["usage"] == totals[c["id"]]
    resp = await client.get("/v1/usage", params={"end_user_id": "u1"}, headers={"X-End-User-ID": "u2"})
    assert resp.status == 404
    assert (await client.get("/v1/usage")).status == 422


async def test_agents_and_providers_are_for_operator_keys_only(client: TestClient[Any, Any]) -> None:
    """System prompts and internal provider URLs are the operator's: not an end user's key, not a token."""
    made = await client.post("/v1/agents", json={"name": "secretive", "system_prompt": "Never reveal X."})
    agent = await made.json()
    s = await new_session(client, with_token=True)
    paths = ("/v1/agents", f"/v1/agents/{agent['id']}", "/v1/providers")
    async with aiohttp.ClientSession(base_url=str(client.make_url(""))) as browser:
        for path in paths:
            assert (await client.get(path)).status == 200, path
            as_user = await client.get(path, headers={"X-End-User-ID": "u1"})
            assert as_user.status == 403, path
            assert "Never reveal" not in await as_user.text()
            by_token = await browser.get(path, headers={"Authorization": f"Bearer {s['access_token']}"})
            assert by_token.status == 403, path
            assert "Never reveal" not in await by_token.text()
