"""What the protocol adapters share: typed events out of the session's stream, and a writer
that translates them into another protocol's Server-Sent Events.

Every adapter is a thin edge over the same actors: it subscribes like the native stream does,
turns each session event into zero or more frames of its own protocol, and stops where the
task it follows ends. Nothing here knows a protocol.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Protocol

from aiohttp import web

from actors.core.commands import EditMessage, SendMessage
from actors.core.errors import InvalidRequestError
from actors.core.events import AnyEvent, StreamReset, decode_event
from actors.core.replies import TreeView
from actors.core.stream import CLOSED, HEARTBEAT, RESET, EventStream
from actors.core.tree import Node
from actors.ports import SessionRef
from server.auth.principal import SESSION
from server.config import StreamsSection
from server.routes.common import look_up
from server.sse import unframe

__all__ = [
    "ResumePoint",
    "Translator",
    "active_path",
    "bind_session",
    "event_of",
    "reconcile",
    "resume_point",
    "stream_translated",
    "sub_id_frames",
    "task_of",
]

_log = logging.getLogger("sessiond.protocols")

_PING = b": ping\n\n"
_CONGESTED = 64 * 1024


def event_of(frame: bytes) -> tuple[int, AnyEvent]:
    """The (event id, typed event) of one frame a subscription yields (server/sse.py made it)."""
    seq, data = unframe(frame)
    return seq, decode_event(data)


async def bind_session(request: web.Request, session_id: str) -> SessionRef:
    """The session a route names in its body (or inside another id) rather than as the path's
    ``{session_id}``: looked up and authorized once (404 for one the caller may not see), and
    kept as the auth middleware keeps a path's, for ``ask``, ``session_of`` and the quota."""
    ref = await look_up(request, session_id)
    request[SESSION] = ref
    return ref


def active_path(view: TreeView) -> list[Node]:
    nodes = {n.id: n for n in view.nodes}
    path: list[Node] = []
    at = view.active_leaf_id
    while at is not None:
        path.append(nodes[at])
        at = nodes[at].parent_id
    path.reverse()
    return path


def reconcile(
    view: TreeView, msgs: list[tuple[str, str]], content: str, *, edit: bool = False
) -> SendMessage | EditMessage:
    """What a client's message list, ending with the user message ``content``, asks for.

    A last message that is stored (by id) is edited. With ``edit`` (the client said it changes
    that message: the AI SDK's ``messageId``) one the client made, with an id of its own, is
    matched by its place on the active path, which the client's list follows message by
    message. Any other last message is new: it is sent after the message before it when that
    is an earlier stored answer (a branch), else after the active leaf.
    """
    nodes = {n.id: n for n in view.nodes}
    last_id = msgs[-1][0]
    i = len(msgs) - 1
    stored = nodes.get(last_id)
    if stored is None and edit:
        path = active_path(view)
        if i < len(path) and path[i].role == "user":
            stored = path[i]
        else:
            raise InvalidRequestError(f"message {last_id} is not a stored user message to edit")
    if stored is not None:
        if stored.role != "user":
            raise InvalidRequestError(f"message {last_id} is not a user message")
        return EditMessage(message_id=stored.id, content=content, stream=True)
    parent = nodes.get(msgs[i - 1][0]) if i > 0 else None
    if parent is not None and parent.role == "assistant" and parent.id != view.active_leaf_id:
        return SendMessage(content=content, parent_id=parent.id, stream=True)
    return SendMessage(content=content, stream=True)


ResumePoint = tuple[int, int | None]


def resume_point(request: web.Request) -> ResumePoint | None:
    """``Last-Event-ID`` (or ``?last_event_id=``) as sent by a stream with sub-ids: ``N`` (all
    of event N) or ``N.K`` (its first K frames)."""
    raw = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    if not raw:
        return None
    seq, _, k = raw.partition(".")
    if not seq.isdigit() or (k and not k.isdigit()):
        raise InvalidRequestError("Last-Event-ID must be an id this stream sent (N or N.K)")
    return int(seq), (int(k) if k else None)


def sub_id_frames(seq: int, datas: list[bytes], after: ResumePoint | None) -> bytes:
    """The frames one session event became, each with its own SSE id: the last ``N`` (the
    session event id), the ones before it ``N.1``, ``N.2``, ...; those up to ``after`` left out.

    So a client cut between two frames of one event resumes exactly by Last-Event-ID.
    """
    out: list[bytes] = []
    last = len(datas)
    for k, data in enumerate(datas, 1):
        if after is not None:
            at, upto = after
            if seq < at or (seq == at and (upto is None or k <= upto)):
                continue
        frame_id = b"%d" % seq if k == last else b"%d.%d" % (seq, k)
        out.append(b"id: %s\ndata: %s\n\n" % (frame_id, data))
    return b"".join(out)


def task_of(event: AnyEvent) -> str | None:
    return getattr(event, "task_id", None)


class Translator(Protocol):
    """One protocol's view of one task: fed session events in order, gives wire bytes."""

    finished: bool  # the task it follows ended: the stream closes after this batch

    def feed(self, seq: int, event: AnyEvent) -> bytes: ...

    def reset(self, seq: int, event: StreamReset) -> bytes:
        """The log no longer holds what the client asked for: say so and end."""
        ...


async def stream_translated(
    request: web.Request,
    sub: EventStream,
    settings: StreamsSection,
    translator: Translator,
    headers: Mapping[str, str],
) -> web.StreamResponse:
    """Write ``sub`` through ``translator`` until its task ends or the client leaves."""
    resp = web.StreamResponse(status=200, headers=dict(headers))
    try:
        await resp.prepare(request)
        transport = request.transport
        while not translator.finished:
            batch = await sub.next(settings.heartbeat_seconds, settings.max_batch_bytes)
            if batch is CLOSED:
                break
            if batch is HEARTBEAT:
                data = _PING
            elif batch is RESET:
                data = translator.reset(sub.cursor, StreamReset("last_event_id_too_old", sub.cursor))
                translator.finished = True
            else:
                assert isinstance(batch, list)
                parts: list[bytes] = []
                for frame in batch:
                    seq, event = event_of(frame)
                    parts.append(translator.feed(seq, event))
                    if translator.finished:
                        break
                data = b"".join(parts)
                if not data:
                    continue
            if transport is not None and transport.get_write_buffer_size() > _CONGESTED:
                async with asyncio.timeout(settings.write_timeout_seconds):
                    await resp.write(data)
            else:
                await resp.write(data)
    except (ConnectionResetError, TimeoutError):
        pass  # the client left or stopped reading; it resumes by its protocol's cursor
    except Exception:
        if not resp.prepared:
            raise
        _log.exception("stream of %s ended by an error", request.path)
    finally:
        sub.close()
    return resp
