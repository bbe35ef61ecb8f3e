"""Admission control holds for the protocol adapters as for the native routes."""

from __future__ import annotations

import pytest
from openai import AsyncOpenAI, InternalServerError

from tests.conftest import TEST_KEY, ClientFactory, new_session
from tests.node import base_url


async def test_no_stream_past_the_limit_through_any_adapter(make_client: ClientFactory) -> None:
    client = await make_client(admission={"max_open_streams": 0, "retry_after_seconds": 2})
    s = await new_session(client)
    refused = [
        await client.post("/v1/ai-sdk/chat", json={
            "id": s["id"], "messages": [{"id": "u", "role": "user", "parts": [{"type": "text", "text": "x"}]}]}),
        await client.get(f"/v1/ai-sdk/chat/{s['id']}/stream"),
        await client.post("/v1/ag-ui", json={
            "threadId": s["id"], "runId": "r", "messages": [{"id": "u", "role": "user", "content": "x"}]}),
        await client.get(f"/v1/ag-ui/{s['id']}/stream"),
        await client.post("/openai/v1/responses", json={"input": "x", "stream": True}),
    ]
    for resp in refused:
        assert resp.status == 503 and resp.headers["Retry-After"] == "2", resp.url
        assert (await resp.json())["code"] == "overloaded"
    assert (await (await client.get(f"/v1/sessions/{s['id']}/messages")).json())["items"] == []
    async with AsyncOpenAI(base_url=base_url(client) + "/openai/v1", api_key=TEST_KEY, max_retries=0) as api:
        # A response that does not stream is not a stream: admitted, and answered.
        done = await api.responses.create(input="plain", conversation=s["id"])
        assert done.status == "completed"
        with pytest.raises(InternalServerError) as refused_stream:
            await api.responses.retrieve(done.id, stream=True)
        assert refused_stream.value.status_code == 503


async def test_no_task_past_the_limit_through_any_adapter(make_client: ClientFactory) -> None:
    client = await make_client(admission={"max_running_tasks": 0})
    s = await new_session(client)
    for path, body in (
        ("/v1/ai-sdk/chat", {"id": s["id"], "messages": [
            {"id": "u", "role": "user", "parts": [{"type": "text", "text": "x"}]}]}),
        ("/v1/ag-ui", {"threadId": s["id"], "runId": "r", "messages": [{"id": "u", "role": "user", "content": "x"}]}),
        ("/openai/v1/responses", {"input": "x", "conversation": s["id"]}),
    ):
        resp = await client.post(path, json=body)
        assert resp.status == 503, path
    assert (await (await client.get(f"/v1/sessions/{s['id']}/messages")).json())["items"] == []
