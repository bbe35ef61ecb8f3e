"""Messages, tasks and branches: send, history, tree, edit, regenerate, navigate, cancel,
checkpoints and restore."""

from __future__ import annotations

from aiohttp import web

from actors.core.commands import (
    CancelTask,
    EditMessage,
    GetMessages,
    GetTree,
    ListCheckpoints,
    Navigate,
    RegenerateMessage,
    RestoreCheckpoint,
    SendMessage,
)
from actors.core.errors import InvalidRequestError
from actors.core.replies import MessagePage, TreeView
from server.markup import markdown_html
from server.routes.common import ask, bool_query, idempotency_key, if_match, int_query, last_event_id
from server.routes.tools import check_client_tools
from server.schema.common import decode_body, json_response
from server.schema.messages import (
    CancelOut,
    CheckpointList,
    EditBody,
    MessageList,
    NavigateBody,
    NavigateOut,
    RegenerateBody,
    RestoreBody,
    SendMessageBody,
    TreeOut,
    checkpoint_out,
    message_out,
    tree_node_out,
)
from server.tasks import start_task

__all__ = [
    "cancel",
    "edit_message",
    "get_tree",
    "list_checkpoints",
    "list_messages",
    "navigate",
    "regenerate_message",
    "restore_checkpoint",
    "send_message",
]

async def send_message(request: web.Request) -> web.StreamResponse:
    body = await decode_body(request, SendMessageBody, empty_ok=False)
    command = SendMessage(
        content=body.content,
        parent_id=body.parent_id,
        stream=body.stream,
        queue=bool_query(request, "queue"),
        if_match=if_match(request),
        client_tools=check_client_tools(body.client_tools),
        idempotency_key=idempotency_key(request, body.client_message_id),
        last_event_id=last_event_id(request),
    )
    return await start_task(request, command)


async def list_messages(request: web.Request) -> web.Response:
    page: MessagePage = await ask(
        request,
        GetMessages(
            limit=int_query(request, "limit"),
            offset=int_query(request, "offset"),
        ),
    )
    fmt = request.query.get("format", "text")
    if fmt not in ("text", "html"):
        raise InvalidRequestError("format must be text or html")
    items = [message_out(*item) for item in page.items]
    if fmt == "html":
        # Rendered where it is asked for, never stored: the content stays the source of truth.
        for item in items:
            if item.status != "running" and item.role != "system":
                item.content_html = markdown_html(item.content)
    return json_response(MessageList(items, page.usage, page.has_more, page.total))


async def get_tree(request: web.Request) -> web.Response:
    view: TreeView = await ask(request, GetTree())
    return json_response(TreeOut([tree_node_out(n) for n in view.nodes], view.active_leaf_id))


async def edit_message(request: web.Request) -> web.StreamResponse:
    body = await decode_body(request, EditBody, empty_ok=False)
    command = EditMessage(
        message_id=request.match_info["message_id"], content=body.content, stream=body.stream,
        if_match=if_match(request), idempotency_key=idempotency_key(request, body.client_message_id),
        last_event_id=last_event_id(request),
    )
    return await start_task(request, command)


async def regenerate_message(request: web.Request) -> web.StreamResponse:
    body = await decode_body(request, RegenerateBody)
    command = RegenerateMessage(
        message_id=request.match_info["message_id"], stream=body.stream, if_match=if_match(request),
        idempotency_key=idempotency_key(request, body.client_message_id), last_event_id=last_event_id(request),
    )
    return await start_task(request, command)


async def navigate(request: web.Request) -> web.Response:
    body = await decode_body(request, NavigateBody, empty_ok=False)
    items = await ask(request, Navigate(message_id=body.message_id, if_match=if_match(request)))
    return json_response(NavigateOut([message_out(*item) for item in items]))


async def cancel(request: web.Request) -> web.Response:
    task_id = await ask(request, CancelTask())
    return json_response(CancelOut(task_id, "cancelled"))


async def list_checkpoints(request: web.Request) -> web.Response:
    checkpoints = await ask(request, ListCheckpoints())
    return json_response(CheckpointList([checkpoint_out(c) for c in checkpoints]))


async def restore_checkpoint(request: web.Request) -> web.StreamResponse:
    body = await decode_body(request, RestoreBody)
    command = RestoreCheckpoint(
        checkpoint_id=request.match_info["checkpoint_id"], hint=body.hint, stream=body.stream,
        if_match=if_match(request), idempotency_key=idempotency_key(request, body.client_message_id),
        last_event_id=last_event_id(request),
    )
    return await start_task(request, command)
