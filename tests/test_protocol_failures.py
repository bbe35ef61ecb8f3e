"""A task that fails, through every protocol adapter: each says so in its own words."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient
from openai import AsyncOpenAI

from tests.conftest import HEADERS, TEST_KEY, ClientFactory, new_session
from tests.node import base_url, require_node, run_node
from tests.ui_stream import frames, types

# A provider nothing answers for: every turn of its agent fails.
DEAD = {"dead": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}}


async def failing_session(client: TestClient[Any, Any]) -> dict[str, Any]:
    agent = await (await client.post("/v1/agents", json={"name": "broken", "model": ["dead"]})).json()
    return await new_session(client, agent_id=agent["id"])


async def test_ai_sdk_gets_error_then_finish(make_client: ClientFactory) -> None:
    require_node()
    client = await make_client(providers=DEAD)
    s = await failing_session(client)
    got = await run_node("ai_sdk_chat.mjs", "send", base_url(client), s["id"], HEADERS, {"text": "hi"})
    assert got["errors"] and "dead" in got["errors"][0]
    assert got["message"]["metadata"]["status"] == "failed"
    s2 = await failing_session(client)
    resp = await client.post("/v1/ai-sdk/chat", json={
        "id": s2["id"], "messages": [{"id": "u", "role": "user", "parts": [{"type": "text", "text": "hi"}]}]})
    got_frames = await frames(resp)
    assert types(got_frames)[-3:] == ["error", "finish", "[DONE]"]
    assert got_frames[-2].data["finishReason"] == "error"


async def test_openai_gets_a_failed_response(make_client: ClientFactory) -> None:
    client = await make_client(providers=DEAD)
    s = await failing_session(client)
    async with AsyncOpenAI(base_url=base_url(client) + "/openai/v1", api_key=TEST_KEY, max_retries=0) as api:
        stream = await api.responses.create(input="hi", conversation=s["id"], stream=True)
        events = [e async for e in stream]
        assert events[-1].type == "response.failed"
        failed = events[-1].response
        assert failed.status == "failed" and failed.error is not None and "dead" in failed.error.message
        waited = await api.responses.create(input="again", conversation=s["id"])
        assert waited.status == "failed" and waited.error is not None and "dead" in waited.error.message
        assert (await api.responses.retrieve(waited.id)).status == "failed"


async def test_ag_ui_gets_run_error(make_client: ClientFactory) -> None:
    require_node()
    client = await make_client(providers=DEAD)
    s = await failing_session(client)
    got = await run_node("ag_ui_run.mjs", "run", base_url(client), s["id"], HEADERS, {"text": "hi"})
    last = got["events"][-1]
    assert last["type"] == "RUN_ERROR" and last["code"] == "task_failed" and "dead" in last["message"]
    assert [e["type"] for e in got["events"]][-2] == "MESSAGES_SNAPSHOT"

