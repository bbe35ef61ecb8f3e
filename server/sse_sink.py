"""The FrameSink of an SSE response: frames written straight to its transport by the session.

A caught-up stream hands its subscription a ``TransportSink`` (actors/session/fanout.py,
``follow``). At the end of each loop iteration in which the session emitted events, the
session's hub offers every such sink all the frames it has not sent yet, and the sink writes
them in one ``writelines`` (with the HTTP/1.1 chunked framing aiohttp's own writer would
add): a token costs no wake-up of the stream's task, and a burst of tokens one write.

It refuses frames, and the stream goes back to writing them itself by its cursor (with its
write deadline), when the transport is closing or holds more than ``bound`` unsent bytes: a
reader that stops reading never makes the session wait or buffer without bound.
"""

from __future__ import annotations

import asyncio

__all__ = ["TransportSink"]


class TransportSink:
    """Writes offered frames to ``transport`` (``chunked``: as HTTP/1.1 chunks) while it keeps up."""

    __slots__ = ("_bound", "_chunked", "_loop", "_transport", "last_write")

    def __init__(self, transport: asyncio.Transport, *, chunked: bool, bound: int) -> None:
        self._transport = transport
        self._chunked = chunked
        self._bound = bound
        self._loop = asyncio.get_running_loop()
        self.last_write = 0.0  # loop time of the last write

    def writable(self) -> bool:
        """Whether offered frames would be written now."""
        t = self._transport
        return not t.is_closing() and t.get_write_buffer_size() <= self._bound

    def offer(self, frames: list[bytes]) -> bool:
        if not self.writable():
            return False
        self.last_write = self._loop.time()
        t = self._transport
        if self._chunked:
            t.writelines([b"%x\r\n" % sum(map(len, frames)), *frames, b"\r\n"])
        elif len(frames) == 1:
            t.write(frames[0])
        else:
            t.writelines(frames)
        return True
