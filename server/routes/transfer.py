"""Whole-session operations: export, import, copy, merge."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from actors.core.commands import ExportSession, GetMessages, PatchSession
from actors.core.errors import InvalidRequestError, NotFoundError
from actors.core.export import MAX_LIST, MAX_MESSAGES, SessionExport, fork_export, merge_paths, remap_ids
from actors.core.records import ForkRef
from actors.core.replies import MessagePage
from server.appkeys import REGISTRY, STORE
from server.auth.principal import principal_of
from server.routes.agents import agent_for_session
from server.routes.common import ask, bool_query
from server.routes.tools import check_tools
from server.schema.common import decode_body, json_response
from server.schema.sessions import CopyBody, ForkBody, MergeBody, session_out

__all__ = ["copy_session", "export_session", "fork_session", "import_session", "merge_sessions"]

def _owner_fields(request: web.Request) -> dict[str, Any]:
    """A caller acting for an end user imports into that user's sessions only."""
    principal = principal_of(request)
    return {"end_user_id": principal.end_user_id} if principal.end_user_id is not None else {}


async def export_session(request: web.Request) -> web.Response:
    doc: SessionExport = await ask(request, ExportSession())
    return json_response(doc)


async def _check_references(request: web.Request, doc: SessionExport) -> None:
    """An import names only agents, tools and documents that exist here and that the caller
    could name when creating a session or linking a document (422 otherwise, alike for a
    document that does not exist and one the caller may not see)."""
    await agent_for_session(request, doc.session.agent_id)
    check_tools(request, doc.session.tools)
    principal = principal_of(request)
    store = request.app[STORE]
    for document_id in dict.fromkeys(doc.documents):
        found = await store.get_document(document_id)
        if found is None or not principal.can_read(found):
            raise InvalidRequestError(f"unknown document {document_id}")


async def import_session(request: web.Request) -> web.Response:
    doc = await decode_body(request, SessionExport, empty_ok=False)
    new_id = bool_query(request, "new_id")
    await _check_references(request, doc)
    # An end user always gets fresh ids: its own id, another user's and an unused one answer
    # alike, so an import cannot tell whether a session exists.
    if principal_of(request).end_user_id is not None:
        new_id = True
    record = await request.app[REGISTRY].import_session(doc, new_id=new_id, **_owner_fields(request))
    return json_response(session_out(record), status=201)


async def copy_session(request: web.Request) -> web.Response:
    body = await decode_body(request, CopyBody)
    doc: SessionExport = await ask(request, ExportSession())
    doc = remap_ids(doc)
    if body.title is not None:
        doc.session.title = body.title
    record = await request.app[REGISTRY].import_session(doc)
    return json_response(session_out(record), status=201)


async def fork_session(request: web.Request) -> web.Response:
    body = await decode_body(request, ForkBody, empty_ok=False)
    source_id = request.match_info["session_id"]
    doc: SessionExport = await ask(request, ExportSession())
    forked = fork_export(doc, body.message_id)
    if forked is None:
        raise NotFoundError(f"no message {body.message_id} in this session")
    if body.title is not None:
        forked.session.title = body.title
    # The source's owner, namespace, agent, tools, metadata, context and linked documents, as
    # the export carries them; the caller is authorized for the source, hence for its copy.
    record = await request.app[REGISTRY].import_session(
        forked, forked_from=ForkRef(source_id, body.message_id)
    )
    await ask(request, PatchSession(add_fork=ForkRef(record.id, body.message_id)))
    return json_response(session_out(record), status=201)


async def merge_sessions(request: web.Request) -> web.Response:
    body = await decode_body(request, MergeBody, empty_ok=False)
    if len(body.session_ids) < 2:
        raise InvalidRequestError("merge takes at least two session_ids")
    if len(set(body.session_ids)) != len(body.session_ids):
        raise InvalidRequestError("session_ids must be distinct")
    if len(body.session_ids) > MAX_LIST:
        raise InvalidRequestError(f"merge takes at most {MAX_LIST} session_ids")
    paths = []
    first = None
    total = 0
    for sid in body.session_ids:
        # As an import's: a merge (of merges, say) must not make a session of any size.
        page: MessagePage = await ask(request, GetMessages(limit=MAX_MESSAGES + 1 - total), sid)
        paths.append([node for node, _, _ in page.items])
        total += len(page.items)
        if total > MAX_MESSAGES:
            raise InvalidRequestError(f"the merged session would have more than {MAX_MESSAGES} messages")
        if first is None:
            first = await ask(request, ExportSession(), sid)
    assert first is not None
    registry = request.app[REGISTRY]
    owner = {"end_user_id": first.session.end_user_id, **_owner_fields(request)}
    record = registry.new_record(
        namespace=first.session.namespace,
        agent_id=first.session.agent_id,
        system_prompt=first.session.system_prompt,
        title=body.title,
        metadata={"merged_from": body.session_ids},
        **owner,
    )
    await registry.create_from_nodes(record, merge_paths(paths))
    return json_response(session_out(record), status=201)
