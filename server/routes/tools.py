"""Tools: the ones this server has (``/v1/tools``), the ones active in a session."""

from __future__ import annotations

from aiohttp import web

from actors.core.commands import GetSession, PatchSession
from actors.core.errors import InvalidRequestError
from server.appkeys import TOOLBOX
from server.routes.common import ask, if_match
from server.schema.common import decode_body, json_response
from server.schema.tools import SessionTools, SessionToolsBody, ToolList, ToolOut

__all__ = ["check_tools", "get_session_tools", "list_tools", "put_session_tools"]

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
