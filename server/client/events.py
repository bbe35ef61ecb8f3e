"""Session event streams for the Python client: SSE frames read off the wire, typed events,
and an iterator that reconnects with ``Last-Event-ID`` and checks ids strictly increase."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import aiohttp
import msgspec

from actors.core.events import TERMINAL_EVENTS, AnyEvent, TaskStarted, decode_event
from server.client.errors import ApiError, StreamProtocolError

__all__ = ["EventStream", "ServerEvent", "StreamSource"]


class StreamSource(Protocol):
    """What an EventStream needs of its client: a way to open the stream, and its limits."""

    max_reconnects: int
    reconnect_delay_ms: int
    max_reconnect_delay_ms: int
    max_event_bytes: int

    async def open_events(self, session_id: str, last_event_id: int | None) -> aiohttp.ClientResponse:
        """The raw response of ``GET /v1/sessions/{id}/stream`` (a problem raises ApiError)."""
        ...


# -- events -------------------------------------------------------------------------------


class ServerEvent(msgspec.Struct, frozen=True):
    """One event of a session stream: its id, its type, and the typed event (a dict when the
    type is newer than this client)."""

    id: int
    type: str
    event: AnyEvent | dict[str, Any]


def _parse_event(ev_id: int, ev_type: str, data: bytes) -> ServerEvent:
    try:
        event: AnyEvent | dict[str, Any] = decode_event(data)
    except msgspec.ValidationError:
        event = msgspec.json.decode(data)
    return ServerEvent(ev_id, ev_type, event)


# Network failures after which a stream reconnects.
_DEFAULT_BACKOFF_MS = 500  # before the server has sent a retry: of its own
_DROPPED = (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, asyncio.TimeoutError, ConnectionError)


class EventStream:
    """An async iterator over a session's events that reconnects by itself.

    After a drop it asks ``GET /v1/sessions/{id}/stream`` for what follows the last id it
    delivered. With ``task_id`` (or ``follow_task``: the first task it sees started) it stops
    after that task's terminal event; otherwise it follows the session until ``aclose()``.
    """

    def __init__(
        self,
        client: StreamSource,
        session_id: str,
        *,
        last_event_id: int | None = None,
        task_id: str | None = None,
        follow_task: bool = False,
        opener: Callable[[], Awaitable[aiohttp.ClientResponse]] | None = None,
    ) -> None:
        self._client = client
        self.session_id = session_id
        self.last_event_id = last_event_id
        self.task_id = task_id
        self._follow_task = follow_task
        self._opener = opener
        self.reconnects = 0
        self.done = False
        self._resp: aiohttp.ClientResponse | None = None
        self._iter: AsyncIterator[ServerEvent] | None = None

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> ServerEvent:
        if self._iter is None:
            self._iter = self._run()
        return await self._iter.__anext__()

    async def aclose(self) -> None:
        self.done = True
        if self._iter is not None:
            await self._iter.aclose()  # type: ignore[attr-defined]
        self._close_response()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def drop_connection(self) -> None:
        """Close the current connection now; the next event comes over a new one, by id."""
        self._close_response()

    def _close_response(self) -> None:
        if self._resp is not None:
            self._resp.close()

    async def _open(self) -> aiohttp.ClientResponse:
        if self._opener is not None:
            opener, self._opener = self._opener, None
            return await opener()
        return await self._client.open_events(self.session_id, self.last_event_id)

    def _backoff(self, failed: int, retry_ms: int | None) -> float:
        """Seconds to wait after ``failed`` attempts in a row that delivered nothing: the
        server's ``retry:`` (else half a second), doubled each time, up to the maximum."""
        base = retry_ms if retry_ms else _DEFAULT_BACKOFF_MS
        delay_ms: int = min(base * 2 ** (failed - 1), self._client.max_reconnect_delay_ms)
        return delay_ms / 1000

    async def _run(self) -> AsyncIterator[ServerEvent]:
        failed = 0  # attempts in a row that delivered no event
        retry_ms: int | None = None  # the server's retry: advice, once it sent one
        while not self.done:
            first_post = self._opener is not None
            try:
                self._resp = resp = await self._open()
            except (*_DROPPED, ApiError) as exc:
                if first_post:
                    raise  # the request itself may not have reached the server: never guess
                if isinstance(exc, ApiError) and exc.status != 503:
                    raise  # refused for good (401, 404, ...): waiting changes nothing
                failed += 1
                if failed > self._client.max_reconnects:
                    raise
                # 503 (overloaded, draining) says when to come back; a refused connection (a
                # server restarting) does not: back off from the first failure.
                retry_after = exc.retry_after if isinstance(exc, ApiError) else None
                await asyncio.sleep(retry_after if retry_after is not None else self._backoff(failed, retry_ms))
                self.reconnects += 1
                continue
            delivered = False
            try:
                async for frame in _frames(resp, self._client.max_event_bytes):
                    if frame.retry is not None:
                        retry_ms = frame.retry
                    if frame.data is None or frame.id is None:
                        continue
                    if self.last_event_id is not None and frame.id <= self.last_event_id:
                        raise StreamProtocolError(f"event id {frame.id} after {self.last_event_id}: ids must increase")
                    self.last_event_id = frame.id
                    delivered, failed = True, 0
                    event = _parse_event(frame.id, frame.event, frame.data)
                    if self._follow_task and self.task_id is None and isinstance(event.event, TaskStarted):
                        self.task_id = event.event.task_id
                    yield event
                    if (
                        self.task_id is not None
                        and event.type in TERMINAL_EVENTS
                        and getattr(event.event, "task_id", None) == self.task_id
                    ):
                        self.done = True
                        return
            except _DROPPED:
                pass  # resume below, by id
            finally:
                resp.close()
                self._resp = None
            if self.done:
                return
            # The server closed or the connection dropped: go on from the last id delivered, at
            # once after a stream that worked, with back-off after one that delivered nothing.
            if delivered:
                await asyncio.sleep(self._client.reconnect_delay_ms / 1000)
            else:
                failed += 1
                if failed > self._client.max_reconnects:
                    raise aiohttp.ClientConnectionError(f"stream of {self.session_id} dropped {failed} times in a row")
                await asyncio.sleep(self._backoff(failed, retry_ms))
            self.reconnects += 1


class _Frame(msgspec.Struct):
    id: int | None = None
    event: str = "message"
    data: bytes | None = None
    retry: int | None = None


async def _frames(resp: aiohttp.ClientResponse, max_bytes: int) -> AsyncIterator[_Frame]:
    """SSE frames off the wire (comments skipped), parsed per the HTML living standard."""
    buffer = b""
    frame = _Frame()
    data: list[bytes] = []
    async for chunk in resp.content.iter_any():
        buffer += chunk
        if b"\n" not in chunk:
            if len(buffer) > max_bytes:
                raise StreamProtocolError(f"an event larger than {max_bytes} bytes")
            continue
        *lines, buffer = buffer.split(b"\n")
        for raw in lines:
            line = raw.removesuffix(b"\r")
            if not line:
                if data:
                    frame.data = b"\n".join(data)
                    yield frame
                elif frame.retry is not None:
                    yield frame
                frame, data = _Frame(), []
                continue
            if line.startswith(b":"):
                continue
            name, _, value = line.partition(b":")
            value = value.removeprefix(b" ")
            if name == b"data":
                data.append(value)
            elif name == b"id":
                frame.id = int(value) if value.isdigit() else None
            elif name == b"event":
                frame.event = value.decode()
            elif name == b"retry" and value.isdigit():
                frame.retry = int(value)


# -- the client ---------------------------------------------------------------------------


