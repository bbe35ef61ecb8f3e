"""Messages, tasks and branches: send, history, tree, edit, regenerate, navigate, cancel,
checkpoints and restore."""

from __future__ import annotations

import asyncio

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
from actors.core.replies import TaskHandle
from server.appkeys import CONFIG
from server.quota import turn_quota
from server.routes.common import ask, bool_query, if_match, int_query
from server.schema.wire import (
    CheckpointList,
    EditBody,
    MessageList,
    NavigateBody,
    RegenerateBody,
    RestoreBody,
    SendMessageBody,
    SendResult,
    TreeNodeOut,
    TreeOut,
    checkpoint_out,
    decode_body,
    json_response,
    message_out,
)
from server.sse import stream_events

__all__ = ["routes", "task_response"]

routes = web.RouteTableDef()


async def task_response(request: web.Request, handle: TaskHandle) -> web.StreamResponse:
    """The SSE stream of the task (``stream: true``) or, once it ends, its result."""
    if handle.subscription is not None:
        sub = handle.subscription
        return await stream_events(request, sub, request.app[CONFIG].streams, sub.reset_cursor)
    # Shielded: a client that leaves must not cancel the future other code may await.
    outcome = await asyncio.shield(handle.done)
    return json_response(
        SendResult(
            message=message_out(outcome.message, outcome.sibling_index, outcome.sibling_count),
            task_id=outcome.task_id,
            usage=outcome.usage,
            model=outcome.model,
            status=outcome.status,
            error=outcome.error,
        )
    )


@routes.post("/v1/sessions/{session_id}/messages")
async def send_message(request: web.Request) -> web.StreamResponse:
    body = await decode_body(request, SendMessageBody, empty_ok=False)
    quota = await turn_quota(request)  # 429 before the session sees it
    handle = await quota.ask(
        SendMessage(
            content=body.content,
            parent_id=body.parent_id,
            stream=body.stream,
            queue=bool_query(request, "queue"),
            if_match=if_match(request),
        ),
    )
    return await task_response(request, handle)


@routes.get("/v1/sessions/{session_id}/messages")
async def list_messages(request: web.Request) -> web.Response:
    page = await ask(
        request,
        GetMessages(
            limit=int_query(request, "limit", 100, 1, 1000),
            offset=int_query(request, "offset", 0, 0, 10_000_000),
        ),
    )
    return json_response(
        MessageList([message_out(*item) for item in page.items], page.usage, page.has_more, page.total)
    )


@routes.get("/v1/sessions/{session_id}/tree")
async def get_tree(request: web.Request) -> web.Response:
    view = await ask(request, GetTree())
    nodes = [
        TreeNodeOut(n.id, n.parent_id, n.role, n.content, n.created_at, n.status, list(n.children), n.model, n.usage)
        for n in view.nodes
    ]
    return json_response(TreeOut(nodes, view.active_leaf_id))


@routes.post("/v1/sessions/{session_id}/messages/{message_id}/edit")
async def edit_message(request: web.Request) -> web.StreamResponse:
    body = await decode_body(request, EditBody, empty_ok=False)
    quota = await turn_quota(request)
    handle = await quota.ask(
        EditMessage(
            message_id=request.match_info["message_id"], content=body.content, stream=body.stream,
            if_match=if_match(request),
        ),
    )
    return await task_response(request, handle)


@routes.post("/v1/sessions/{session_id}/messages/{message_id}/regenerate")
async def regenerate_message(request: web.Request) -> web.StreamResponse:
    body = await decode_body(request, RegenerateBody)
    quota = await turn_quota(request)
    handle = await quota.ask(
        RegenerateMessage(message_id=request.match_info["message_id"], stream=body.stream, if_match=if_match(request)),
    )
    return await task_response(request, handle)


@routes.post("/v1/sessions/{session_id}/navigate")
async def navigate(request: web.Request) -> web.Response:
    body = await decode_body(request, NavigateBody, empty_ok=False)
    items = await ask(request, Navigate(message_id=body.message_id, if_match=if_match(request)))
    return json_response({"items": [message_out(*item) for item in items]})


@routes.post("/v1/sessions/{session_id}/cancel")
async def cancel(request: web.Request) -> web.Response:
    task_id = await ask(request, CancelTask())
    return json_response({"task_id": task_id, "status": "cancelled"})


@routes.get("/v1/sessions/{session_id}/checkpoints")
async def list_checkpoints(request: web.Request) -> web.Response:
    checkpoints = await ask(request, ListCheckpoints())
    return json_response(CheckpointList([checkpoint_out(c) for c in checkpoints]))


@routes.post("/v1/sessions/{session_id}/checkpoints/{checkpoint_id}/restore")
async def restore_checkpoint(request: web.Request) -> web.StreamResponse:
    body = await decode_body(request, RestoreBody)
    command = RestoreCheckpoint(
        checkpoint_id=request.match_info["checkpoint_id"], hint=body.hint, stream=body.stream,
        if_match=if_match(request),
    )
    quota = await turn_quota(request, charge=command.starts_task)
    result = await quota.ask(command)
    if isinstance(result, TaskHandle):
        return await task_response(request, result)
    return json_response({"active_leaf_id": result})
