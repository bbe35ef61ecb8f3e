"""Tool calls that wait: for a person's approval, or for the frontend's result; durably."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient

from actors.registry import Registry
from actors.session.actor import SessionActor
from server.appkeys import REGISTRY
from tests.conftest import HEADERS, ClientFactory, new_session
from tests.sse import SseEvent, read_until

APPROVE_CALC = {"approval": {"calculator": "always"}}
ENDS = {"task.completed", "task.failed", "task.cancelled", "task.interrupted"}


def _of(events: list[SseEvent], kind: str) -> list[dict[str, Any]]:
    return [e.data for e in events if e.event == kind]


async def _ask_for_approval(client: TestClient[Any, Any], sid: str, expression: str = "6 * 7") -> tuple[Any, str]:
    """Send a message whose model calls the calculator; the open stream and the waiting call id."""
    resp = await client.post(
        f"/v1/sessions/{sid}/messages",
        json={"content": f'/tool calculator {{"expression": "{expression}"}}', "stream": True},
    )
    assert resp.status == 200, await resp.text()
    events = await read_until(resp, "tool.approval_requested")
    call = _of(events, "tool.call")[0]
    asked = _of(events, "tool.approval_requested")[0]
    assert asked["call_id"] == call["call_id"] and asked["name"] == "calculator"
    assert asked["arguments"] == {"expression": expression}
    assert not _of(events, "tool.result")  # not run before it is approved
    return resp, call["call_id"]


async def _answer(client: TestClient[Any, Any], sid: str) -> dict[str, Any]:
    body = await (await client.get(f"/v1/sessions/{sid}/messages")).json()
    return body["items"][-1]  # type: ignore[no-any-return]


async def test_an_approved_call_runs_and_the_task_completes(make_client: ClientFactory) -> None:
    client = await make_client(tools=APPROVE_CALC)
    s = await new_session(client, tools=["calculator"])
    resp, call_id = await _ask_for_approval(client, s["id"])

    ok = await client.post(f"/v1/sessions/{s['id']}/tool-calls/{call_id}/approve")
    assert ok.status == 200, await ok.text()
    assert (await ok.json())["status"] == "approved"
    events = await read_until(resp, ENDS)
    assert events[-1].event == "task.completed"
    assert _of(events, "tool.approval_decided")[0]["approved"] is True
    assert _of(events, "tool.result")[0]["output"] == "42"
    answer = await _answer(client, s["id"])
    assert answer["content"] == "calculator: 42" and answer["status"] == "completed"
    # Decided once: a second decision is refused.
    again = await client.post(f"/v1/sessions/{s['id']}/tool-calls/{call_id}/approve")
    assert again.status == 404


async def test_a_denied_call_gives_the_model_the_reason(make_client: ClientFactory) -> None:
    client = await make_client(tools=APPROVE_CALC)
    s = await new_session(client, tools=["calculator"])
    resp, call_id = await _ask_for_approval(client, s["id"])
    no = await client.post(f"/v1/sessions/{s['id']}/tool-calls/{call_id}/deny", json={"reason": "not today"})
    assert no.status == 200 and (await no.json())["status"] == "denied"
    events = await read_until(resp, ENDS)
    assert events[-1].event == "task.completed"
    result = _of(events, "tool.result")[0]
    assert result["is_error"] is True and "not today" in result["output"]
    assert "denied" in (await _answer(client, s["id"]))["content"]
    assert "not today" in (await _answer(client, s["id"]))["content"]


async def test_a_waiting_task_counts_as_running_and_can_be_cancelled(make_client: ClientFactory) -> None:
    client = await make_client(tools=APPROVE_CALC)
    s = await new_session(client, tools=["calculator"])
    resp, call_id = await _ask_for_approval(client, s["id"])
    busy = await client.post(f"/v1/sessions/{s['id']}/messages", json={"content": "hello?"})
    assert busy.status == 409
    queued = await client.post(f"/v1/sessions/{s['id']}/messages?queue=true", json={"content": "later", "stream": True})
    assert queued.status == 200

    cancel = await client.post(f"/v1/sessions/{s['id']}/cancel")
    assert cancel.status == 200
    events = await read_until(resp, ENDS)
    assert events[-1].event == "task.cancelled"
    assert (await client.post(f"/v1/sessions/{s['id']}/tool-calls/{call_id}/approve")).status == 404
    # The session is free again.
    after = await client.post(f"/v1/sessions/{s['id']}/messages", json={"content": "hello again"})
    assert after.status == 200 and (await after.json())["status"] == "completed"
    queued.close()


async def test_a_call_that_waits_too_long_fails_the_task_with_a_reason(make_client: ClientFactory) -> None:
    client = await make_client(tools={**APPROVE_CALC, "approval_timeout_seconds": 0.3})
    s = await new_session(client, tools=["calculator"])
    resp, call_id = await _ask_for_approval(client, s["id"])
    events = await asyncio.wait_for(read_until(resp, ENDS), 10)
    failed = events[-1]
    assert failed.event == "task.failed"
    assert "calculator" in failed.data["error"] and "waited for approval longer than 0.3s" in failed.data["error"]
    assert (await client.post(f"/v1/sessions/{s['id']}/tool-calls/{call_id}/approve")).status == 404


async def test_only_the_sessions_own_user_or_token_may_decide(make_client: ClientFactory) -> None:
    client = await make_client(tools=APPROVE_CALC)
    s = await new_session(client, tools=["calculator"], end_user_id="alice")
    other = await new_session(client, tools=["calculator"], end_user_id="bob")
    resp, call_id = await _ask_for_approval(client, s["id"])
    path = f"/v1/sessions/{s['id']}/tool-calls/{call_id}/approve"
    assert (await client.post(path, headers={"X-End-User-ID": "bob"})).status == 404
    other_token = (await (await client.post(f"/v1/sessions/{other['id']}/tokens")).json())["access_token"]
    async with aiohttp.ClientSession() as plain:
        url = str(client.make_url(path))
        async with plain.post(url, headers={"Authorization": f"Bearer {other_token}"}) as r:
            assert r.status == 404, await r.text()
        own = (await (await client.post(f"/v1/sessions/{s['id']}/tokens")).json())["access_token"]
        # A session token cannot switch on tools for its session.
        tools_url = str(client.make_url(f"/v1/sessions/{s['id']}/tools"))
        own_h = {"Authorization": f"Bearer {own}"}
        async with plain.put(tools_url, json={"tools": ["current_time"]}, headers=own_h) as r:
            assert r.status == 403
        async with plain.post(url, headers={"Authorization": f"Bearer {own}"}) as r:
            assert r.status == 200, await r.text()
    events = await read_until(resp, ENDS)
    assert events[-1].event == "task.completed" and _of(events, "tool.result")[0]["output"] == "42"


async def test_a_client_tool_waits_for_the_frontends_result(make_client: ClientFactory) -> None:
    client = await make_client()
    s = await new_session(client)
    where = {"name": "where_am_i", "description": "The user's city", "parameters": {"type": "object"}}
    resp = await client.post(
        f"/v1/sessions/{s['id']}/messages",
        json={"content": "/tool where_am_i {}", "stream": True, "client_tools": [where]},
    )
    assert resp.status == 200, await resp.text()
    events = await read_until(resp, "tool.call")
    call = events[-1].data
    assert call["client"] is True and call["name"] == "where_am_i"
    # Approving is for calls that wait for approval; this one waits for its result.
    wrong = await client.post(f"/v1/sessions/{s['id']}/tool-calls/{call['call_id']}/approve")
    assert wrong.status == 409
    ok = await client.post(
        f"/v1/sessions/{s['id']}/tool-calls/{call['call_id']}/result", json={"output": "Lyon"}
    )
    assert ok.status == 200 and (await ok.json())["status"] == "submitted"
    events = await read_until(resp, ENDS)
    assert events[-1].event == "task.completed"
    assert (await _answer(client, s["id"]))["content"] == "where_am_i: Lyon"


async def test_session_client_tools_are_offered_to_every_task(make_client: ClientFactory) -> None:
    client = await make_client()
    s = await new_session(client)
    patch = await client.patch(
        f"/v1/sessions/{s['id']}", json={"client_tools": [{"name": "pick_color"}]}
    )
    assert patch.status == 200, await patch.text()
    bad = await client.patch(
        f"/v1/sessions/{s['id']}", json={"client_tools": [{"name": "has space"}]}
    )
    assert bad.status == 422
    resp = await client.post(f"/v1/sessions/{s['id']}/messages", json={"content": "/tool pick_color", "stream": True})
    call = (await read_until(resp, "tool.call"))[-1].data
    assert call["client"] is True
    r = await client.post(
        f"/v1/sessions/{s['id']}/tool-calls/{call['call_id']}/result", json={"output": "no", "is_error": True}
    )
    assert r.status == 200
    events = await read_until(resp, ENDS)
    assert events[-1].event == "task.completed"
    assert _of(events, "tool.result")[0]["is_error"] is True


async def test_a_waiting_session_passivates_and_goes_on_after(make_client: ClientFactory) -> None:
    client = await make_client(tools=APPROVE_CALC, sessions={"idle_seconds": 0.2})
    registry: Registry = client.app[REGISTRY]
    s = await new_session(client, tools=["calculator"])
    resp, call_id = await _ask_for_approval(client, s["id"])
    actor = await registry.get(s["id"])
    assert isinstance(actor, SessionActor)
    resp.close()  # no subscriber left: the waiting session is idle
    await asyncio.wait_for(actor.wait_stopped(), 10)
    assert actor.stop_reason == "passivated"

    stream = await client.get(f"/v1/sessions/{s['id']}/stream")
    replay = await read_until(stream, "tool.approval_requested")
    assert _of(replay, "tool.approval_requested")[0]["call_id"] == call_id
    assert (await client.post(f"/v1/sessions/{s['id']}/tool-calls/{call_id}/approve")).status == 200
    events = await read_until(stream, ENDS)
    assert events[-1].event == "task.completed"
    assert (await _answer(client, s["id"]))["content"] == "calculator: 42"
    stream.close()


async def test_sigkill_while_a_call_waits_then_approve_after_restart(server_process: Any, tmp_path: Path) -> None:
    srv = server_process()
    url = srv.start()
    async with aiohttp.ClientSession(headers=HEADERS) as http:
        agent = await (
            await http.post(f"{url}/v1/agents", json={"name": "careful", "tools": ["calculator"], "approval": "always"})
        ).json()
        assert agent["approval"] == "always"
        s = await (await http.post(f"{url}/v1/sessions", json={"agent_id": agent["id"]})).json()
        sid = s["id"]
        resp = await http.post(
            f"{url}/v1/sessions/{sid}/messages",
            json={"content": '/tool calculator {"expression": "2 ** 10"}', "stream": True},
        )
        events = await read_until(resp, "tool.approval_requested")
        call_id = _of(events, "tool.approval_requested")[0]["call_id"]
        resp.close()
    srv.kill()

    again = server_process()
    url = again.start()
    async with aiohttp.ClientSession(headers=HEADERS) as http:
        # Still running: a new message is refused, and the stream shows the pending call again.
        busy = await http.post(f"{url}/v1/sessions/{sid}/messages", json={"content": "hi"})
        assert busy.status == 409
        stream = await http.get(f"{url}/v1/sessions/{sid}/stream")
        replay = await read_until(stream, "tool.approval_requested")
        assert _of(replay, "tool.approval_requested")[0]["call_id"] == call_id
        assert not _of(replay, "task.interrupted")
        ok = await http.post(f"{url}/v1/sessions/{sid}/tool-calls/{call_id}/approve")
        assert ok.status == 200, await ok.text()
        events = await read_until(stream, ENDS)
        assert events[-1].event == "task.completed"
        assert _of(events, "tool.result")[0]["output"] == "1024"
        messages = await (await http.get(f"{url}/v1/sessions/{sid}/messages")).json()
        answer = messages["items"][-1]
        assert answer["content"] == "calculator: 1024" and answer["status"] == "completed"
        stream.close()


async def test_a_session_waiting_on_a_call_is_not_evicted_past_max_live(make_client: ClientFactory) -> None:
    """Past [sessions] max_live, only quiet sessions go early: one whose turn waits on a call
    stays (a plain send may be waiting for its end), however long ago it was used."""
    client = await make_client(tools=APPROVE_CALC, sessions={"max_live": 1})  # evicts past 2, down to 1
    registry: Registry = client.app[REGISTRY]
    s = await new_session(client, tools=["calculator"])
    resp, call_id = await _ask_for_approval(client, s["id"])
    resp.close()  # no stream left: only the parked turn
    waiting = await registry.get(s["id"])
    assert isinstance(waiting, SessionActor)
    others = [(await new_session(client))["id"] for _ in range(3)]
    stopped = []
    for sid in others:
        assert (await client.get(f"/v1/sessions/{sid}")).status == 200
        actor = await registry.get(sid)
        assert isinstance(actor, SessionActor)
        stopped.append(actor)
    # The first two quiet ones were evicted in turn; the waiting one never.
    for actor in stopped[:2]:
        await asyncio.wait_for(actor.wait_stopped(), 10)
        assert actor.stop_reason == "passivated"
    assert waiting.is_alive and s["id"] in registry
    assert (await client.post(f"/v1/sessions/{s['id']}/tool-calls/{call_id}/approve")).status == 200


async def test_a_merge_copies_a_waiting_answer_as_interrupted_with_nothing_to_decide(
    make_client: ClientFactory,
) -> None:
    client = await make_client(tools=APPROVE_CALC)
    s = await new_session(client, tools=["calculator"])
    resp, _call_id = await _ask_for_approval(client, s["id"])
    other = await new_session(client)
    merged = await client.post("/v1/sessions/merge", json={"session_ids": [s["id"], other["id"]]})
    assert merged.status == 201, await merged.text()
    exported = await (await client.get(f"/v1/sessions/{(await merged.json())['id']}/export")).json()
    copy = exported["messages"][-1]
    assert copy["status"] == "interrupted"
    assert [(c["name"], c["wait"], c["expires_at"]) for c in copy["tool_calls"]] == [("calculator", None, None)]
    resp.close()
