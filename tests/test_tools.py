"""Tools: the server's list, a session's active set, the built-ins, errors and timeouts."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from actors.agent.tools import Tool, ToolContext, ToolError, calculate
from server.appkeys import TOOLBOX
from tests.conftest import ClientFactory, new_session
from tests.fake_models import converse


def _result(events: list[Any]) -> dict[str, Any]:
    return next(e.data for e in events if e.event == "tool.result")  # type: ignore[no-any-return]


async def test_the_server_lists_its_tools(client: TestClient[Any, Any]) -> None:
    body = await (await client.get("/v1/tools")).json()
    tools = {t["name"]: t for t in body["items"]}
    assert set(tools) == {"calculator", "current_time", "search_documents"}
    assert tools["calculator"]["parameters"]["required"] == ["expression"]
    assert tools["search_documents"]["description"]


async def test_session_tools_are_read_set_and_checked(client: TestClient[Any, Any]) -> None:
    s = await new_session(client)
    assert (await (await client.get(f"/v1/sessions/{s['id']}/tools")).json()) == {"tools": []}
    resp = await client.put(f"/v1/sessions/{s['id']}/tools", json={"tools": ["calculator", "current_time"]})
    assert resp.status == 200 and (await resp.json())["tools"] == ["calculator", "current_time"]
    assert (await (await client.get(f"/v1/sessions/{s['id']}")).json())["tools"] == ["calculator", "current_time"]

    resp = await client.put(f"/v1/sessions/{s['id']}/tools", json={"tools": ["calculator", "rm_rf"]})
    assert resp.status == 422 and "rm_rf" in (await resp.json())["detail"]
    assert (await (await client.get(f"/v1/sessions/{s['id']}/tools")).json())["tools"] == ["calculator", "current_time"]

    resp = await client.patch(f"/v1/sessions/{s['id']}", json={"tools": ["nope"]})
    assert resp.status == 422
    resp = await client.post("/v1/sessions", json={"tools": ["nope"]})
    assert resp.status == 422
    resp = await client.put("/v1/sessions/ses_missing/tools", json={"tools": []})
    assert resp.status == 404


def test_calculator_does_arithmetic() -> None:
    assert calculate("2 + 3 * 4") == 14
    assert calculate("(2 + 3) * 4") == 20
    assert calculate("7 / 2") == 3.5
    assert calculate("7 // 2") == 3 and calculate("7 % 4") == 3
    assert calculate("-2 ** 10") == -1024
    assert calculate("1.5e3 + .5") == 1500.5


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os').system('true')",
        "open('/etc/passwd')",
        "x + 1",
        "(1).__class__",
        "[1, 2]",
        "1 if True else 2",
        "True + 1",
        "'a' * 3",
        "9 ** 9 ** 9",
        "2 ** 100000",
        "1 / 0",
        "lambda: 1",
        "1 < 2",
        "1; 2",
        "",
    ],
)
def test_calculator_refuses_anything_but_arithmetic(expression: str) -> None:
    with pytest.raises(ToolError):
        calculate(expression)


async def test_a_tool_that_raises_gives_the_model_an_error_and_the_task_goes_on(
    client: TestClient[Any, Any],
) -> None:
    s = await new_session(client, tools=["calculator"])
    events = await converse(client, s["id"], '/tool calculator {"expression": "1 / 0"}')
    result = _result(events)
    assert result["is_error"] is True and "division by zero" in result["output"]
    assert events[-1].event == "task.completed"
    reply = next(e.data for e in events if e.event == "message.completed")["message"]["content"]
    assert "division by zero" in reply


async def test_bad_arguments_and_inactive_tools_are_error_results(client: TestClient[Any, Any]) -> None:
    s = await new_session(client, tools=["calculator"])
    events = await converse(client, s["id"], "/tool calculator {not json")
    assert _result(events)["is_error"] is True and "not valid JSON" in _result(events)["output"]
    assert next(e.data for e in events if e.event == "tool.call")["arguments"] == {"raw": "{not json"}
    events = await converse(client, s["id"], '/tool calculator {"expr": "1"}')
    assert _result(events)["is_error"] is True and "expression" in _result(events)["output"]
    # The simulated model does not call a tool the session has not switched on.
    events = await converse(client, s["id"], "/tool current_time")
    assert not [e for e in events if e.event.startswith("tool.")]
    assert events[-1].event == "task.completed"


async def test_a_tool_past_its_timeout_is_an_error_result(make_client: ClientFactory) -> None:
    client = await make_client(tools={"timeout_seconds": 0.2})
    never = asyncio.Event()

    async def wait_forever(args: dict[str, Any], ctx: ToolContext) -> str:
        await never.wait()
        return "unreachable"

    client.app[TOOLBOX].register(Tool("wait_forever", "Never answers.", {"type": "object"}, wait_forever))
    s = await new_session(client, tools=["wait_forever", "calculator"])
    events = await converse(client, s["id"], '/tool wait_forever\n/tool calculator {"expression": "1+1"}')
    results = [e.data for e in events if e.event == "tool.result"]
    assert results[0]["is_error"] is True and "did not answer within 0.2s" in results[0]["output"]
    assert results[1] == {**results[1], "output": "2", "is_error": False}, "the next call still runs"
    assert events[-1].event == "task.completed"


async def test_current_time(client: TestClient[Any, Any]) -> None:
    s = await new_session(client, tools=["current_time"])
    before = datetime.now(UTC).replace(microsecond=0)
    events = await converse(client, s["id"], '/tool current_time {"timezone": "Asia/Tokyo"}')
    output = _result(events)["output"]
    stamp = datetime.fromisoformat(output.split(" ")[0])
    assert stamp.utcoffset() == timedelta(hours=9)
    assert before <= stamp <= datetime.now(UTC) + timedelta(seconds=1)
    events = await converse(client, s["id"], '/tool current_time {"timezone": "Mars/Olympus"}')
    assert _result(events)["is_error"] is True and "unknown time zone" in _result(events)["output"]
