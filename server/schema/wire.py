"""Request and response bodies: the msgspec types the handlers decode and encode."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from aiohttp import web

from actors.agent.router import ProviderHealth
from actors.core.errors import InvalidRequestError, PayloadTooLargeError, SessiondError
from actors.core.records import Checkpoint, SessionRecord
from actors.core.tree import Node, Usage
from actors.store.tables import AgentRecord, DocumentRecord, RouteEntry

__all__ = [
    "BadJsonError",
    "CheckpointList",
    "CheckpointOut",
    "CreateSessionBody",
    "EditBody",
    "MessageList",
    "MessageOut",
    "NavigateBody",
    "PatchSessionBody",
    "RegenerateBody",
    "RestoreBody",
    "SendMessageBody",
    "SendResult",
    "SessionList",
    "SessionOut",
    "TreeNodeOut",
    "TreeOut",
    "decode_body",
    "json_response",
    "message_out",
    "session_out",
]

T = TypeVar("T")


class _Body(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class CreateSessionBody(_Body):
    agent_id: str | None = None
    system_prompt: str | None = None
    title: str | None = None
    namespace: str = "default"
    end_user_id: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    context: dict[str, Any] = msgspec.field(default_factory=dict)
    tools: list[str] = msgspec.field(default_factory=list)
    with_token: bool = False


class PatchSessionBody(_Body):
    title: str | msgspec.UnsetType | None = msgspec.UNSET
    metadata: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    context: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    tools: list[str] | msgspec.UnsetType = msgspec.UNSET


class SendMessageBody(_Body):
    content: str
    stream: bool = False
    parent_id: str | None = None


class EditBody(_Body):
    content: str
    stream: bool = False


class RegenerateBody(_Body):
    stream: bool = False


class NavigateBody(_Body):
    message_id: str


class RestoreBody(_Body):
    hint: str | None = None
    stream: bool = False


class SessionOut(msgspec.Struct):
    id: str
    agent_id: str | None
    namespace: str
    end_user_id: str | None
    title: str | None
    metadata: dict[str, Any]
    context: dict[str, Any]
    tools: list[str]
    is_guest: bool
    status: str
    created_at: str
    last_active_at: str
    message_count: int
    usage: Usage
    version: int
    system_prompt: str | None = None


class SessionList(msgspec.Struct):
    items: list[SessionOut]
    next_cursor: str | None


class MessageOut(msgspec.Struct):
    id: str
    parent_id: str | None
    role: str
    content: str
    created_at: str
    status: str
    sibling_index: int
    sibling_count: int
    task_id: str | None = None
    model: str | None = None
    usage: Usage | None = None


class MessageList(msgspec.Struct):
    items: list[MessageOut]
    usage: Usage
    has_more: bool
    total: int


class TreeNodeOut(msgspec.Struct):
    id: str
    parent_id: str | None
    role: str
    content: str
    created_at: str
    status: str
    children: list[str]
    model: str | None = None
    usage: Usage | None = None


class TreeOut(msgspec.Struct):
    nodes: list[TreeNodeOut]
    active_leaf_id: str | None


class CheckpointOut(msgspec.Struct):
    id: str
    message_id: str
    created_at: str
    label: str


class CheckpointList(msgspec.Struct):
    items: list[CheckpointOut]


class SendResult(msgspec.Struct):
    message: MessageOut
    task_id: str
    usage: Usage
    model: str | None
    status: str
    error: str | None = None


class BadJsonError(SessiondError):
    status, code, title = 400, "bad_json", "The body is not valid JSON"


_encoder = msgspec.json.Encoder()
_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}


async def decode_body(request: web.Request, type_: type[T], *, empty_ok: bool = True) -> T:
    """The one place that turns a request body into a typed value (or a 400/413/422)."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLargeError(f"the body is larger than {request.client_max_size} bytes") from None
    if not raw.strip():
        if not empty_ok:
            raise InvalidRequestError("a JSON body is required")
        raw = b"{}"
    decoder = _decoders.get(type_)
    if decoder is None:
        decoder = _decoders[type_] = msgspec.json.Decoder(type_)
    try:
        return decoder.decode(raw)  # type: ignore[no-any-return]
    except msgspec.ValidationError as exc:
        raise InvalidRequestError(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise BadJsonError(str(exc)) from None


def json_response(value: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=_encoder.encode(value), status=status, content_type="application/json", headers=headers)


def session_out(r: SessionRecord, status: str = "idle") -> SessionOut:
    return SessionOut(
        id=r.id,
        agent_id=r.agent_id,
        namespace=r.namespace,
        end_user_id=r.end_user_id,
        title=r.title,
        metadata=r.metadata,
        context=r.context,
        tools=r.tools,
        is_guest=r.is_guest,
        status="running" if r.running else status,
        created_at=r.created_at,
        last_active_at=r.last_active_at,
        message_count=r.message_count,
        usage=r.usage,
        version=r.version,
        system_prompt=r.system_prompt,
    )


def message_out(node: Node, sibling_index: int = 0, sibling_count: int = 1) -> MessageOut:
    return MessageOut(
        id=node.id,
        parent_id=node.parent_id,
        role=node.role,
        content=node.content,
        created_at=node.created_at,
        status=node.status,
        sibling_index=sibling_index,
        sibling_count=sibling_count,
        task_id=node.task_id,
        model=node.model,
        usage=node.usage,
    )


def checkpoint_out(cp: Checkpoint) -> CheckpointOut:
    return CheckpointOut(cp.id, cp.message_id, cp.created_at, cp.label)


# -- agents, tools, documents, usage ---------------------------------------------------------


class AgentBody(_Body):
    name: str
    system_prompt: str = ""
    model: list[str | RouteEntry] | None = None  # None: the default agent's route
    tools: list[str] = msgspec.field(default_factory=list)
    temperature: float | None = None


class AgentPatchBody(_Body):
    name: str | msgspec.UnsetType = msgspec.UNSET
    system_prompt: str | msgspec.UnsetType = msgspec.UNSET
    model: list[str | RouteEntry] | msgspec.UnsetType = msgspec.UNSET
    tools: list[str] | msgspec.UnsetType = msgspec.UNSET
    temperature: float | msgspec.UnsetType | None = msgspec.UNSET


class AgentList(msgspec.Struct):
    items: list[AgentRecord]


class ToolOut(msgspec.Struct):
    name: str
    description: str
    parameters: dict[str, Any]


class ToolList(msgspec.Struct):
    items: list[ToolOut]


class SessionToolsBody(_Body):
    tools: list[str]


class SessionTools(msgspec.Struct):
    tools: list[str]


class LinkDocumentsBody(_Body):
    document_ids: list[str]


class DocumentList(msgspec.Struct):
    items: list[DocumentRecord]


class ProviderList(msgspec.Struct):
    items: list[ProviderHealth]


class EndUserUsage(msgspec.Struct):
    end_user_id: str
    sessions: int
    usage: Usage
