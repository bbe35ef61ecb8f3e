"""The OpenAPI 3.1 document, built from ROUTES (server/table.py) and the msgspec types they name.

The document has no list of its own: each route's method, path, body, answers, query parameters
and credentials come from its ``Route``, so the document and the router cannot drift apart. The
live-response test (tests/test_openapi.py) validates real answers against its schemas.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from actors.core.events import AnyEvent
from server.errors import Problem
from server.routing import ANY, HTML, JSON, PROBLEM, SSE, TEXT, Form, Route
from server.table import ROUTES

__all__ = ["SECURITY", "SECURITY_SCHEMES", "build_spec", "spec_bytes"]

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
    "BearerApiKey": {
        "type": "http", "scheme": "bearer",
        "description": "An API key as a bearer token, on the routes of clients that send it so (/openai/v1).",
    },
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


def _types(routes: Iterable[Route]) -> list[Any]:
    out: list[Any] = [Problem]
    for route in routes:
        for value in (route.reply, route.body, *route.responses.values()):
            if isinstance(value, Form):
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
    if value == SSE:
        # As OpenAPI 3.2 reads an event stream's item schema: one object per event.
        return {SSE: {"schema": {"$ref": _REF.format(name="ServerSentEvent")}}}
    if value in (TEXT, HTML):
        return {value: {"schema": {"type": "string"}}}
    if value == ANY:
        return {"*/*": {"schema": {"type": "string", "format": "binary"}}}
    return {JSON: {"schema": _schema_of(value, named)}}


def _operation_id(route: Route) -> str:
    words = re.sub(r"[{}]", "", route.path).strip("/").replace("-", "_").replace(".", "_").split("/")
    return "_".join([route.method.lower(), *[w for w in words if w and w != "v1"]])


_SESSION_TAGS = {
    "messages": "messages", "tree": "messages", "navigate": "messages", "cancel": "messages",
    "checkpoints": "messages", "stream": "streaming", "tokens": "tokens", "documents": "documents",
    "upload": "documents", "tools": "tools", "shares": "shares",
}


def _tag(route: Route) -> str:
    if route.tag:
        return route.tag
    parts = route.path.split("/")
    if route.path.startswith("/v1/sessions/{session_id}/") and len(parts) > 4:
        return _SESSION_TAGS.get(parts[4], "sessions")
    return parts[2] if len(parts) > 2 else "operations"


def _security(route: Route) -> list[dict[str, list[str]]]:
    if route.public:
        return []
    if route.refresh:
        return [{"RefreshToken": []}]
    if route.bearer_key:
        return [*SECURITY, {"BearerApiKey": []}]
    return SECURITY


def _operation(route: Route, named: Mapping[Any, dict[str, Any]]) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": dict(route.path_schemas.get(name, {"type": "string"})),
         "description": _PATH_PARAMS.get(name, "")}
        for name in re.findall(r"{(\w+)}", route.path)
    ]
    for p in route.query:
        item: dict[str, Any] = {"name": p.name, "in": p.where, "required": p.required, "schema": dict(p.schema)}
        if p.description:
            item["description"] = p.description
        params.append(item)
    ok: dict[str, Any] = {"description": "No content" if route.reply is None and not route.sse else "OK"}
    content = _content(route.reply, named)
    if route.sse:
        # A protocol's own event stream (route.events), or sessiond's events.
        events = {SSE: {"schema": dict(route.events)}} if route.events is not None else _content(SSE, named)
        content = {**(content or {}), **(events or {})}
        if route.reply is not None:
            ok["description"] = "The task's result (`stream: false`) or its event stream (`stream: true`)"
    if content:
        ok["content"] = content
    responses: dict[str, Any] = {str(route.status): ok}
    for status, value in route.responses.items():
        responses[status] = {"description": "No content" if value is None else "See the body"}
        if value is not None:
            responses[status]["content"] = _content(value, named)
    problem = {"description": "A problem (RFC 9457)", "content": {PROBLEM: {"schema": named[Problem]}}}
    responses["4XX"] = problem if route.errors is None else {
        "description": "An error in the protocol's own shape",
        "content": {route.errors.media: {"schema": dict(route.errors.schema)}},
    }
    if not route.public:
        responses["503"] = problem
    out: dict[str, Any] = {
        "operationId": _operation_id(route),
        "summary": route.summary,
        "tags": [_tag(route)],
        "parameters": params,
        "responses": responses,
    }
    if route.description:
        out["description"] = route.description
    if isinstance(route.body, Form):
        out["requestBody"] = {
            "required": route.body_required, "content": {route.body.media: {"schema": dict(route.body.schema)}}
        }
    elif route.body is not None:
        out["requestBody"] = {"required": route.body_required, "content": {JSON: {"schema": named[route.body]}}}
    out["security"] = _security(route)
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


def build_spec(routes: Iterable[Route] = ROUTES, *, version: str = "0.1.0") -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes``."""
    routes = list(routes)
    types = _types(routes)
    refs, components = msgspec.json.schema_components([*types, AnyEvent], ref_template=_REF)
    named = dict(zip(types, refs[:-1], strict=True))
    components["StreamEvent"] = refs[-1]
    components["ServerSentEvent"] = _sse_item(refs[-1]["discriminator"]["mapping"])
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, named)
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


def spec_bytes(routes: Iterable[Route] = ROUTES) -> bytes:
    """The document as GET /openapi.json answers it (make_app keeps it in ``app[OPENAPI]``)."""
    return msgspec.json.encode(build_spec(routes))
