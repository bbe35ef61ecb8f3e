"""Tools: the ones this server has (``/v1/tools``), the ones active in a session, and the
decisions on calls that wait: approve or deny one, or give a client tool's result."""

from __future__ import annotations

from aiohttp import web

from actors.agent.tools import cap_output
from actors.core.commands import DecideToolCall, GetSession, PatchSession, SubmitToolResult
from actors.core.errors import InvalidRequestError
from actors.core.records import ClientTool
from server.appkeys import TOOLBOX
from server.routes.common import ask, if_match
from server.schema.common import decode_body, json_response
from server.schema.tools import (
    ClientToolBody,
    DenyBody,
    SessionTools,
    SessionToolsBody,
    ToolCallOut,
    ToolList,
    ToolOut,
    ToolResultBody,
)

__all__ = [
    "approve_tool_call",
    "check_client_tools",
    "check_tools",
    "deny_tool_call",
    "get_session_tools",
    "list_tools",
    "put_session_tools",
    "submit_tool_result",
]

def check_tools(request: web.Request, names: list[str]) -> list[str]:
    """``names`` without repeats, or 422 naming the tools this server does not have."""
    unknown = request.app[TOOLBOX].unknown(names)
    if unknown:
        raise InvalidRequestError(f"unknown tools: {', '.join(unknown)} (GET /v1/tools lists them)")
    return list(dict.fromkeys(names))


async def list_tools(request: web.Request) -> web.Response:
    tools = request.app[TOOLBOX].all()
    return json_response(ToolList([ToolOut(t.name, t.description, t.parameters) for t in tools]))


async def get_session_tools(request: web.Request) -> web.Response:
    record = await ask(request, GetSession())
    return json_response(SessionTools(record.tools))


async def put_session_tools(request: web.Request) -> web.Response:
    body = await decode_body(request, SessionToolsBody, empty_ok=False)
    tools = check_tools(request, body.tools)
    record = await ask(request, PatchSession(tools=tools, if_match=if_match(request)))
    return json_response(SessionTools(record.tools), headers={"ETag": f'"{record.version}"'})


def check_client_tools(tools: list[ClientToolBody]) -> list[ClientTool]:
    """The frontend's tools, or 422 if two share a name."""
    names = [t.name for t in tools]
    if len(set(names)) != len(names):
        raise InvalidRequestError("client_tools: two tools have the same name")
    return [ClientTool(t.name, t.description, t.parameters) for t in tools]


async def approve_tool_call(request: web.Request) -> web.Response:
    call_id = request.match_info["call_id"]
    task_id = await ask(request, DecideToolCall(call_id, True))
    return json_response(ToolCallOut(task_id, call_id, "approved"))


async def deny_tool_call(request: web.Request) -> web.Response:
    body = await decode_body(request, DenyBody)
    call_id = request.match_info["call_id"]
    task_id = await ask(request, DecideToolCall(call_id, False, body.reason))
    return json_response(ToolCallOut(task_id, call_id, "denied"))


async def submit_tool_result(request: web.Request) -> web.Response:
    body = await decode_body(request, ToolResultBody, empty_ok=False)
    call_id = request.match_info["call_id"]
    task_id = await ask(request, SubmitToolResult(call_id, cap_output(body.output), body.is_error))
    return json_response(ToolCallOut(task_id, call_id, "submitted"))
