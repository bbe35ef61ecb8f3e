"""The AG-UI adapter, driven by @ag-ui/client's HttpAgent in Node (which verifies the event
sequence itself) and checked on the wire."""

from __future__ import annotations

from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import HEADERS, ClientFactory, new_session
from tests.node import base_url, require_node, run_node


@pytest.fixture(autouse=True)
def _node() -> None:
    require_node()


async def stored(client: TestClient[Any, Any], sid: str) -> list[dict[str, Any]]:
    return (await (await client.get(f"/v1/sessions/{sid}/messages")).json())["items"]  # type: ignore[no-any-return]


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def deltas(events: list[dict[str, Any]]) -> str:
    return "".join(e["delta"] for e in events if e["type"] == "TEXT_MESSAGE_CONTENT")


async def wire(resp: aiohttp.ClientResponse) -> list[tuple[str, dict[str, Any]]]:
    """(id, event) of every frame up to the run's end."""
    out: list[tuple[str, dict[str, Any]]] = []
    frame_id = ""
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("id: "):
            frame_id = line[4:]
        elif line.startswith("data: "):
            event = msgspec.json.decode(line[6:])
            out.append((frame_id, event))
            if event["type"] in ("RUN_FINISHED", "RUN_ERROR"):
                break
    return out


async def test_http_agent_runs_and_gets_the_stored_thread(client: TestClient[Any, Any]) -> None:
    s = await new_session(client)
    got = await run_node("ag_ui_run.mjs", "run", base_url(client), s["id"], HEADERS, {"text": "hello agent"})
    assert got["errors"] == []
    k = kinds(got["events"])
    assert k[:3] == ["RUN_STARTED", "MESSAGES_SNAPSHOT", "TEXT_MESSAGE_START"]
    assert k[-4:] == ["TEXT_MESSAGE_CONTENT", "TEXT_MESSAGE_END", "MESSAGES_SNAPSHOT", "RUN_FINISHED"]
    assert got["events"][-1]["outcome"] == {"type": "success"}
    history = await stored(client, s["id"])
    # After the snapshot the agent's thread is sessiond's, ids included.
    assert [(m["id"], m["role"], m["content"]) for m in got["messages"]] == [
        (m["id"], m["role"], m["content"]) for m in history]
    assert deltas(got["events"]) == history[-1]["content"] != ""
    # The next run sends only the new message: the prefix is not stored twice.
    again = await run_node("ag_ui_run.mjs", "run", base_url(client), s["id"], HEADERS,
                           {"text": "and more", "history": got["messages"]})
    assert again["errors"] == []
    assert [m["role"] for m in await stored(client, s["id"])] == ["user", "assistant", "user", "assistant"]


async def test_every_frame_carries_an_id_and_runs_end_cleanly(client: TestClient[Any, Any]) -> None:
    s = await new_session(client)
    body = {"threadId": s["id"], "runId": "r1", "messages": [{"id": "u1", "role": "user", "content": "hi"}],
            "tools": [], "context": [], "state": {}, "forwardedProps": {}}
    resp = await client.post("/v1/ag-ui", json=body)
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    frames = await wire(resp)
    ids = [i for i, _ in frames]
    assert all(ids) and len(set(ids)) == len(ids)
    started = frames[0][1]
    assert started == {"type": "RUN_STARTED", "threadId": s["id"], "runId": started["runId"]}
    assert frames[-1][1]["runId"] == started["runId"]
    assert frames[-1][1]["usage"][0]["outputTokens"] == 20


async def test_cut_mid_run_and_resume_by_last_event_id(make_client: ClientFactory) -> None:
    client = await make_client(simulated={"tokens_per_second": 100, "reply_tokens": 60})
    s = await new_session(client)
    # After RUN_STARTED (before its snapshot); between TEXT_MESSAGE_START and its first content; mid-answer.
    for k in (1, 3, 9):
        got = await run_node("ag_ui_run.mjs", "cut", base_url(client), s["id"], HEADERS,
                             {"text": f"go {k}", "k": k})
        # HttpAgent verifies the sequence: a doubled start or a content without one would fail the run.
        assert got["errors"] == [], got["errors"]
        assert got["seen"][k] == "cut" and len(got["seen"]) > k + 1, "the run went on past the cut"
        events = got["events"]
        assert kinds(events).count("RUN_STARTED") == 1 and kinds(events).count("TEXT_MESSAGE_START") == 1
        history = await stored(client, s["id"])
        assert deltas(events) == history[-1]["content"]
        assert len(deltas(events).split()) == 60
        assert got["messages"][-1]["content"] == history[-1]["content"]


