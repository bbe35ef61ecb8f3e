"""MCP servers (real ones, started here, over stdio and streamable HTTP) and HTTP tools as tools."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.conftest import ROOT, ClientFactory, new_session
from tests.fake_models import FakeOllama, FakeOpenAI, closed_port_url, converse

MCP_SERVER = str(ROOT / "tests" / "fixtures" / "mcp_server.py")
STDIO = {
    "command": sys.executable, "args": [MCP_SERVER, "stdio"], "env": {"MCP_TEST_SECRET": "SESSIOND_TEST_MCP_SECRET"},
}
ADD = '/tool calc.add {"a": %d, "b": %d}'
PLAIN = {"command": sys.executable, "args": [MCP_SERVER, "stdio"]}
TIMEOUT = 4.0  # [tools] timeout_seconds: how long a hung call waits


def _results(events: list[Any]) -> list[dict[str, Any]]:
    return [e.data for e in events if e.event == "tool.result"]


def _answer(events: list[Any]) -> str:
    return next(e.data for e in events if e.event == "message.completed")["message"]["content"]  # type: ignore[no-any-return]


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> str:
    value = "s3cret-for-the-mcp-server"
    monkeypatch.setenv("SESSIOND_TEST_MCP_SECRET", value)
    return value


async def _mcp_client(make_client: ClientFactory, server: dict[str, Any], **tools: Any) -> TestClient[Any, Any]:
    return await make_client(tools={"timeout_seconds": TIMEOUT, "mcp": {"calc": server}, **tools})


async def test_stdio_mcp_tools_are_listed_offered_and_called(make_client: ClientFactory, secret: str) -> None:
    client = await _mcp_client(make_client, STDIO)
    listed = await (await client.get("/v1/tools")).json()
    tools = {t["name"]: t for t in listed["items"]}
    assert {"calc.add", "calc.whoami", "calc.boom", "calc.hang", "calc.crash"} <= set(tools)
    assert tools["calc.add"]["parameters"]["required"] == ["a", "b"]
    assert tools["calc.add"]["description"] == "Add two integers."
    assert secret not in str(listed)

    s = await new_session(client)
    put = await client.put(f"/v1/sessions/{s['id']}/tools", json={"tools": ["calc.add", "calc.whoami"]})
    assert put.status == 200
    events = await converse(client, s["id"], '/tool calc.add {"a": 2, "b": 40}\n/tool calc.whoami')
    assert [r["output"] for r in _results(events)] == ["42", secret]  # the secret reached the server, from env
    assert _answer(events) == f"calc.add: 42\ncalc.whoami: {secret}"
    # A tool not switched on in the session is not offered.
    events = await converse(client, s["id"], "/tool calc.boom")
    assert not _results(events) and "not available" in _answer(events)
    # The secret is in no answer of the API.
    for path in (f"/v1/sessions/{s['id']}", "/v1/agents", f"/v1/sessions/{s['id']}/tools"):
        assert secret not in await (await client.get(path)).text()


async def test_a_failing_or_hanging_mcp_server_gives_error_results(make_client: ClientFactory) -> None:
    client = await _mcp_client(make_client, PLAIN)
    s = await new_session(client, tools=["calc.add", "calc.boom", "calc.hang"])

    events = await converse(client, s["id"], "/tool calc.boom\n" + ADD % (1, 1))
    boom, ok = _results(events)
    assert boom["is_error"] is True and "boom" in boom["output"]
    assert ok == {**ok, "is_error": False, "output": "2"}

    events = await asyncio.wait_for(converse(client, s["id"], "/tool calc.hang\n" + ADD % (2, 2)), 30)
    hang, ok = _results(events)
    assert hang["is_error"] is True and f"did not answer within {TIMEOUT:g}s" in hang["output"]
    assert ok["output"] == "4", "the connection serves the next call"
    assert events[-1].event == "task.completed"


async def test_a_crashed_mcp_server_is_started_again(make_client: ClientFactory) -> None:
    # Starting the server again (a Python process and its imports) must fit in the call's time.
    client = await make_client(tools={"timeout_seconds": 20.0, "mcp": {"calc": PLAIN}})
    s = await new_session(client, tools=["calc.add", "calc.crash"])
    events = await asyncio.wait_for(converse(client, s["id"], "/tool calc.crash\n" + ADD % (3, 3)), 60)
    crash, ok = _results(events)
    assert crash["is_error"] is True and "calc" in crash["output"]
    assert ok == {**ok, "is_error": False, "output": "6"}, "the server was started again"
    assert events[-1].event == "task.completed"


async def test_an_mcp_tool_can_need_approval(make_client: ClientFactory) -> None:
    client = await _mcp_client(
        make_client, {"command": sys.executable, "args": [MCP_SERVER, "stdio"]}, approval={"calc.add": "always"}
    )
    s = await new_session(client, tools=["calc.add"])
    resp = await client.post(
        f"/v1/sessions/{s['id']}/messages", json={"content": '/tool calc.add {"a": 5, "b": 5}', "stream": True}
    )
    from tests.sse import read_until

    asked = (await read_until(resp, "tool.approval_requested"))[-1].data
    assert asked["name"] == "calc.add"
    assert (await client.post(f"/v1/sessions/{s['id']}/tool-calls/{asked['call_id']}/approve")).status == 200
    events = await read_until(resp, "task.completed")
    assert _results(events)[0]["output"] == "10"
    resp.close()


@pytest.fixture
async def http_mcp_server() -> AsyncIterator[str]:
    port = urlsplit(closed_port_url()).port
    proc = await asyncio.create_subprocess_exec(
        sys.executable, MCP_SERVER, "http", str(port), stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(30):
            while b"Uvicorn running on" not in await proc.stderr.readline():
                pass

        async def drain() -> None:
            assert proc.stderr is not None
            while await proc.stderr.readline():
                pass

        drainer = asyncio.create_task(drain())
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.kill()
        await proc.wait()
    drainer.cancel()


async def test_streamable_http_mcp_tools(make_client: ClientFactory, http_mcp_server: str, secret: str) -> None:
    server = {"url": http_mcp_server, "headers": {"X-Token": "SESSIOND_TEST_MCP_SECRET"}}
    client = await _mcp_client(make_client, server)
    names = {t["name"] for t in (await (await client.get("/v1/tools")).json())["items"]}
    assert {"calc.add", "calc.boom", "calc.hang"} <= names
    s = await new_session(client, tools=["calc.add", "calc.boom", "calc.hang"])
    events = await converse(client, s["id"], '/tool calc.add {"a": 20, "b": 22}\n/tool calc.boom')
    ok, boom = _results(events)
    assert ok["output"] == "42" and boom["is_error"] is True
    events = await asyncio.wait_for(converse(client, s["id"], "/tool calc.hang"), 30)
    assert f"did not answer within {TIMEOUT:g}s" in _results(events)[0]["output"]
    assert events[-1].event == "task.completed"


async def test_an_unreachable_mcp_server_does_not_stop_the_server(make_client: ClientFactory) -> None:
    client = await _mcp_client(make_client, {"url": closed_port_url() + "/mcp"})
    names = {t["name"] for t in (await (await client.get("/v1/tools")).json())["items"]}
    assert "calculator" in names and not any(n.startswith("calc.") for n in names)
    s = await new_session(client)
    assert (await client.put(f"/v1/sessions/{s['id']}/tools", json={"tools": ["calc.add"]})).status == 422


# -- HTTP tools ---------------------------------------------------------------------------


@pytest.fixture
async def tool_server() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    async def weather(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append({"body": body, "auth": request.headers.get("Authorization")})
        return web.json_response({"city": body.get("city"), "sky": "clear"})

    async def huge(request: web.Request) -> web.Response:
        return web.Response(text="x" * 100_000)

    app = web.Application()
    app.router.add_post("/weather", weather)
    app.router.add_post("/huge", huge)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"127.0.0.1:{port}", seen
    await runner.cleanup()


async def test_http_tools_call_allowed_hosts_only(
    make_client: ClientFactory, tool_server: tuple[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    host, seen = tool_server
    monkeypatch.setenv("SESSIOND_TEST_WEATHER_AUTH", "Bearer w-token")
    other_port = urlsplit(closed_port_url()).port
    client = await make_client(tools={
        "allow_hosts": [host],
        "http": {
            "weather": {
                "url": f"http://{host}/weather", "description": "The weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
                "headers": {"Authorization": "SESSIOND_TEST_WEATHER_AUTH"},
            },
            "huge": {"url": f"http://{host}/huge"},
            "internal": {"url": f"http://127.0.0.1:{other_port}/admin"},
            "metadata": {"url": "http://169.254.169.254/latest/meta-data"},
        },
    })
    tools = {t["name"]: t for t in (await (await client.get("/v1/tools")).json())["items"]}
    assert tools["weather"]["parameters"]["required"] == ["city"]
    assert "w-token" not in str(tools)
    s = await new_session(client, tools=["weather", "huge", "internal", "metadata"])

    events = await converse(client, s["id"], '/tool weather {"city": "Lyon"}')
    assert _results(events)[0] == {**_results(events)[0], "is_error": False}
    assert '"sky": "clear"' in _results(events)[0]["output"]
    assert seen == [{"body": {"city": "Lyon"}, "auth": "Bearer w-token"}]

    events = await converse(client, s["id"], "/tool internal\n/tool metadata")
    internal, metadata = _results(events)
    for refused in (internal, metadata):
        assert refused["is_error"] is True and "not allowed" in refused["output"]
    assert "not allowed" in _answer(events), "the model is told"
    assert len(seen) == 1, "nothing was sent"

    events = await converse(client, s["id"], "/tool huge")
    output = _results(events)[0]["output"]
    assert len(output) < 20_000 and output.endswith("[cut: the output was longer]")


async def test_a_missing_secret_variable_stops_the_start(make_client: ClientFactory) -> None:
    from server.config import ConfigError

    with pytest.raises(ConfigError, match="SESSIOND_TEST_NOT_SET"):
        await make_client(tools={"http": {"t": {"url": "http://x/", "headers": {"A": "SESSIOND_TEST_NOT_SET"}}}})


async def test_a_session_token_cannot_add_tools(make_client: ClientFactory) -> None:
    client = await make_client()
    s = await new_session(client)
    token = (await (await client.post(f"/v1/sessions/{s['id']}/tokens")).json())["access_token"]
    async with aiohttp.ClientSession() as plain:
        bearer = {"Authorization": f"Bearer {token}"}
        for method, path, body in (
            ("PUT", f"/v1/sessions/{s['id']}/tools", {"tools": ["calculator"]}),
            ("PATCH", f"/v1/sessions/{s['id']}", {"tools": ["calculator"]}),
            ("POST", "/v1/agents", {"name": "mine", "tools": ["calculator"]}),
        ):
            async with plain.request(method, str(client.make_url(path)), json=body, headers=bearer) as r:
                assert r.status == 403, (method, path, r.status)
    assert (await (await client.get(f"/v1/sessions/{s['id']}/tools")).json())["tools"] == []


@pytest.mark.parametrize("kind", ["openai", "ollama"])
async def test_a_real_model_protocol_calls_an_mcp_tool_by_its_wire_name(make_client: ClientFactory, kind: str) -> None:
    model = FakeOpenAI("tooly") if kind == "openai" else FakeOllama("tooly")
    await model.start()
    try:
        # Function names are letters, digits, _ and -: calc.add is offered as calc__add.
        model.tool_call = ("calc__add", '{"a": 19, "b": 23}')
        provider = {"kind": kind, "base_url": model.url + ("/v1" if kind == "openai" else ""), "model": "m"}
        client = await make_client(
            tools={"timeout_seconds": TIMEOUT, "mcp": {"calc": PLAIN}},
            providers={"main": provider}, agents={"default": {"model": ["main"]}},
        )
        s = await new_session(client, tools=["calc.add"])
        events = await converse(client, s["id"], "what is 19 + 23?")
        call = next(e.data for e in events if e.event == "tool.call")
        assert call["name"] == "calc.add" and call["arguments"] == {"a": 19, "b": 23}
        assert _results(events)[0]["output"] == "42"
        assert _answer(events) == "tooly read the tool result: 42"
        offered = model.requests[0]["tools"][0]["function"]
        assert offered["name"] == "calc__add" and offered["parameters"]["required"] == ["a", "b"]
    finally:
        await model.stop()
