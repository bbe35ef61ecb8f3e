"""A request that may start a model task or open a stream: admitted, counted, asked, answered.

The handlers of send, edit, regenerate and restore decode their body and build their command,
then hand it to ``start_task``; whether it starts a task is the command's own rule
(``TaskCommand.starts_task``: a restore starts one only with a hint), and whether it opens a
stream is the body's ``stream``.
Admission is checked here, with the body decoded once and no await between the check and the
count (server/admission.py says why).
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractContextManager
from typing import Any

import msgspec
from aiohttp import web

from actors.core.commands import TaskCommand
from actors.core.errors import NotFoundError, RateLimitedError
from actors.core.replies import TaskHandle
from server.appkeys import ADMISSION, CONFIG, REGISTRY
from server.quota import turn_quota
from server.routes.common import ask
from server.routing import route_of
from server.schema.common import json_response
from server.schema.messages import RestoreOut, SendResult, message_out
from server.sse import stream_events

__all__ = ["admitted", "admitted_command", "start_task", "task_response"]


def admitted(request: web.Request, *, starts_task: bool, opens_stream: bool) -> AbstractContextManager[None]:
    """This request counted as new work for the ``with`` body (503 ``overloaded`` past the limits)."""
    return request.app[ADMISSION].enter(
        request.app[REGISTRY].stats.tasks_running, starts_task=starts_task, opens_stream=opens_stream
    )


def admitted_command(
    request: web.Request, command: TaskCommand[Any], *, opens_stream: bool | None = None
) -> AbstractContextManager[None]:
    """``admitted`` for ``command`` on this request's route: it starts a task when the route may
    and the command does (``Route.starts_task``); it opens a stream when it asks for its events,
    unless ``opens_stream`` says otherwise (a protocol adapter asks for the events of every task
    it starts, and streams them only when its client asked)."""
    route = route_of(request)
    assert route is not None
    streams = command.stream if opens_stream is None else opens_stream
    return admitted(request, starts_task=route.starts_task(command), opens_stream=streams)


async def start_task(request: web.Request, command: TaskCommand[TaskHandle | str]) -> web.StreamResponse:
    """Admit, count against the quota and ask ``command``; answer the task's stream or result."""
    route = route_of(request)
    assert route is not None
    with admitted_command(request, command):
        try:
            quota = await turn_quota(request, charge=route.starts_task(command))  # 429 before the session sees it
        except RateLimitedError as limited:
            if command.idempotency_key is None:
                raise
            result = await _repeat_only(request, command, limited)  # a repeat starts nothing: no 429
        else:
            result = await quota.ask(command)
        if isinstance(result, TaskHandle):
            return await task_response(request, result)
    return json_response(RestoreOut(result))  # a restore without a hint: only the active leaf moved


async def _repeat_only(
    request: web.Request, command: TaskCommand[TaskHandle | str], limited: RateLimitedError
) -> TaskHandle | str:
    """The task an over-the-limit request repeats, or the 429 it was given."""
    try:
        return await ask(request, msgspec.structs.replace(command, repeat_only=True))
    except NotFoundError:
        raise limited from None


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
