"""ROUTES: every route of the HTTP API, once, with its facts (see server/routing.py ``Route``).

A new route is one line here. The router (``add_routes``), the OpenAPI document, the token scope
(``token=True``), admission (``task`` and ``sse``) and the metrics labels all read this table.
The protocol adapters (server/protocols) keep their routes beside their handlers; they join the
table at its end.
"""

from __future__ import annotations

from aiohttp import web

from actors.core.export import SessionExport
from actors.store.tables import AgentRecord, DocumentRecord
from server.auth.guests import GuestOut
from server.auth.tokens import TokenPair
from server.middleware.auth import REFRESH_ROUTE
from server.protocols import ag_ui, ai_sdk, openai_conversations, openai_responses
from server.routes import (
    agents,
    docs,
    documents,
    guests,
    messages,
    ops,
    search,
    sessions,
    shares,
    stream,
    tokens,
    tools,
    transfer,
    usage,
    webhooks,
    webpage,
)
from server.routing import ANY, HTML, MULTIPART, ROUTE_OF, TEXT, Form, Param, Route, integer
from server.schema.agents import AgentBody, AgentList, AgentPatchBody, ProviderList
from server.schema.documents import UPLOAD_FORM, DocumentList, LinkDocumentsBody
from server.schema.guests import GuestSessionBody, GuestSessionOut, GuestUsage
from server.schema.messages import (
    CancelOut,
    CheckpointList,
    EditBody,
    MessageList,
    NavigateBody,
    NavigateOut,
    RegenerateBody,
    RestoreBody,
    RestoreOut,
    SendMessageBody,
    SendResult,
    TreeOut,
)
from server.schema.ops import ReadyOut, StatusOut
from server.schema.search import SearchList
from server.schema.sessions import (
    CopyBody,
    CreateSessionBody,
    ForkBody,
    MergeBody,
    PatchSessionBody,
    SessionList,
    SessionOut,
)
from server.schema.shares import CreateShareBody, ShareCopyBody, ShareCreated, SharedConversation, ShareList
from server.schema.tools import DenyBody, SessionTools, SessionToolsBody, ToolCallOut, ToolList, ToolResultBody
from server.schema.usage import EndUserUsage
from server.schema.webhooks import DeliveryList

__all__ = ["ROUTES", "add_routes"]

_IF_MATCH = Param(
    "If-Match",
    {"type": "string", "pattern": '^(W/)?"?[0-9]+"?$'},
    'The session version as `"<version>"`: a mismatch answers 412 and changes nothing.',
    where="header",
)
_IDEMPOTENCY_KEY = Param(
    "Idempotency-Key",
    {"type": "string", "minLength": 1, "maxLength": 255},
    "A repeat with this key within 24 hours answers the task the first request started (its stream "
    "from the start, or after Last-Event-ID), never a second answer; the same key with a different "
    "body is a 422. Per session; `client_message_id` in the body is the same.",
    where="header",
)
_RESUME = Param("Last-Event-ID", {"type": "integer", "minimum": 0},
                "With a repeated Idempotency-Key and `stream: true`: resume after this event id.", "header")
_UPLOAD = Form(MULTIPART, UPLOAD_FORM)
_S = "/v1/sessions/{session_id}"
_HOT_PATHS = ("/v1/sessions", f"{_S}/messages", f"{_S}/stream", _S)

