"""Sessions: create, list, get, patch, metadata, delete, prepare."""

from __future__ import annotations

import re

import msgspec
from aiohttp import web

from actors.core.commands import DeleteSession, GetSession, PatchSession
from actors.core.errors import InvalidRequestError
from actors.core.export import check_json
from actors.core.records import SessionQuery
from server.appkeys import REGISTRY, STORE, TOKENS
from server.auth.principal import principal_of
from server.deletion import forget_session
from server.routes.agents import agent_for_session
from server.routes.common import ask, decode_cursor, encode_cursor, if_match, int_query, session_of
from server.routes.tools import check_client_tools, check_tools
from server.schema.common import decode_body, json_response
from server.schema.ops import StatusOut
from server.schema.sessions import CreateSessionBody, PatchSessionBody, SessionList, session_out, session_tokens_out

__all__ = [
    "create_session",
    "delete_session",
    "get_metadata",
    "get_session",
    "list_sessions",
    "patch_session",
    "prepare_session",
    "session_query",
]

_META_KEY = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")


async def create_session(request: web.Request) -> web.Response:
    body = await decode_body(request, CreateSessionBody)
    check_json("metadata", body.metadata)  # 422 at write time: every later read must stay cheap
    check_json("context", body.context)
    principal = principal_of(request)
    end_user = body.end_user_id
    if principal.end_user_id is not None:
        if end_user is not None and end_user != principal.end_user_id:
            raise InvalidRequestError("end_user_id differs from X-End-User-ID")
        end_user = principal.end_user_id
    if body.temporary and body.retention is not None:
        raise InvalidRequestError("a temporary session has no retention of its own; set one of the two")
    agent = await agent_for_session(request, body.agent_id)
    registry = request.app[REGISTRY]
    record = registry.new_record(
        namespace=body.namespace,
        end_user_id=end_user,
        agent_id=body.agent_id,
        title=body.title,
        system_prompt=body.system_prompt,
        metadata=body.metadata,
        context=body.context,
        tools=check_tools(request, body.tools) if body.tools else list(agent.tools),  # none: the agent's
        retention=body.retention,
        temporary=body.temporary,
    )
    await registry.create(record)
    if body.with_token:
        pair = await request.app[TOKENS].issue(record, principal.key_id)
        headers = {"ETag": f'"{record.version}"', "Cache-Control": "no-store"}
        return json_response(session_tokens_out(record, pair), status=201, headers=headers)
    return json_response(session_out(record), status=201, headers={"ETag": f'"{record.version}"'})


def session_query(request: web.Request, *, limit: int, offset: int) -> SessionQuery:
    """The listing's filters from the query string (namespace, end user, ``metadata.KEY``),
    narrowed to what the caller may see: its namespace, the end user it acts for."""
    principal = principal_of(request)
    q = request.query
    metadata: dict[str, str] = {}
    for name, value in q.items():
        if name.startswith("metadata."):
            key = name.removeprefix("metadata.")
            if not _META_KEY.match(key):
                raise InvalidRequestError(f"metadata filter key {key!r} is not allowed")
            metadata[key] = value
    end_user = q.get("end_user_id")
    if principal.end_user_id is not None:
        end_user = principal.end_user_id  # acting for a user: only that user's sessions
    return SessionQuery(
        namespace=principal.namespace or q.get("namespace"),
        end_user_id=end_user,
        metadata=metadata,
        limit=limit,
        offset=offset,
    )


async def list_sessions(request: web.Request) -> web.Response:
    principal = principal_of(request)
    limit = int_query(request, "limit")
    cursor = request.query.get("cursor")
    query = session_query(request, limit=limit + 1, offset=int_query(request, "offset"))
    query.after = decode_cursor(cursor, tuple[str, str]) if cursor else None
    if principal.session_id is not None:
        records = [r for r in await request.app[STORE].list_sessions(query) if r.id == principal.session_id]
    else:
        records = await request.app[STORE].list_sessions(query)
    more = len(records) > limit
    records = records[:limit]
    next_cursor = encode_cursor(records[-1].last_active_at, records[-1].id) if more else None
    return json_response(SessionList([session_out(r) for r in records], next_cursor))


async def get_session(request: web.Request) -> web.Response:
    record = await ask(request, GetSession())
    return json_response(session_out(record), headers={"ETag": f'"{record.version}"'})


async def patch_session(request: web.Request) -> web.Response:
    body = await decode_body(request, PatchSessionBody)
    if not isinstance(body.metadata, msgspec.UnsetType):
        check_json("metadata", body.metadata)
    if not isinstance(body.context, msgspec.UnsetType):
        check_json("context", body.context)
    record = await ask(
        request,
        PatchSession(
            title=body.title, metadata=body.metadata, context=body.context,
            tools=body.tools if body.tools is msgspec.UNSET else check_tools(request, body.tools),
            client_tools=(
                body.client_tools if body.client_tools is msgspec.UNSET else check_client_tools(body.client_tools)
            ),
            retention=body.retention,
            temporary=body.temporary,
            if_match=if_match(request),
        ),
    )
    return json_response(session_out(record), headers={"ETag": f'"{record.version}"'})


async def get_metadata(request: web.Request) -> web.Response:
    record = await ask(request, GetSession())
    return json_response(record.metadata)


async def delete_session(request: web.Request) -> web.Response:
    session = session_of(request)
    await ask(request, DeleteSession())
    await forget_session(request.app, session.record)  # its tokens, and the documents only it had
    return web.Response(status=204)


async def prepare_session(request: web.Request) -> web.Response:
    # Nothing to do: the auth middleware looked the session up, which activated it.
    return json_response(StatusOut("running"))
