"""Admission control: past the configured load, new work is refused fast with 503 + Retry-After.

An overloaded event loop does not fail loudly: it serves everything a little later, and new
connections starve first (their first event arrives seconds late while established streams
still look fine). So the server counts what it carries, running model tasks and open SSE
streams, and refuses new work beyond ``[admission]`` limits instead of accepting it and
serving it late. Refusals cost one dictionary look-up and one small response.

What counts as new work:

* a request that starts a task (send, edit, regenerate, restore with a hint) while
  ``max_running_tasks`` tasks are running;
* a request that opens a stream (``GET .../stream``, or one of the above with
  ``"stream": true``) while ``max_open_streams`` streams are open;
* the same through a protocol adapter (server/protocols: each route's facts say whether it
  starts a task and whether it streams, always or when asked).

Everything else (reads, cancel, create, delete) is always admitted: it is cheap, and cancel
is how load goes down.

Both counts move at admission, before any await, so a burst of requests arriving together
cannot all take the last place (the registry's own count of running tasks moves only once
an actor has started the task: under load, a loop turn or more later).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler

from actors.core.errors import OverloadedError
from server.appkeys import REGISTRY
from server.config import AdmissionSection

if TYPE_CHECKING:
    from server.protocols.common import ProtocolRoute

__all__ = ["ADMISSION", "Admission", "admission_middleware"]


class Admission:
    """The limits, and what the server carries: open streams and admitted task requests."""

    __slots__ = ("open_streams", "refused", "settings", "task_requests")

    def __init__(self, settings: AdmissionSection) -> None:
        self.settings = settings
        self.open_streams = 0
        # Requests admitted to start a task and not answered yet. A streamed send is answered
        # when its task ends, a plain one when it has ended, so this follows the running tasks
        # the HTTP API started, but moves at admission, before the actor has started the task.
        self.task_requests = 0
        self.refused = 0

    def task_load(self, tasks_running: int) -> int:
        """Running tasks as admission sees them: the registry's count can lag a burst of
        admitted requests (not started yet) and can lead them (a client left mid-stream)."""
        return max(tasks_running, self.task_requests)


ADMISSION = web.AppKey("admission", Admission)

# (method, canonical route) of the requests that start a task.
_TASK_ROUTES = frozenset(
    {
        ("POST", "/v1/sessions/{session_id}/messages"),
        ("POST", "/v1/sessions/{session_id}/messages/{message_id}/edit"),
        ("POST", "/v1/sessions/{session_id}/messages/{message_id}/regenerate"),
        ("POST", "/v1/sessions/{session_id}/checkpoints/{checkpoint_id}/restore"),
    }
)
_RESTORE = "/v1/sessions/{session_id}/checkpoints/{checkpoint_id}/restore"
_STREAM_ROUTE = ("GET", "/v1/sessions/{session_id}/stream")


class _Peek(msgspec.Struct):
    """The two body fields admission needs; the handler still decodes and validates the body."""

    stream: bool = False
    hint: str | None = None


_peek = msgspec.json.Decoder(_Peek)


async def _peek_body(request: web.Request) -> _Peek:
    if not request.can_read_body:
        return _Peek()
    # request.read() caches the body, so the handler reads the same bytes again for free.
    try:
        return _peek.decode(await request.read())
    except msgspec.DecodeError:
        return _Peek()  # the handler answers the bad body with 400 or 422


@functools.cache
def _protocol_routes() -> dict[tuple[str, str], ProtocolRoute]:
    from server.protocols import protocol_routes  # its handlers import what imports this module

    return {(r.method, r.path): r for r in protocol_routes()}


async def _asks_stream(request: web.Request) -> bool:
    """``"stream": true`` in the body, or ``?stream=true``, on a route that streams when asked."""
    if request.query.get("stream", "").lower() in ("1", "true", "yes"):
        return True
    return request.method != "GET" and (await _peek_body(request)).stream


@web.middleware
async def admission_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    resource = request.match_info.route.resource
    if resource is None:
        passed: web.StreamResponse = await handler(request)
        return passed
    key = (request.method, resource.canonical)
    opens_stream = key == _STREAM_ROUTE
    protocol = _protocol_routes().get(key)
    if key in _TASK_ROUTES:
        body = await _peek_body(request)
        starts_task = key[1] != _RESTORE or bool(body.hint and body.hint.strip())
        opens_stream = body.stream
    elif protocol is not None:
        # The protocol adapters (server/protocols) count as the native routes they stand for.
        starts_task = protocol.task
        opens_stream = protocol.sse or (protocol.stream is not None and await _asks_stream(request))
    else:
        starts_task = False
    if not starts_task and not opens_stream:
        passed = await handler(request)
        return passed
    admission = request.app[ADMISSION]
    limits = admission.settings
    if starts_task and admission.task_load(request.app[REGISTRY].stats.tasks_running) >= limits.max_running_tasks:
        admission.refused += 1
        raise OverloadedError(
            f"{limits.max_running_tasks} tasks are running, the most this server takes at once",
            retry_after=limits.retry_after_seconds,
        )
    if opens_stream and admission.open_streams >= limits.max_open_streams:
        admission.refused += 1
        raise OverloadedError(
            f"{limits.max_open_streams} streams are open, the most this server holds at once",
            retry_after=limits.retry_after_seconds,
        )
    # Counted from admission to the end of the response, with no await between the check and
    # the increment, so requests arriving together cannot all take the last place.
    admission.task_requests += starts_task
    admission.open_streams += opens_stream
    try:
        response: web.StreamResponse = await handler(request)
        return response
    finally:
        admission.task_requests -= starts_task
        admission.open_streams -= opens_stream