async def test_resume_route_is_204_without_a_run_and_exact_with_sub_ids(make_client: ClientFactory) -> None:
    client = await make_client(simulated={"tokens_per_second": 100, "reply_tokens": 40})
    s = await new_session(client)
    assert (await client.get(f"/v1/ag-ui/{s['id']}/stream")).status == 204
    body = {"threadId": s["id"], "runId": "r", "messages": [{"id": "u", "role": "user", "content": "go"}]}
    resp = await client.post("/v1/ag-ui", json=body)
    head: list[tuple[str, dict[str, Any]]] = []
    frame_id = ""
    async for raw in resp.content:  # read RUN_STARTED and TEXT_MESSAGE_START only
        line = raw.decode().strip()
        if line.startswith("id: "):
            frame_id = line[4:]
        elif line.startswith("data: "):
            head.append((frame_id, msgspec.json.decode(line[6:])))
            if len(head) == 3:
                break
    resp.close()
    assert [e["type"] for _, e in head] == ["RUN_STARTED", "MESSAGES_SNAPSHOT", "TEXT_MESSAGE_START"]
    assert "." in head[0][0] and "." in head[2][0], "a frame before the last of its session event has an id N.k"
    # Cut between TEXT_MESSAGE_START and the first content of the same session event: exact.
    after_start = await client.get(f"/v1/ag-ui/{s['id']}/stream", headers={"Last-Event-ID": head[2][0]})
    first = await wire_first(after_start)
    after_start.close()
    assert first["type"] == "TEXT_MESSAGE_CONTENT"
    # Cut between RUN_STARTED and its snapshot: the rest comes from there, nothing twice.
    rest = await wire(await client.get(f"/v1/ag-ui/{s['id']}/stream", headers={"Last-Event-ID": head[0][0]}))
    whole = [head[0][1]] + [e for _, e in rest]
    assert kinds(whole)[:3] == ["RUN_STARTED", "MESSAGES_SNAPSHOT", "TEXT_MESSAGE_START"]
    assert kinds(whole).count("TEXT_MESSAGE_START") == 1 and kinds(whole).count("RUN_STARTED") == 1
    assert deltas(whole) == (await stored(client, s["id"]))[-1]["content"]
    assert len(deltas(whole).split()) == 40


async def wire_first(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    async for raw in resp.content:
        line = raw.decode().strip()
        if line.startswith("data: "):
            return msgspec.json.decode(line[6:])  # type: ignore[no-any-return]
    raise AssertionError("no frame")


async def test_tool_calls_and_results_stream_as_ag_ui_tool_events(client: TestClient[Any, Any]) -> None:
    s = await new_session(client, tools=["calculator"])
    got = await run_node("ag_ui_run.mjs", "run", base_url(client), s["id"], HEADERS,
                         {"text": '/tool calculator {"expression": "6 * 7"}'})
    assert got["errors"] == []
    k = kinds(got["events"])
    assert k[2:6] == ["TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_END", "TOOL_CALL_RESULT"]
    result = got["events"][5]
    assert "42" in result["content"]
    assistant = next(m for m in got["messages"] if m["role"] == "assistant")
    assert assistant["toolCalls"][0]["function"]["name"] == "calculator"
    tool = next(m for m in got["messages"] if m["role"] == "tool")
    assert tool["toolCallId"] == assistant["toolCalls"][0]["id"] and "42" in tool["content"]
    assert "42" in assistant["content"]


async def test_a_session_token_runs_only_its_own_thread(client: TestClient[Any, Any]) -> None:
    mine = await new_session(client, with_token=True)
    other = await new_session(client)
    bearer = {"Authorization": f"Bearer {mine['access_token']}"}
    got = await run_node("ag_ui_run.mjs", "run", base_url(client), mine["id"], bearer, {"text": "mine"})
    assert got["errors"] == []
    refused = await run_node("ag_ui_run.mjs", "run", base_url(client), other["id"], bearer, {"text": "x"})
    assert refused["errors"] and "404" in refused["errors"][0]
    async with aiohttp.ClientSession(headers=bearer) as http:
        resp = await http.get(f"{base_url(client)}/v1/ag-ui/{other['id']}/stream")
        assert resp.status == 404
    assert await stored(client, other["id"]) == []


async def test_bad_inputs_get_problem_json(client: TestClient[Any, Any]) -> None:
    s = await new_session(client)
    ok = {"threadId": s["id"], "runId": "r"}
    cases = [
        ({"runId": "r", "messages": []}, "threadId"),
        ({**ok, "messages": []}, "user message"),
        ({**ok, "messages": [{"id": "a", "role": "assistant", "content": "x"}]}, "user message"),
        ({**ok, "messages": [{"id": "u", "role": "user", "content": "  "}]}, "no text"),
    ]
    for body, word in cases:
        resp = await client.post("/v1/ag-ui", json=body)
        assert resp.status == 422, body
        assert resp.headers["Content-Type"].startswith("application/problem+json")
        assert word in (await resp.json())["detail"], body
    resp = await client.post("/v1/ag-ui", json={**ok, "threadId": "ses_missing",
                                                "messages": [{"id": "u", "role": "user", "content": "x"}]})
    assert resp.status == 404
