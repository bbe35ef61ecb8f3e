"""The protocol adapters in cluster mode: the session's actor on one node, the client on another
(real server processes, the real Redis and PostgreSQL)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from openai import AsyncOpenAI

from tests.conftest import HEADERS, TEST_KEY
from tests.node import require_node, run_node
from tests.test_cluster import _nodes, cluster_env

pytestmark = pytest.mark.slow
__all__ = ["cluster_env"]  # the fixture, shared with tests/test_cluster.py


async def test_every_adapter_across_nodes(server_process: Any, cluster_env: dict[str, str], tmp_path: Any) -> None:
    require_node()
    owner, other = (n.start() for n in _nodes(
        server_process, cluster_env, 2, tmp_path,
        # Two seconds an answer: the cut and the resume land while it runs, however loaded the machine.
        SESSIOND_SIMULATED_TOKENS_PER_SECOND="20", SESSIOND_SIMULATED_REPLY_TOKENS="40",
        SESSIOND_CLUSTER_LEASE_MS="15000", SESSIOND_CLUSTER_FORWARD_TIMEOUT_SECONDS="10",
    ))
    async with aiohttp.ClientSession(headers=HEADERS) as http:
        async with http.post(f"{owner}/v1/sessions", json={}) as r:
            sid = (await r.json())["id"]
        async with http.post(f"{owner}/v1/sessions/{sid}/prepare") as r:
            assert r.status == 200  # its actor lives on the first node

        async def history() -> list[dict[str, Any]]:
            async with http.get(f"{owner}/v1/sessions/{sid}/messages") as r:
                return (await r.json())["items"]  # type: ignore[no-any-return]

        # AI SDK through the other node, cut and resumed there.
        got = await run_node("ai_sdk_chat.mjs", "cut", other, sid, HEADERS, {"text": "one", "k": 6})
        assert got["errors"] == []
        assert "".join(p["text"] for p in got["message"]["parts"] if p["type"] == "text") == (
            await history())[-1]["content"]

        # OpenAI: started on the other node, streamed from the owner, cut, resumed on the other.
        async with AsyncOpenAI(base_url=other + "/openai/v1", api_key=TEST_KEY, max_retries=0) as far, \
                AsyncOpenAI(base_url=owner + "/openai/v1", api_key=TEST_KEY, max_retries=0) as near:
            started = await far.responses.create(input="two", conversation=sid, background=True)
            stream = await near.responses.retrieve(started.id, stream=True)
            before = []
            async for event in stream:
                before.append(event)
                if sum(e.type == "response.output_text.delta" for e in before) == 4:
                    break
            await stream.close()
            after = [e async for e in await far.responses.retrieve(
                started.id, stream=True, starting_after=before[-1].sequence_number)]
            text = "".join(e.delta for e in before + after if e.type == "response.output_text.delta")
            assert after[-1].type == "response.completed" and text == after[-1].response.output_text
            assert text == (await history())[-1]["content"]

        # AG-UI through the other node, its stream cut and spliced by the resuming fetch.
        got = await run_node("ag_ui_run.mjs", "cut", other, sid, HEADERS, {"text": "three", "k": 7})
        assert got["errors"] == []
        assert got["messages"][-1]["content"] == (await history())[-1]["content"]
        assert [m["role"] for m in await history()] == ["user", "assistant"] * 3
