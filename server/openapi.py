"""The OpenAPI 3.1 document, built from the msgspec types the handlers decode and encode.

Every route of the app is declared once in ``OPERATIONS``: one ``Op(...)`` line naming its
method, path, body type and response types. ``undocumented(app)`` lists the routes of an
app that have no line here (the test suite fails on any), so the document cannot drift
from the router; the live-response test validates real answers against the schemas.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web

from actors.core.events import AnyEvent
from actors.core.export import SessionExport
from actors.core.records import AgentRecord, DocumentRecord
from server.auth.guests import GuestOut
from server.auth.tokens import TokenPair
from server.errors import Problem
from server.protocols import protocol_routes
from server.protocols.common import ProtocolRoute
from server.routes.docs import DOC_ASSETS
from server.routes.guests import GuestSessionBody, GuestUsage
from server.routes.transfer import CopyBody, MergeBody
from server.schema.replies import CancelOut, GuestSessionOut, NavigateOut, ReadyOut, RestoreOut, StatusOut
from server.schema.wire import (
    AgentBody,
    AgentList,
    AgentPatchBody,
    CheckpointList,
    CreateSessionBody,
    DocumentList,
    EditBody,
    EndUserUsage,
    LinkDocumentsBody,
    MessageList,
    NavigateBody,
    PatchSessionBody,
    ProviderList,
    RegenerateBody,
    RestoreBody,
    SendMessageBody,
    SendResult,
    SessionList,
    SessionOut,
    SessionTools,
    SessionToolsBody,
    ToolList,
    TreeOut,
)

__all__ = [
    "ANY",
    "HTML",
    "JSON",
    "MULTIPART",
    "OPERATIONS",
    "SECURITY_SCHEMES",
    "SSE",
    "TEXT",
    "Body",
    "Op",
    "Param",
    "build_spec",
    "route_keys",
    "stale",
    "undocumented",
]


# -- the declaration ----------------------------------------------------------------------

# Media kinds an Op may answer with besides typed JSON.
JSON = "application/json"
SSE = "text/event-stream"
TEXT = "text/plain"
HTML = "text/html"
ANY = "application/octet-stream"


@dataclass(frozen=True)
class Param:
    """A query or header parameter."""

    name: str
    schema: Mapping[str, Any]
    description: str = ""
    where: str = "query"  # query | header
    required: bool = False


@dataclass(frozen=True)
class Body:
    """A request body that is not JSON: its media type and schema."""

    media: str
    schema: Mapping[str, Any]


@dataclass(frozen=True)
class Op:
    """One route: ``Op("GET", "/v1/x/{x_id}", "Summary", ok=XOut)``.

    ``ok`` is the 2xx answer: a msgspec type (JSON), a tuple of types (any of them), a media
    kind (``SSE``, ``TEXT``, ``HTML``, ``ANY``) or None (no body). ``status`` is its code.
    ``stream`` adds ``text/event-stream`` as a second form of the answer (``stream: true``).
    """

    method: str
    path: str
    summary: str
    ok: Any = None
    body: type[Any] | Body | None = None
    body_required: bool = False
    status: int = 200
    query: tuple[Param, ...] = ()
    stream: bool = False
    tag: str | None = None
    public: bool = False  # no credentials needed
    description: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)
    security: list[dict[str, list[str]]] | None = None  # None: SECURITY (or none when public)
    errors: str = "application/problem+json"  # the media type of 4XX answers (a protocol's own shape)
    stream_schema: Mapping[str, Any] | None = None  # with stream: a protocol's own event stream


_IF_MATCH = Param(
    "If-Match",
    {"type": "string", "pattern": '^(W/)?"?[0-9]+"?$'},
    'The session version as `"<version>"`: a mismatch answers 412 and changes nothing.',
    where="header",
)
_LIMIT = Param("limit", {"type": "integer", "minimum": 1, "maximum": 200, "default": 20}, "Page size.")
_OFFSET = Param("offset", {"type": "integer", "minimum": 0, "maximum": 1_000_000, "default": 0}, "Items to skip.")
MULTIPART = "multipart/form-data"
# A file upload: a multipart form with the file in a part named `file`.
_UPLOAD = Body(MULTIPART, {
    "type": "object",
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "txt, md, json, csv, html or pdf"},
        "end_user_id": {"type": "string", "description": "Owner (default: shared, or the X-End-User-ID)."},
    },
    "required": ["file"],
})


# One line per route. A route added to the app without a line here fails tests/test_openapi.py.
OPERATIONS: list[Op] = [
    # sessions
    Op("POST", "/v1/sessions", "Create a session", SessionOut, CreateSessionBody, status=201),
    Op("GET", "/v1/sessions", "List sessions, newest activity first", SessionList, query=(
        Param("namespace", {"type": "string"}),
        Param("end_user_id", {"type": "string"}),
        _LIMIT,
        Param("offset", {"type": "integer", "minimum": 0, "maximum": 1_000_000, "default": 0}),
        Param("cursor", {"type": "string"}, "The `next_cursor` of the previous page."),
    ), description="Filter by metadata with `metadata.KEY=VALUE` (repeatable; all must match)."),
    Op("GET", "/v1/sessions/{session_id}", "Get a session", SessionOut),
    Op("PATCH", "/v1/sessions/{session_id}", "Change title, metadata, context or tools", SessionOut,
       PatchSessionBody, query=(_IF_MATCH,)),
    Op("DELETE", "/v1/sessions/{session_id}", "Delete a session and everything in it", status=204),
    Op("GET", "/v1/sessions/{session_id}/metadata", "The metadata object alone", {"type": "object"}),
    Op("POST", "/v1/sessions/{session_id}/prepare", "Activate the session now (warm it)", StatusOut),
    Op("GET", "/v1/sessions/{session_id}/export", "The whole session as one JSON document", SessionExport),
    Op("POST", "/v1/sessions/import", "Import an exported session", SessionOut, SessionExport, body_required=True,
       status=201, query=(Param("new_id", {"type": "boolean"}, "Give it (and its messages) fresh ids."),)),
    Op("POST", "/v1/sessions/{session_id}/copy", "Copy a session", SessionOut, CopyBody, status=201),
    Op("POST", "/v1/sessions/merge", "A new session from the active paths of others, in order", SessionOut,
       MergeBody, body_required=True, status=201),
    Op("POST", "/v1/sessions/{session_id}/tokens", "A new access and refresh token for this session", TokenPair),
    Op("POST", "/v1/tokens/refresh", "Rotate a refresh token (the old one stops working)", TokenPair,
       security=[{"RefreshToken": []}]),
    # guests and usage
    Op("POST", "/v1/guests/sessions", "Find or create the guest, and a session with tokens for it", GuestSessionOut,
       GuestSessionBody, body_required=True, status=201),
    Op("GET", "/v1/guests", "The guest with this IP or browser fingerprint", GuestOut, query=(
        Param("ip", {"type": "string"}), Param("fingerprint", {"type": "string"}),
        Param("namespace", {"type": "string", "default": "default"}),
    )),
    Op("GET", "/v1/guests/{guest_id}/usage", "A guest's usage and limits", GuestUsage),
    Op("GET", "/v1/usage", "An end user's sessions and token usage", EndUserUsage, query=(
        Param("end_user_id", {"type": "string"}, "Required unless sent as X-End-User-ID."),
    )),
    # agents, providers, tools
    Op("GET", "/v1/agents", "Agents", AgentList),
    Op("POST", "/v1/agents", "Create an agent", AgentRecord, AgentBody, body_required=True, status=201),
    Op("GET", "/v1/agents/{agent_id}", "An agent", AgentRecord),
    Op("PATCH", "/v1/agents/{agent_id}", "Change an agent", AgentRecord, AgentPatchBody),
    Op("DELETE", "/v1/agents/{agent_id}", "Delete an agent", status=204),
    Op("GET", "/v1/providers", "Model providers and their health", ProviderList, tag="agents"),
    Op("GET", "/v1/tools", "The tools this server has", ToolList),
    Op("GET", "/v1/sessions/{session_id}/tools", "The tools active in a session", SessionTools),
    Op("PUT", "/v1/sessions/{session_id}/tools", "Set the tools of a session", SessionTools, SessionToolsBody,
       body_required=True),
    # documents
    Op("POST", "/v1/documents", "Upload a document", DocumentRecord, _UPLOAD, body_required=True, status=201),
    Op("GET", "/v1/documents", "Documents the caller may see", DocumentList, query=(
        Param("limit", {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}), _OFFSET,
    )),
    Op("GET", "/v1/documents/{document_id}", "A document", DocumentRecord),
    Op("DELETE", "/v1/documents/{document_id}", "Delete a document", status=204),
    Op("GET", "/v1/sessions/{session_id}/documents", "Documents linked to a session", DocumentList),
    Op("POST", "/v1/sessions/{session_id}/documents", "Link documents to a session", DocumentList,
       LinkDocumentsBody, body_required=True),
    Op("POST", "/v1/sessions/{session_id}/upload", "Upload a document and link it", DocumentRecord, _UPLOAD,
       body_required=True, status=201),
    Op("DELETE", "/v1/sessions/{session_id}/documents/{document_id}", "Unlink a document", status=204),
    # messages, tasks, branches
    Op("POST", "/v1/sessions/{session_id}/messages", "Send a message: starts a task", SendResult, SendMessageBody,
       body_required=True, stream=True, query=(
           Param("queue", {"type": "boolean"}, "Wait behind a running task instead of answering 409."),
           _IF_MATCH)),
    Op("GET", "/v1/sessions/{session_id}/messages", "The active path, oldest first", MessageList, query=(
        Param("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}),
        Param("offset", {"type": "integer", "minimum": 0, "maximum": 10_000_000, "default": 0}),
    )),
    Op("GET", "/v1/sessions/{session_id}/tree", "Every message, with parents and children", TreeOut),
    Op("POST", "/v1/sessions/{session_id}/messages/{message_id}/edit", "Edit a user message (a new sibling)",
       SendResult, EditBody, body_required=True, stream=True, query=(_IF_MATCH,)),
    Op("POST", "/v1/sessions/{session_id}/messages/{message_id}/regenerate", "A new answer (a new sibling)",
       SendResult, RegenerateBody, stream=True, query=(_IF_MATCH,)),
    Op("POST", "/v1/sessions/{session_id}/navigate", "Switch branch: make a message's newest leaf active",
       NavigateOut, NavigateBody, body_required=True, query=(_IF_MATCH,)),
    Op("POST", "/v1/sessions/{session_id}/cancel", "Stop the running task (the partial answer is kept)", CancelOut),
    Op("GET", "/v1/sessions/{session_id}/checkpoints", "Checkpoints, oldest first", CheckpointList),
    Op("POST", "/v1/sessions/{session_id}/checkpoints/{checkpoint_id}/restore", "Restore a checkpoint",
       (SendResult, RestoreOut), RestoreBody, stream=True, query=(_IF_MATCH,),
       description="Without a hint only the active leaf moves; with one, a task answers from there."),
    # streaming
    Op("GET", "/v1/sessions/{session_id}/stream", "The session's events: replay after an id, then live", SSE,
       query=(
           Param("last_event_id", {"type": "integer", "minimum": 0}, "Resume after this event id."),
           Param("Last-Event-ID", {"type": "integer", "minimum": 0}, "Resume after this event id.", "header"),
       )),
    # operations
    Op("GET", "/healthz", "Alive", StatusOut, tag="operations", public=True),
    Op("GET", "/readyz", "Ready: the store answers and the server accepts work", ReadyOut, tag="operations",
       public=True, extra={"503": ReadyOut}),
    Op("GET", "/metrics", "Prometheus metrics", TEXT, tag="operations", public=True),
    Op("GET", "/openapi.json", "This document", {"type": "object"}, tag="operations", public=True),
    Op("GET", "/docs", "The API, browsable", HTML, tag="operations", public=True),
    Op("GET", "/docs/assets/{name}", "A file of the browsable API page", ANY, tag="operations", public=True),
    Op("GET", "/", "The chat page", HTML, tag="operations", public=True),
    Op("GET", "/web/{name}", "A file of the chat page (script, style, icon)", ANY, tag="operations", public=True),
]


def _protocol_op(r: ProtocolRoute) -> Op:
    """An adapter route (server/protocols) as an Op: its facts live beside its handler."""
    ok = Body(SSE, r.ok) if r.sse else r.ok
    return Op(r.method, r.path, r.summary, ok, r.body, body_required=r.body is not None, status=r.status,
              tag=r.tag, extra=r.extra, errors=r.errors, stream=r.stream is not None, stream_schema=r.stream)


OPERATIONS += [_protocol_op(r) for r in protocol_routes()]

# Credentials the API accepts; a new kind of credential joins with one entry.
SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "ApiKey": {
        "type": "apiKey", "in": "header", "name": "X-API-Key",
        "description": "A key from `sessiond keys create`. Add `X-End-User-ID` to act for one end user.",
    },
    "ClientId": {"type": "apiKey", "in": "header", "name": "X-Client-ID", "description": "`key_<id>` of a key."},
    "ClientSecret": {"type": "apiKey", "in": "header", "name": "X-Client-Secret", "description": "Its secret."},
    "SessionToken": {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
        "description": "A session access token: only its own session (`?token=` also works on GET .../stream).",
    },
    "RefreshToken": {"type": "http", "scheme": "bearer", "description": "A refresh token (`rt_...`)."},
}
# Each entry is one way to authenticate (all schemes of an entry together).
SECURITY: list[dict[str, list[str]]] = [{"ApiKey": []}, {"ClientId": [], "ClientSecret": []}, {"SessionToken": []}]

_PATH_PARAMS: dict[str, str] = {
    "session_id": "A session id (`ses_...`).",
    "message_id": "A message id (`msg_...`).",
    "checkpoint_id": "A checkpoint id (`ckp_...`).",
    "document_id": "A document id (`doc_...`).",
    "agent_id": "An agent id (`agt_...`).",
    "guest_id": "A guest id (`gst_...`).",
}


# -- building -----------------------------------------------------------------------------

_REF = "#/components/schemas/{name}"
_PROBLEM = "application/problem+json"


def _types(ops: Iterable[Op]) -> list[Any]:
    out: list[Any] = [Problem]
    for op in ops:
        for value in (op.ok, op.body, *op.extra.values()):
            if isinstance(value, Body):
                continue
            for t in value if isinstance(value, tuple) else (value,):
                if isinstance(t, type) and t not in out:
                    out.append(t)
    return out


def _schema_of(value: Any, named: Mapping[Any, dict[str, Any]]) -> dict[str, Any]:
    if isinstance(value, tuple):
        return {"anyOf": [_schema_of(v, named) for v in value]}
    if isinstance(value, dict):
        return value
    return named[value]


def _content(value: Any, named: Mapping[Any, dict[str, Any]]) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, Body):
        return {value.media: {"schema": dict(value.schema)}}
    if value == SSE:
        # As OpenAPI 3.2 reads an event stream's item schema: one object per event.
        return {SSE: {"schema": {"$ref": _REF.format(name="ServerSentEvent")}}}
    if value in (TEXT, HTML):
        return {value: {"schema": {"type": "string"}}}
    if value == ANY:
        return {"*/*": {"schema": {"type": "string", "format": "binary"}}}
    return {JSON: {"schema": _schema_of(value, named)}}


def _operation_id(op: Op) -> str:
    words = re.sub(r"[{}]", "", op.path).strip("/").replace("-", "_").replace(".", "_").split("/")
    return "_".join([op.method.lower(), *[w for w in words if w and w != "v1"]])


_SESSION_TAGS = {
    "messages": "messages", "tree": "messages", "navigate": "messages", "cancel": "messages",
    "checkpoints": "messages", "stream": "streaming", "tokens": "tokens", "documents": "documents",
    "upload": "documents", "tools": "tools",
}


def _tag(op: Op) -> str:
    if op.tag:
        return op.tag
    parts = op.path.split("/")
    if op.path.startswith("/v1/sessions/{session_id}/") and len(parts) > 4:
        return _SESSION_TAGS.get(parts[4], "sessions")
    return parts[2] if len(parts) > 2 else "operations"


def _operation(op: Op, named: Mapping[Any, dict[str, Any]]) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"},
         "description": _PATH_PARAMS.get(name, "")}
        for name in re.findall(r"{(\w+)}", op.path)
    ]
    if op.path == "/docs/assets/{name}":
        params[0]["schema"] = {"type": "string", "enum": list(DOC_ASSETS)}
    for p in op.query:
        item: dict[str, Any] = {"name": p.name, "in": p.where, "required": p.required, "schema": dict(p.schema)}
        if p.description:
            item["description"] = p.description
        params.append(item)
    ok: dict[str, Any] = {"description": "No content" if op.ok is None else "OK"}
    content = _content(op.ok, named)
    if op.stream:
        sse = {SSE: {"schema": dict(op.stream_schema)}} if op.stream_schema is not None else _content(SSE, named)
        content = {**(content or {}), **(sse or {})}
        ok["description"] = "The task's result (`stream: false`) or its event stream (`stream: true`)"
    if content:
        ok["content"] = content
    responses: dict[str, Any] = {str(op.status): ok}
    for status, value in op.extra.items():
        responses[status] = {"description": "No content" if value is None else "See the body"}
        if value is not None:
            responses[status]["content"] = _content(value, named)
    problem = {"description": "A problem (RFC 9457)", "content": {"application/problem+json": {
        "schema": named[Problem]}}}
    responses["4XX"] = problem if op.errors == _PROBLEM else {
        "description": "An error in the protocol's own shape", "content": {op.errors: {"schema": {"type": "object"}}}}
    if not op.public:
        responses["503"] = problem
    out: dict[str, Any] = {
        "operationId": _operation_id(op),
        "summary": op.summary,
        "tags": [_tag(op)],
        "parameters": params,
        "responses": responses,
    }
    if op.description:
        out["description"] = op.description
    if isinstance(op.body, Body):
        out["requestBody"] = {"required": op.body_required, "content": {op.body.media: {"schema": op.body.schema}}}
    elif op.body is not None:
        out["requestBody"] = {"required": op.body_required, "content": {JSON: {"schema": named[op.body]}}}
    out["security"] = op.security if op.security is not None else [] if op.public else SECURITY
    return out


def _sse_item(mapping: Mapping[str, str]) -> dict[str, Any]:
    """One SSE frame: ``event`` names the type of the JSON object in ``data``; ``id`` increases."""
    return {
        "description": "One Server-Sent Event: `id` (the session's event id), `event` (its type), `data` (JSON).",
        "oneOf": [
            {
                "type": "object",
                "required": ["event", "id", "data"],
                "properties": {
                    "event": {"const": tag},
                    "id": {"type": "string", "pattern": "^[0-9]+$"},
                    "retry": {"type": "integer"},
                    "data": {"type": "string", "contentMediaType": JSON, "contentSchema": {"$ref": ref}},
                },
            }
            for tag, ref in mapping.items()
        ],
    }


def build_spec(ops: Iterable[Op] = OPERATIONS, *, version: str = "0.1.0") -> dict[str, Any]:
    """The OpenAPI 3.1 document for ``ops``."""
    ops = list(ops)
    types = _types(ops)
    refs, components = msgspec.json.schema_components([*types, AnyEvent], ref_template=_REF)
    named = dict(zip(types, refs[:-1], strict=True))
    components["StreamEvent"] = refs[-1]
    components["ServerSentEvent"] = _sse_item(refs[-1]["discriminator"]["mapping"])
    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, named)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "sessiond",
            "version": version,
            "description": "Sessions for AI agents: branching conversations, event streams that resume exactly.",
        },
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": SECURITY_SCHEMES},
        "security": SECURITY,
    }


# -- drift --------------------------------------------------------------------------------


def route_keys(app: web.Application) -> set[tuple[str, str]]:
    """(method, path template) of every route of ``app``; HEAD twins of GET left out."""
    keys: set[tuple[str, str]] = set()
    for route in app.router.routes():
        resource = route.resource
        if route.method == "HEAD" or resource is None:
            continue
        path = resource.canonical
        if isinstance(resource, web.StaticResource):
            path = path.rstrip("/") + "/{filename}"
        keys.add((route.method, path))
    return keys


def undocumented(app: web.Application, ops: Iterable[Op] = OPERATIONS) -> list[str]:
    """Routes of ``app`` with no ``Op`` line."""
    declared = {(op.method, op.path) for op in ops}
    return sorted(f"{m} {p}" for m, p in route_keys(app) - declared)


def stale(app: web.Application, ops: Iterable[Op] = OPERATIONS) -> list[str]:
    """``Op`` lines with no route in ``app``."""
    return sorted(f"{op.method} {op.path}" for op in ops if (op.method, op.path) not in route_keys(app))
