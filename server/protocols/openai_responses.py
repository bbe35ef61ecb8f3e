"""OpenAI Responses over sessions: ``/openai/v1/responses``, so that
``OpenAI(base_url=URL + "/openai/v1", api_key=KEY)`` works unchanged.

A response is a task of a session. ``conversation`` names the session; ``previous_response_id``
continues from that response's reply (a branch when it is not the active leaf); with neither,
a new session is made. Every response is kept and every one resumes: ``GET
/responses/{id}?stream=true&starting_after=N`` replays the task through the same translation
and sends what came after event N. ``sequence_number`` is the session event id that produced
an event (the events one session event yields share it and go out in one write).
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from aiohttp import web

from actors.agent.agents import parse_route
from actors.core.commands import CancelTask, GetSession, GetTree, PatchSession, SendMessage, Subscribe
from actors.core.errors import ConflictError, InvalidRequestError, NotFoundError
from actors.core.records import SessionRecord
from actors.core.replies import TreeView
from actors.core.tree import Node
from server.appkeys import AGENTS, CONFIG, REGISTRY
from server.auth.principal import principal_of
from server.protocols.common import bind_session, stream_translated
from server.protocols.openai_shapes import (
    OPENAI_ERRORS,
    PAGE_QUERY,
    Metadata,
    OpenAIError,
    epoch,
    input_message,
    page,
    parse_response_id,
    response_id,
    response_out,
)
from server.protocols.openai_stream import ResponsesTranslator
from server.quota import turn_quota
from server.routes.common import ask, bool_query, session_of
from server.routing import Param, Route
from server.schema.common import decode_body, json_response
from server.tasks import admitted, admitted_command

__all__ = [
    "OPENAI_SSE_HEADERS",
    "ROUTES",
    "ContentPart",
    "ConversationRef",
    "InputItem",
    "ResponsesBody",
    "agent_for_model",
    "cancel_response",
    "create_response",
    "delete_response",
    "find_reply",
    "get_response",
    "input_text",
    "list_input_items",
]

OPENAI_SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "Connection": "keep-alive",
    "X-Accel-Buffering": "no",
}


class ContentPart(msgspec.Struct, kw_only=True):
    type: str
    text: str | None = None


class InputItem(msgspec.Struct, kw_only=True):
    """An input item; sessiond takes messages (role and text content)."""

    type: str = "message"
    role: str | None = None
    content: str | list[ContentPart] | None = None
    id: str | None = None
    status: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text or "" for p in self.content or [] if p.type in ("input_text", "output_text", "text"))


class ConversationRef(msgspec.Struct):
    id: str


class ResponsesBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    model: str | None = None
    input: str | list[InputItem] | None = None
    instructions: str | None = None
    conversation: str | ConversationRef | None = None
    previous_response_id: str | None = None
    stream: bool = False
    background: bool = False
    store: bool = True
    metadata: Metadata | None = None
    tools: list[dict[str, Any]] = msgspec.field(default_factory=list)
    # Accepted so the SDK's usual arguments pass; the session's agent decides these.
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    parallel_tool_calls: bool | None = None
    tool_choice: Any = None
    include: list[str] | None = None
    truncation: str | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    service_tier: str | None = None
    reasoning: Any = None
    text: Any = None
    stream_options: Any = None


def input_text(items: str | list[InputItem] | None) -> tuple[str, str | None]:
    """(the user message to send, instructions from system/developer items)."""
    if isinstance(items, str):
        return items, None
    system: list[str] = []
    users: list[str] = []
    for item in items or []:
        if item.type != "message":
            raise OpenAIError(f"input items of type {item.type!r} are not taken; send a user message",
                              "unsupported_input", "input")
        if item.role in ("system", "developer"):
            system.append(item.text())
        elif item.role == "user":
            users.append(item.text())
        else:
            raise OpenAIError("earlier turns live in the conversation: send only the new user message "
                              "(with conversation or previous_response_id)", "unsupported_input", "input")
    if len(users) != 1:
        raise InvalidRequestError("input must hold exactly one user message")
    return users[0], "\n\n".join(system) or None


async def agent_for_model(request: web.Request, model: str | None) -> str | None:
    """The agent id ``model`` names: an agent id, or a ``provider/model`` route (an agent
    named ``route <model>`` is made for it once, by the operator: making agents is theirs, as
    ``/v1/agents`` is, so no end user, token or guest can add a stored agent per request)."""
    if not model:
        return None
    agents = request.app[AGENTS]
    try:
        return (await agents.get(model)).id
    except NotFoundError:
        pass
    if "/" not in model and model not in agents.providers:
        raise InvalidRequestError(f"model {model!r} is neither an agent id (GET /v1/agents) nor a provider/model route")
    name = f"route {model}"
    for agent in await agents.list():
        if agent.name == name:
            return agent.id
    principal = principal_of(request)
    if principal.kind != "key" or principal.end_user_id is not None:
        raise OpenAIError(f"no agent answers with {model!r} yet: the operator makes its route once (a response or "
                          "conversation naming it with an API key that acts for no end user), or an agent "
                          "(POST /v1/agents)", "model_not_found", "model")
    return (await agents.create(name=name, model=parse_route([model]))).id


def find_reply(view: TreeView, task_id: str, rid: str) -> Node:
    reply = next((n for n in view.nodes if n.task_id == task_id and n.role == "assistant"), None)
    if reply is None:
        raise NotFoundError(f"no response {rid}")
    return reply


# -- handlers ------------------------------------------------------------------------------


async def _bind_named(request: web.Request, body: ResponsesBody) -> str | None:
    """Bind the session the body names (a token's own when it names none); the message the new
    one follows (None: the active leaf)."""
    if body.previous_response_id:
        if body.conversation is not None:
            raise InvalidRequestError("give conversation or previous_response_id, not both")
        sid, tid = parse_response_id(body.previous_response_id)
        await bind_session(request, sid)
        return find_reply(await ask(request, GetTree()), tid, body.previous_response_id).id
    if body.conversation is not None:
        conv = body.conversation
        await bind_session(request, conv if isinstance(conv, str) else conv.id)
        return None
    principal = principal_of(request)
    assert principal.session_id is not None
    await bind_session(request, principal.session_id)  # a token converses in its own session only
    return None


async def _bind_new(request: web.Request, body: ResponsesBody, instructions: str | None) -> None:
    """A new session for a response that names none, bound as the request's."""
    principal = principal_of(request)
    registry = request.app[REGISTRY]
    record = registry.new_record(
        namespace=principal.namespace or "default", end_user_id=principal.end_user_id,
        agent_id=await agent_for_model(request, body.model),
        system_prompt=instructions, metadata=dict(body.metadata or {}),
    )
    await registry.create(record)
    await bind_session(request, record.id)


async def _check_session(request: web.Request, body: ResponsesBody, instructions: str | None) -> None:
    record = await ask(request, GetSession())
    sid = record.id
    if body.model and await agent_for_model(request, body.model) != (record.agent_id or "default"):
        raise OpenAIError(f"conversation {sid} answers with agent {record.agent_id or 'default'}; "
                          "a response in it cannot name another model", "model_mismatch", "model")
    if instructions is not None and instructions != (record.system_prompt or ""):
        raise OpenAIError("a conversation's instructions are set when it is created (its system prompt)",
                          "instructions_mismatch", "instructions")
    if body.metadata:
        await ask(request, PatchSession(metadata=dict(body.metadata)))


async def create_response(request: web.Request) -> web.StreamResponse:
    body = await decode_body(request, ResponsesBody, empty_ok=False)
    if not body.store:
        raise OpenAIError("sessiond keeps every response: store must be true", "unsupported_parameter", "store")
    if body.tools:
        raise OpenAIError("tools sent by the client are not taken yet; the session's own tools run on the server",
                          "unsupported_parameter", "tools")
    text, system = input_text(body.input)
    instructions = "\n\n".join(x for x in (body.instructions, system) if x) or None
    known = bool(body.previous_response_id or body.conversation is not None or principal_of(request).kind == "token")
    parent_id = None
    if known:
        parent_id = await _bind_named(request, body)
        await _check_session(request, body, instructions)
    # The adapter follows every task's events; only a streamed response is an open stream.
    cmd = SendMessage(content=text, parent_id=parent_id, stream=True)
    with admitted_command(request, cmd, opens_stream=body.stream):
        if not known:
            await _bind_new(request, body, instructions)  # admitted first: a refused request makes none
        handle = await (await turn_quota(request)).ask(cmd)
        assert handle.subscription is not None
        sid = session_of(request).id
        record = await ask(request, GetSession())
        view = await ask(request, GetTree())
        reply = find_reply(view, handle.task_id, response_id(sid, handle.task_id))
        previous = _previous(view, reply, sid)
        created = _created(reply)
        if body.stream:
            translator = ResponsesTranslator(record, handle.task_id, previous=previous, background=body.background,
                                             created_at=created)
            return await stream_translated(request, handle.subscription, request.app[CONFIG].streams, translator,
                                           OPENAI_SSE_HEADERS)
        handle.subscription.close()
        if body.background:
            return json_response(response_out(record, handle.task_id, reply, previous=previous, background=True))
        # Shielded: a client that leaves does not stop the response (it is kept, and resumes).
        outcome = await asyncio.shield(handle.done)
        record = await ask(request, GetSession())
        return json_response(response_out(record, outcome.task_id, outcome.message, previous=previous,
                                          background=False, error=outcome.error))


def _created(node: Node) -> int:
    return epoch(node.created_at)


def _previous(view: TreeView, reply: Node, sid: str) -> str | None:
    nodes = {n.id: n for n in view.nodes}
    user = nodes.get(reply.parent_id or "")
    before = nodes.get(user.parent_id or "") if user is not None else None
    if before is None or before.task_id is None:
        return None
    return response_id(sid, before.task_id)


async def _load(request: web.Request) -> tuple[str, str, SessionRecord, TreeView, Node]:
    rid = request.match_info["response_id"]
    sid, tid = parse_response_id(rid)
    await bind_session(request, sid)
    view = await ask(request, GetTree())
    reply = find_reply(view, tid, rid)
    record = await ask(request, GetSession())
    return sid, tid, record, view, reply


async def get_response(request: web.Request) -> web.StreamResponse:
    sid, tid, record, view, reply = await _load(request)
    previous = _previous(view, reply, sid)
    if not bool_query(request, "stream"):
        return json_response(response_out(record, tid, reply, previous=previous))
    raw = request.query.get("starting_after")
    if raw is not None and not raw.isdigit():
        raise InvalidRequestError("starting_after must be a sequence_number this server sent")
    after = int(raw) if raw is not None else None
    # The latest task's events start where Subscribe() without an id starts; an older one's
    # are looked for from the start of what the log holds.
    newest = max((n for n in view.nodes if n.role == "assistant" and n.task_id), key=lambda n: n.created_at)
    with admitted(request, starts_task=False, opens_stream=True):
        sub = await ask(request, Subscribe(last_event_id=None if newest.id == reply.id else 0))
        translator = ResponsesTranslator(record, tid, previous=previous, background=None,
                                         created_at=_created(reply), after=after)
        return await stream_translated(request, sub, request.app[CONFIG].streams, translator, OPENAI_SSE_HEADERS)


async def cancel_response(request: web.Request) -> web.Response:
    sid, tid, record, view, reply = await _load(request)
    if any(r.task_id == tid for r in record.running):
        try:
            await ask(request, CancelTask())
        except ConflictError:
            pass  # it ended meanwhile: the answer below says how
        sid, tid, record, view, reply = await _load(request)
    return json_response(response_out(record, tid, reply, previous=_previous(view, reply, sid)))


async def delete_response(request: web.Request) -> web.Response:
    await _load(request)  # 404 for a response the caller may not see
    raise OpenAIError("sessiond keeps every response of a conversation (a changed past is a branch); "
                      "DELETE /openai/v1/conversations/{id} deletes the whole conversation", "unsupported")


async def list_input_items(request: web.Request) -> web.Response:
    _sid, _tid, _record, view, reply = await _load(request)
    user = next((n for n in view.nodes if n.id == reply.parent_id), None)
    items = [input_message(user)] if user is not None else []
    return json_response(page(request, items, default_order="desc"))


_OBJECT = {"type": "object"}
_STREAM = {"type": "string", "description": "Responses stream events: `event:` (the type), `id:` and `data:` "
           "(the event's JSON; `sequence_number` is the session event id)."}


def _route(method: str, path: str, handler: Any, summary: str, **facts: Any) -> Route:
    """An /openai/v1 route: the SDK's credentials (an API key as a bearer token), its error shape."""
    return Route(method, "/openai/v1" + path, handler, summary, reply=_OBJECT, token=True, bearer_key=True,
                 errors=OPENAI_ERRORS, tag="openai", **facts)


ROUTES: tuple[Route, ...] = (
    _route("POST", "/responses", create_response, "OpenAI: create a response (a task; stream, background or wait)",
           body=ResponsesBody, body_required=True, task="always", sse=True, events=_STREAM),
    _route("GET", "/responses/{response_id}", get_response,
           "OpenAI: a response; stream=true&starting_after=N resumes its stream", sse=True, events=_STREAM, query=(
               Param("stream", {"type": "boolean"}, "Its event stream (from the start, or after starting_after)."),
               Param("starting_after", {"type": "integer", "minimum": 0}, "Resume after this sequence_number."),
           )),
    _route("POST", "/responses/{response_id}/cancel", cancel_response,
           "OpenAI: cancel a response (the partial answer is kept)"),
    _route("DELETE", "/responses/{response_id}", delete_response, "OpenAI: not supported (responses are kept)"),
    _route("GET", "/responses/{response_id}/input_items", list_input_items, "OpenAI: a response's input items",
           query=PAGE_QUERY),
)