ROUTES: tuple[Route, ...] = (
    # sessions
    Route("POST", "/v1/sessions", sessions.create_session, "Create a session",
          body=CreateSessionBody, reply=SessionOut, status=201),
    Route("GET", "/v1/sessions", sessions.list_sessions, "List sessions, newest activity first",
          reply=SessionList, query=(
              Param("namespace", {"type": "string"}),
              Param("end_user_id", {"type": "string"}),
              integer("limit", 20, 1, 200, "Page size."),
              integer("offset", 0, 0, 1_000_000),
              Param("cursor", {"type": "string"}, "The `next_cursor` of the previous page."),
          ), description="Filter by metadata with `metadata.KEY=VALUE` (repeatable; all must match)."),
    # Before the {session_id} routes: "search" is not a session id.
    Route("GET", "/v1/sessions/search", search.search_sessions,
          "Full-text search over titles and messages (every branch), ranked, with snippets",
          reply=SearchList, query=(
              Param("q", {"type": "string", "minLength": 1}, "The words to find (all of them).", required=True),
              Param("sort", {"type": "string", "enum": ["relevance", "last_active", "created"],
                             "default": "relevance"}),
              Param("namespace", {"type": "string"}),
              Param("end_user_id", {"type": "string"}),
              Param("created_after", {"type": "string", "format": "date-time"}),
              Param("created_before", {"type": "string", "format": "date-time"}),
              Param("active_after", {"type": "string", "format": "date-time"}),
              Param("active_before", {"type": "string", "format": "date-time"}),
              integer("limit", 20, 1, 100, "Page size."),
              integer("offset", 0, 0, 1000),
          ), description="Filter by metadata with `metadata.KEY=VALUE`, as the list does. An end user "
          "(X-End-User-ID) finds only their own sessions. Snippets mark the matching words with "
          "`<mark>...</mark>`; the rest is the message's text as is (escape it before showing it as HTML)."),
    Route("GET", _S, sessions.get_session, "Get a session", reply=SessionOut),
    Route("PATCH", _S, sessions.patch_session, "Change title, metadata, context, tools, retention or temporary",
          body=PatchSessionBody, reply=SessionOut, query=(_IF_MATCH,)),
    Route("DELETE", _S, sessions.delete_session, "Delete a session and everything in it (its own documents too)",
          status=204),
    Route("GET", f"{_S}/metadata", sessions.get_metadata, "The metadata object alone", reply={"type": "object"}),
    Route("POST", f"{_S}/prepare", sessions.prepare_session, "Activate the session now (warm it)", reply=StatusOut),
    Route("GET", f"{_S}/export", transfer.export_session, "The whole session as one JSON document",
          reply=SessionExport),
    Route("POST", "/v1/sessions/import", transfer.import_session, "Import an exported session",
          body=SessionExport, body_required=True, reply=SessionOut, status=201,
          query=(Param("new_id", {"type": "boolean"}, "Give it (and its messages) fresh ids."),)),
    Route("POST", f"{_S}/copy", transfer.copy_session, "Copy a session", body=CopyBody, reply=SessionOut, status=201),
    Route("POST", f"{_S}/fork", transfer.fork_session,
          "A new session whose history is the path from the root to a message (any branch)",
          body=ForkBody, body_required=True, reply=SessionOut, status=201,
          description="Metadata, context, tools and linked documents are copied; `forked_from` on the new "
          "session and `forks` on the source record the fork."),
    Route("POST", "/v1/sessions/merge", transfer.merge_sessions,
          "A new session from the active paths of others, in order",
          body=MergeBody, body_required=True, reply=SessionOut, status=201),
    # read-only share links
    Route("POST", f"{_S}/shares", shares.create_share, "Make a read-only share link of the conversation",
          body=CreateShareBody, reply=ShareCreated, status=201, token=True,
          description="The link shows the title and the path from the root to `message_id` (default: the "
          "active leaf now, so what is written later is not shared), and nothing else of the session. The "
          "token is in this answer only. Past `[shares] max_per_session` live links, 409 `share_limit`."),
    Route("GET", f"{_S}/shares", shares.list_shares, "The session's live share links (never their tokens)",
          reply=ShareList, token=True),
    Route("DELETE", f"{_S}/shares/{{share_id}}", shares.delete_share, "Revoke a share link at once", status=204,
          token=True),
    Route("GET", "/v1/shares/{token}", shares.get_share, "A shared conversation, read-only (no credential)",
          reply=SharedConversation, public=True, tag="shares", query=(
              Param("format", {"type": "string", "enum": ["text", "html"], "default": "text"},
                    "html adds content_html: the content as sanitized HTML (Markdown rendered)."),),
          description="Needs nothing but the token. An unknown, expired or revoked token is 404. Counted "
          "per client address (`[limits] share_views_per_hour`, `share_views_per_day`): past that, 429."),
    Route("POST", "/v1/shares/{token}/fork", shares.copy_share,
          "Continue a shared conversation as a session of one's own", body=ShareCopyBody,
          reply=SessionOut, status=201, tag="shares",
          description="An API key (acting for an end user: a session of that user). The copy holds the "
          "shared messages with fresh ids and the source's agent; nothing else of the source."),
    Route("POST", f"{_S}/tokens", tokens.mint_tokens, "A new access and refresh token for this session",
          reply=TokenPair),
    Route("POST", REFRESH_ROUTE, tokens.refresh_tokens, "Rotate a refresh token (the old one stops working)",
          reply=TokenPair, refresh=True),
    # guests and usage
    Route("POST", "/v1/guests/sessions", guests.create_guest_session,
          "Find or create the guest, and a session with tokens for it",
          body=GuestSessionBody, body_required=True, reply=GuestSessionOut, status=201),
    Route("GET", "/v1/guests", guests.find_guest, "The guest with this IP or browser fingerprint",
          reply=GuestOut, query=(
              Param("ip", {"type": "string"}), Param("fingerprint", {"type": "string"}),
              Param("namespace", {"type": "string", "default": "default"}),
          )),
    Route("GET", "/v1/guests/{guest_id}/usage", guests.guest_usage, "A guest's usage and limits", reply=GuestUsage),
    Route("GET", "/v1/usage", usage.end_user_usage, "An end user's sessions and token usage",
          reply=EndUserUsage,
          query=(Param("end_user_id", {"type": "string"}, "Required unless sent as X-End-User-ID."),)),
    # agents, providers, tools
    Route("GET", "/v1/agents", agents.list_agents, "Agents", reply=AgentList),
    Route("POST", "/v1/agents", agents.create_agent, "Create an agent",
          body=AgentBody, body_required=True, reply=AgentRecord, status=201),
    Route("GET", "/v1/agents/{agent_id}", agents.get_agent, "An agent", reply=AgentRecord),
    Route("PATCH", "/v1/agents/{agent_id}", agents.patch_agent, "Change an agent",
          body=AgentPatchBody, reply=AgentRecord),
    Route("DELETE", "/v1/agents/{agent_id}", agents.delete_agent, "Delete an agent", status=204),
    Route("GET", "/v1/providers", agents.list_providers, "Model providers and their health",
          reply=ProviderList, tag="agents"),
    Route("GET", "/v1/tools", tools.list_tools, "The tools this server has", reply=ToolList),
    Route("GET", f"{_S}/tools", tools.get_session_tools, "The tools active in a session", reply=SessionTools),
    Route("PUT", f"{_S}/tools", tools.put_session_tools, "Set the tools of a session",
          body=SessionToolsBody, body_required=True, reply=SessionTools),
    # documents
    Route("POST", "/v1/documents", documents.upload_document, "Upload a document",
          body=_UPLOAD, body_required=True, reply=DocumentRecord, status=201),
    Route("GET", "/v1/documents", documents.list_documents, "Documents the caller may see",
          reply=DocumentList,
          query=(integer("limit", 50, 1, 200), integer("offset", 0, 0, 1_000_000, "Items to skip."))),
    Route("GET", "/v1/documents/{document_id}", documents.get_document, "A document", reply=DocumentRecord),
    Route("DELETE", "/v1/documents/{document_id}", documents.delete_document, "Delete a document", status=204),
    Route("GET", f"{_S}/documents", documents.session_documents, "Documents linked to a session",
          reply=DocumentList, token=True),
    Route("POST", f"{_S}/documents", documents.link_documents, "Link documents to a session",
          body=LinkDocumentsBody, body_required=True, reply=DocumentList),
    Route("POST", f"{_S}/upload", documents.upload_into_session, "Upload a document and link it",
          body=_UPLOAD, body_required=True, reply=DocumentRecord, status=201, token=True),
    Route("DELETE", f"{_S}/documents/{{document_id}}", documents.unlink_document, "Unlink a document", status=204),
    # messages, tasks, branches
    Route("POST", f"{_S}/messages", messages.send_message, "Send a message: starts a task",
          body=SendMessageBody, body_required=True, reply=SendResult, task="always", sse=True, token=True, query=(
              Param("queue", {"type": "boolean"}, "Wait behind a running task instead of answering 409."),
              _IF_MATCH, _IDEMPOTENCY_KEY, _RESUME)),
    Route("GET", f"{_S}/messages", messages.list_messages, "The active path, oldest first",
          reply=MessageList, token=True, query=(
              integer("limit", 100, 1, 1000), integer("offset", 0, 0, 10_000_000),
              Param("format", {"type": "string", "enum": ["text", "html"], "default": "text"},
                    "html adds content_html: the content as sanitized HTML (Markdown rendered)."))),
    Route("GET", f"{_S}/tree", messages.get_tree, "Every message, with parents and children", reply=TreeOut,
          token=True),
    Route("POST", f"{_S}/messages/{{message_id}}/edit", messages.edit_message, "Edit a user message (a new sibling)",
          body=EditBody, body_required=True, reply=SendResult, task="always", sse=True, token=True,
          query=(_IF_MATCH, _IDEMPOTENCY_KEY, _RESUME)),
    Route("POST", f"{_S}/messages/{{message_id}}/regenerate", messages.regenerate_message,
          "A new answer (a new sibling)",
          body=RegenerateBody, reply=SendResult, task="always", sse=True, token=True,
          query=(_IF_MATCH, _IDEMPOTENCY_KEY, _RESUME)),
    Route("POST", f"{_S}/navigate", messages.navigate, "Switch branch: make a message's newest leaf active",
          body=NavigateBody, body_required=True, reply=NavigateOut, token=True, query=(_IF_MATCH,)),
    Route("POST", f"{_S}/cancel", messages.cancel, "Stop the running task (the partial answer is kept)",
          reply=CancelOut, token=True),
    # tool calls that wait: for a person's approval, or for the frontend's result
    Route("POST", f"{_S}/tool-calls/{{call_id}}/approve", tools.approve_tool_call,
          "Approve a tool call that waits for approval: the task goes on", reply=ToolCallOut, token=True,
          tag="messages"),
    Route("POST", f"{_S}/tool-calls/{{call_id}}/deny", tools.deny_tool_call,
          "Deny a tool call that waits for approval (the reason goes to the model)",
          body=DenyBody, reply=ToolCallOut, token=True, tag="messages"),
    Route("POST", f"{_S}/tool-calls/{{call_id}}/result", tools.submit_tool_result,
          "The result of a client tool call: the task goes on",
          body=ToolResultBody, body_required=True, reply=ToolCallOut, token=True, tag="messages"),
    Route("GET", f"{_S}/checkpoints", messages.list_checkpoints, "Checkpoints, oldest first",
          reply=CheckpointList, token=True),
    Route("POST", f"{_S}/checkpoints/{{checkpoint_id}}/restore", messages.restore_checkpoint, "Restore a checkpoint",
          body=RestoreBody, reply=(SendResult, RestoreOut), task="with_hint", sse=True, token=True,
          query=(_IF_MATCH, _IDEMPOTENCY_KEY, _RESUME),
          description="Without a hint only the active leaf moves; with one, a task answers from there."),
    # streaming
    Route("GET", f"{_S}/stream", stream.stream, "The session's events: replay after an id, then live",
          sse=True, token=True, token_in_query=True, query=(
              Param("last_event_id", {"type": "integer", "minimum": 0}, "Resume after this event id."),
              Param("Last-Event-ID", {"type": "integer", "minimum": 0}, "Resume after this event id.", "header"),
          )),
    # webhooks
    Route("GET", "/v1/webhooks/deliveries", webhooks.list_deliveries,
          "Webhook deliveries, newest first: pending, delivered or failed, with attempts and last error",
          reply=DeliveryList, query=(
              Param("status", {"type": "string", "enum": ["pending", "delivered", "failed"]}),
              Param("endpoint", {"type": "string"}, "An endpoint's name ([webhooks.endpoints.NAME])."),
              integer("limit", 50, 1, 200, "Page size."),
              Param("cursor", {"type": "string"}, "The `next_cursor` of the previous page."),
          ), description="For an API key that does not act for an end user (the operator). Delivered and "
          "failed deliveries are kept for `[webhooks] retention_seconds`."),
    # operations
    Route("GET", "/healthz", ops.healthz, "Alive", reply=StatusOut, tag="operations", public=True),
    Route("GET", "/readyz", ops.readyz, "Ready: the store answers and the server accepts work", reply=ReadyOut,
          tag="operations", public=True, responses={"503": ReadyOut}),
    Route("GET", "/metrics", ops.metrics, "Prometheus metrics", reply=TEXT, tag="operations", public=True),
    Route("GET", "/openapi.json", docs.openapi_json, "This document", reply={"type": "object"}, tag="operations",
          public=True),
    Route("GET", "/docs", docs.docs_page, "The API, browsable", reply=HTML, tag="operations", public=True),
    Route("GET", "/docs/assets/{name}", docs.docs_asset, "A file of the browsable API page", reply=ANY,
          tag="operations", public=True, path_schemas={"name": {"type": "string", "enum": list(docs.DOC_ASSETS)}}),
    Route("GET", "/", webpage.chat_page, "The chat page", reply=HTML, tag="operations", public=True),
    Route("GET", "/web/{name}", webpage.web_file, "A file of the chat page (script, style, icon)", reply=ANY,
          tag="operations", public=True),
    # the protocol adapters: AI SDK, AG-UI, OpenAI Responses and Conversations
    *ai_sdk.ROUTES,
    *ag_ui.ROUTES,
    *openai_responses.ROUTES,
    *openai_conversations.ROUTES,
)


def add_routes(app: web.Application, routes: tuple[Route, ...] = ROUTES) -> None:
    """Register ``routes`` and keep ``app[ROUTE_OF]``, handler -> Route, for the middlewares."""
    # The routes of one path are added together, so each path is one resource of the router
    # (a 405 then names every method of the path in its Allow header).
    by_path: dict[str, list[Route]] = {}
    for route in routes:
        by_path.setdefault(route.path, []).append(route)
    # aiohttp tries the parametrised paths under one static prefix in the order they were added,
    # a regular expression each; a session's paths share "/v1/sessions", and the two that every
    # message takes (send, follow the stream) came some twenty tries in. They go first. The order
    # changes nothing else: a static path (/v1/sessions/search) is looked up under its own key
    # before these are tried, and no two of the parametrised ones match one URL.
    hot = {path: rank for rank, path in enumerate(_HOT_PATHS)}
    for path, group in sorted(by_path.items(), key=lambda item: hot.get(item[0], len(hot))):
        for route in group:
            if route.method == "GET":
                app.router.add_get(path, route.handler)  # and HEAD, as aiohttp does for GET
            else:
                app.router.add_route(route.method, path, route.handler)
    app[ROUTE_OF] = {route.handler: route for route in routes}
