"""Agents (``/v1/agents``) and the health of the model providers (``/v1/providers``)."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from actors.agent.agents import parse_route
from actors.core.errors import ForbiddenError, InvalidRequestError, NotFoundError
from actors.store.tables import AgentRecord
from server.appkeys import AGENTS, ROUTER
from server.auth.principal import principal_of
from server.schema.agents import AgentBody, AgentList, AgentPatchBody, ProviderList
from server.schema.common import decode_body, json_response

__all__ = [
    "agent_for_session",
    "create_agent",
    "delete_agent",
    "get_agent",
    "list_agents",
    "list_providers",
    "patch_agent",
]

async def agent_for_session(request: web.Request, agent_id: str | None) -> AgentRecord:
    """The agent a new session names (the default one if none); 422 if there is no such agent."""
    try:
        return await request.app[AGENTS].resolve(agent_id)
    except NotFoundError:
        raise InvalidRequestError(f"unknown agent_id {agent_id!r} (GET /v1/agents lists them)") from None


def _require_operator(request: web.Request) -> None:
    """Agents (their system prompts) and providers (their internal URLs) are the operator's
    business, not an end user's: a session token never gets here (403 at the edge)."""
    if principal_of(request).end_user_id is not None:
        raise ForbiddenError("agents and providers are for an API key that does not act for an end user")


async def list_agents(request: web.Request) -> web.Response:
    _require_operator(request)
    return json_response(AgentList(await request.app[AGENTS].list()))


async def create_agent(request: web.Request) -> web.Response:
    _require_operator(request)
    body = await decode_body(request, AgentBody, empty_ok=False)
    agent = await request.app[AGENTS].create(
        name=body.name,
        system_prompt=body.system_prompt,
        model=parse_route(body.model) if body.model is not None else None,
        tools=body.tools,
        temperature=body.temperature,
        approval=body.approval,
    )
    return json_response(agent, status=201)


async def get_agent(request: web.Request) -> web.Response:
    _require_operator(request)
    return json_response(await request.app[AGENTS].get(request.match_info["agent_id"]))


async def patch_agent(request: web.Request) -> web.Response:
    _require_operator(request)
    body = await decode_body(request, AgentPatchBody)
    changes: dict[str, Any] = {
        f: getattr(body, f) for f in ("name", "system_prompt", "tools", "temperature", "approval")
        if getattr(body, f) is not msgspec.UNSET
    }
    if body.model is not msgspec.UNSET:
        changes["model"] = parse_route(body.model)
    agent = await request.app[AGENTS].update(request.match_info["agent_id"], **changes)
    return json_response(agent)


async def delete_agent(request: web.Request) -> web.Response:
    _require_operator(request)
    await request.app[AGENTS].delete(request.match_info["agent_id"])
    return web.Response(status=204)


async def list_providers(request: web.Request) -> web.Response:
    _require_operator(request)
    return json_response(ProviderList(request.app[ROUTER].health()))
