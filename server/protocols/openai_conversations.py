"""OpenAI Conversations over sessions: ``/openai/v1/conversations``.

A conversation is a session (its id is the session id); its items are the session's active
path: a user message is a ``message`` item, an answer is its tool calls (``mcp_call``) then a
``message`` item. ``GET /conversations`` lists them, which OpenAI's own API cannot.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from aiohttp import web

from actors.core.commands import DeleteSession, GetMessages, GetSession, GetTree, PatchSession
from actors.core.errors import InvalidRequestError, NotFoundError
from actors.core.ids import new_id, utcnow
from actors.core.records import SessionQuery
from actors.core.tree import Node
from server.appkeys import REGISTRY, STORE
from server.auth.principal import principal_of, require_key
from server.deletion import forget_session
from server.protocols.openai_responses import InputItem, agent_for_model
from server.protocols.openai_shapes import (
    OPENAI_ERRORS,
    PAGE_QUERY,
    Metadata,
    OpenAIError,
    conversation_out,
    item_list,
    message_items,
    page,
)
from server.routes.common import ask, int_query, session_of
from server.routing import Route
from server.schema.common import decode_body, json_response

__all__ = [
    "ROUTES",
    "ConversationBody",
    "ConversationPatch",
    "create_conversation",
    "create_items",
    "delete_conversation",
    "delete_item",
    "get_conversation",
    "get_item",
    "list_conversations",
    "list_items",
    "update_conversation",
]


class ConversationBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    items: list[InputItem] | None = None
    metadata: Metadata | None = None
    model: str | None = None  # sessiond's own: the agent (or provider/model route) it answers with


class ConversationPatch(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    metadata: Metadata


def _history(items: list[InputItem]) -> tuple[list[Node], str | None]:
    """Initial items as messages (user and assistant taking turns, the last an answer), and
    system/developer items as the system prompt."""
    nodes: list[Node] = []
    system: list[str] = []
    for item in items:
        if item.type != "message" or item.role not in ("user", "assistant", "system", "developer"):
            raise OpenAIError(f"an item of type {item.type!r} (role {item.role!r}) cannot start a conversation",
                              "unsupported_input", "items")
        if item.role in ("system", "developer"):
            system.append(item.text())
            continue
        want: Literal["user", "assistant"] = "user" if not nodes or nodes[-1].role == "assistant" else "assistant"
        if item.role != want:
            raise OpenAIError("initial items take turns: user, assistant, user, ...", "unsupported_input", "items")
        nodes.append(Node(new_id("msg"), nodes[-1].id if nodes else None, want, item.text(), utcnow()))
    if nodes and nodes[-1].role != "assistant":
        raise OpenAIError("initial items end with an answer; send the last user message as a response's input",
                          "unsupported_input", "items")
    return nodes, "\n\n".join(system) or None


async def create_conversation(request: web.Request) -> web.Response:
    principal = principal_of(request)
    require_key(principal)
    body = await decode_body(request, ConversationBody)
    registry = request.app[REGISTRY]
    record = registry.new_record(
        namespace=principal.namespace or "default", end_user_id=principal.end_user_id,
        metadata=dict(body.metadata or {}), agent_id=await agent_for_model(request, body.model),
    )
    nodes, system = _history(body.items or [])
    record.system_prompt = system
    if nodes:
        await registry.create_from_nodes(record, nodes)
    else:
        await registry.create(record)
    return json_response(conversation_out(record))


async def list_conversations(request: web.Request) -> web.Response:
    """sessiond's own: the caller's conversations, newest activity first."""
    principal = principal_of(request)
    require_key(principal)
    limit = int_query(request, "limit")
    after: tuple[str, str] | None = None
    if request.query.get("after"):
        last = await request.app[STORE].get_session(request.query["after"])
        if last is None or not principal.can_see(last.id, last.namespace, last.end_user_id):
            raise InvalidRequestError("after names no conversation of this list")
        after = (last.last_active_at, last.id)
    query = SessionQuery(namespace=principal.namespace, end_user_id=principal.end_user_id, limit=limit + 1,
                         after=after)
    records = await request.app[STORE].list_sessions(query)
    return json_response(item_list([conversation_out(r) for r in records[:limit]], len(records) > limit))


# A conversation is a session: its routes name it ``{session_id}``, found and authorized once by
# the auth middleware as on every session route.


async def get_conversation(request: web.Request) -> web.Response:
    return json_response(conversation_out(await ask(request, GetSession())))


async def update_conversation(request: web.Request) -> web.Response:
    body = await decode_body(request, ConversationPatch, empty_ok=False)
    record = await ask(request, GetSession())
    # OpenAI replaces the metadata; the session merges key by key, a null deleting one.
    patch: dict[str, Any] = {key: None for key in record.metadata if key not in body.metadata}
    record = await ask(request, PatchSession(metadata={**patch, **body.metadata}))
    return json_response(conversation_out(record))


async def delete_conversation(request: web.Request) -> web.Response:
    session = session_of(request)
    sid = session.id
    await ask(request, DeleteSession())
    await forget_session(request.app, session.record)
    return json_response({"id": sid, "object": "conversation.deleted", "deleted": True})


async def list_items(request: web.Request) -> web.Response:
    result = await ask(request, GetMessages(limit=1 << 30))
    items = [item for node, _, _ in result.items for item in message_items(node)]
    return json_response(page(request, items, default_order="desc"))


async def get_item(request: web.Request) -> web.Response:
    view = await ask(request, GetTree())
    item_id = request.match_info["item_id"]
    for node in view.nodes:
        for item in message_items(node):
            if item["id"] == item_id:
                return json_response(item)
    raise NotFoundError(f"no item {item_id} in this conversation")


async def create_items(request: web.Request) -> web.Response:
    raise OpenAIError("sessiond adds to a conversation by responses (POST /openai/v1/responses with "
                      "conversation): every message it holds was sent or answered; start a conversation "
                      "with items to bring in a history", "unsupported")


async def delete_item(request: web.Request) -> web.Response:
    raise OpenAIError("sessiond keeps every message (a changed past is a branch: send a response with "
                      "previous_response_id of an earlier one)", "unsupported")


def _route(method: str, path: str, handler: Any, summary: str, **facts: Any) -> Route:
    """An /openai/v1 route: the SDK's credentials (an API key as a bearer token), its error shape."""
    facts.setdefault("token", True)
    return Route(method, "/openai/v1" + path, handler, summary, reply={"type": "object"}, bearer_key=True,
                 errors=OPENAI_ERRORS, tag="openai", **facts)


_C = "/conversations/{session_id}"

ROUTES: tuple[Route, ...] = (
    _route("POST", "/conversations", create_conversation, "OpenAI: create a conversation (a session)",
           body=ConversationBody, token=False),
    _route("GET", "/conversations", list_conversations, "OpenAI: list conversations (sessiond's own)", token=False,
           query=(PAGE_QUERY[0], PAGE_QUERY[2])),
    _route("GET", _C, get_conversation, "OpenAI: a conversation"),
    _route("POST", _C, update_conversation, "OpenAI: replace a conversation's metadata",
           body=ConversationPatch, body_required=True),
    _route("DELETE", _C, delete_conversation, "OpenAI: delete a conversation (the session and all in it)"),
    _route("GET", _C + "/items", list_items, "OpenAI: the conversation's items (its active path)", query=PAGE_QUERY),
    _route("POST", _C + "/items", create_items, "OpenAI: not supported (items come from responses)"),
    _route("GET", _C + "/items/{item_id}", get_item, "OpenAI: one item"),
    _route("DELETE", _C + "/items/{item_id}", delete_item, "OpenAI: not supported (messages are kept)"),
)
