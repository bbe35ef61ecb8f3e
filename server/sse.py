"""Server-Sent Events: the wire format of session events, and the replay-then-live stream.

The core keeps each event as (seq, type, data), data being the event's JSON; ``frame`` is how
such an event goes on the wire, and the session's EventLog is given it so that an event is
framed once, however many subscribers and replays send it. A stream writes one batch of
queued frames per write, with heartbeats when there is nothing to send; once it is caught up,
the session writes its frames into the transport itself (server/sse_sink.py) until the stream
falls behind, its transport congests, or a heartbeat or credential check is due.
"""

from __future__ import annotations

import asyncio
import logging
import typing
from collections.abc import Awaitable, Callable

from aiohttp import HttpVersion11, web

from actors.core.events import AnyEvent, StreamClosed, StreamReset, encode_event
from actors.core.stream import CLOSED, HEARTBEAT, RESET, EventStream
from server.config import StreamsSection
from server.sse_sink import TransportSink

_log = logging.getLogger("sessiond.sse")

__all__ = ["SSE_HEADERS", "Recheck", "frame", "stream_events", "unframe"]

Recheck = Callable[[], Awaitable[StreamClosed | None]]
"""Whether the stream's credential still holds: None, or the event that ends the stream."""

SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
    "Connection": "keep-alive",
}

_PING = b": ping\n\n"

# The lines between the id and the data, per event type: every type is known up front, so the
# per-token path formats one bytes object and looks up one dict entry.
_HEADS: dict[str, bytes] = {
    tag: b"\nevent: %s\ndata: " % tag.encode()
    for tag in (cls.__struct_config__.tag for cls in typing.get_args(AnyEvent))
    if isinstance(tag, str)
}


def frame(seq: int, type_: str, data: bytes) -> bytes:
    """The SSE frame of one event: its id, its type as the ``event:`` name, its JSON as data.

    ``data`` never holds a raw newline (it is JSON), so one ``data:`` line carries it.
    """
    head = _HEADS.get(type_)
    if head is None:
        head = b"\nevent: %s\ndata: " % type_.encode()
    return b"id: %d%s%s\n\n" % (seq, head, data)


def unframe(frame_: bytes) -> tuple[int, bytes]:
    """The (seq, data) of one frame ``frame`` made, for an edge that speaks another protocol
    and translates events out of the frames a subscription yields (server/protocols)."""
    seq, data = 0, b""
    for line in frame_.split(b"\n"):
        if line.startswith(b"id: "):
            seq = int(line[4:])
        elif line.startswith(b"data: "):
            data = line[6:]
    return seq, data


class _SseResponse(web.StreamResponse):
    # aiohttp keeps the headers until the first body write and sends them with it: a stream
    # starts with one write (headers, retry line and whatever is already queued), not three.
    _send_headers_immediately = False

# Past this much unsent data the client is behind: bound the wait for it to drain.
_CONGESTED = 64 * 1024
# A timer may fire this much before its time.
_EARLY = 0.002


async def stream_events(
    request: web.Request,
    sub: EventStream,
    settings: StreamsSection,
    reset_cursor: Callable[[], int],
    recheck: Recheck | None = None,
) -> web.StreamResponse:
    """Write ``sub`` to the client until it closes, the client leaves, a write stalls, or
    ``recheck`` says the credential that opened it no longer holds.

    The credential is checked again at each heartbeat, and at least every heartbeat interval
    while events flow (a stream busy with deltas sends no heartbeat): a revoked or expired
    token stops receiving within one interval, with a ``stream.closed`` event saying why.
    """
    resp = _SseResponse(status=200, headers=SSE_HEADERS)
    chunked = request.version >= HttpVersion11
    if chunked:
        # Said up front (aiohttp would choose it too), so that the direct writes below know
        # their framing from the response itself.
        resp.enable_chunked_encoding()
    loop = asyncio.get_running_loop()
    next_check = loop.time() + settings.heartbeat_seconds
    try:
        await resp.prepare(request)
        retry = b"retry: %d\n\n" % settings.retry_ms
        if not sub.ready():
            # Nothing to send yet: the client gets its headers and the retry line now.
            await resp.write(retry)
            retry = b""
        # Otherwise the first next() returns at once and the retry line goes with its batch.
        transport = request.transport
        sink = (
            TransportSink(transport, chunked=resp.chunked, bound=settings.direct_write_bytes)
            if transport is not None and settings.direct_write_bytes > 0 and request.method != "HEAD"
            else None
        )
        idle = False
        last_sent = loop.time()  # when this stream last wrote: a heartbeat is due a period later
        while True:
            if recheck is not None and (idle or loop.time() >= next_check):
                # Checked before taking a batch, so the id below is the last event this client got.
                next_check = loop.time() + settings.heartbeat_seconds
                closed = await recheck()
                if closed is not None:
                    # The id is where the stream stood: a client with a fresh token resumes there.
                    await resp.write(retry + frame(sub.cursor, "stream.closed", encode_event(closed)))
                    break
            if sink is not None and not retry and sink.writable():
                # Caught up (or else None at once): the session writes into the transport
                # until this stream must write by itself again, or a heartbeat or check is due.
                due = last_sent + settings.heartbeat_seconds
                if recheck is not None:
                    due = min(due, next_check)
                handed = await sub.follow(sink, max(0.0, due - loop.time()))
                if handed is not None:
                    if handed:
                        last_sent = sink.last_write
                    idle = not sub.ready() and loop.time() >= last_sent + settings.heartbeat_seconds - _EARLY
                    if idle:
                        await resp.write(_PING)
                        last_sent = loop.time()
                    continue
            batch = await sub.next(settings.heartbeat_seconds, settings.max_batch_bytes)
            if batch is CLOSED:
                if retry:
                    await resp.write(retry)
                break
            idle = batch is HEARTBEAT
            if idle:
                data = _PING
            elif batch is RESET:
                # The id carried by the reset is where the stream goes on from: a client that
                # refetched history resumes by it like by any other id.
                cursor = reset_cursor()
                data = frame(cursor, "stream.reset", encode_event(StreamReset("last_event_id_too_old", sub.cursor)))
                sub.skip_to(cursor)
            else:
                assert isinstance(batch, list)
                data = batch[0] if len(batch) == 1 else b"".join(batch)
            if retry:
                data = retry + data
                retry = b""
            if transport is not None and transport.get_write_buffer_size() > _CONGESTED:
                async with asyncio.timeout(settings.write_timeout_seconds):
                    await resp.write(data)
            else:
                await resp.write(data)
            last_sent = loop.time()
    except (ConnectionResetError, TimeoutError):
        pass  # the client left or stopped reading; it resumes by Last-Event-ID
    except Exception:
        if not resp.prepared:
            raise  # no byte sent yet: the problem middleware still answers with a status
        # Past the headers no status can be sent: end the stream; the client resumes by id.
        _log.exception("stream of %s ended by an error", request.path)
    finally:
        sub.close()
    return resp
