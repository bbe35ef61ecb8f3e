"""The FrameSink of an SSE response: frames written straight to its transport by the producer.

A caught-up stream hands its subscription a ``TransportSink`` (actors/session/fanout.py,
``follow``); the session's producer then offers it each new frame in the call that emitted
it. The sink collects what it is offered and writes it all at the end of the loop iteration,
in one ``writelines`` per transport (HTTP/1.1 chunked framing added, as aiohttp's own writer
does), so a token costs no wake-up of the stream's task and a burst of tokens one write.
One ``Flusher`` per app writes every sink that took frames in an iteration from a single
callback, rather than one callback per stream.

It refuses frames, and the stream goes back to writing them itself by its cursor (with its
write deadline), when the transport is closing or holds more than ``bound`` unsent bytes: a
reader that stops reading never makes the producer wait or buffer without bound.
"""

from __future__ import annotations

import asyncio

__all__ = ["Flusher", "TransportSink"]


class Flusher:
    """Writes the sinks that took frames, once per loop iteration, from one callback."""

    __slots__ = ("_dirty", "_loop")

    def __init__(self) -> None:
        self._dirty: list[TransportSink] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, sink: TransportSink) -> None:
        if not self._dirty:
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            loop.call_soon(self._run)
        self._dirty.append(sink)

    def _run(self) -> None:
        dirty, self._dirty = self._dirty, []
        for sink in dirty:
            sink.flush()


class TransportSink:
    """Writes offered frames to ``transport`` once per loop iteration (``chunked``: HTTP/1.1)."""

    __slots__ = ("_bound", "_chunked", "_flusher", "_loop", "_pending", "_transport", "last_write")

    def __init__(self, transport: asyncio.Transport, flusher: Flusher, *, chunked: bool, bound: int) -> None:
        self._transport = transport
        self._flusher = flusher
        self._chunked = chunked
        self._bound = bound
        self._loop = asyncio.get_running_loop()
        self._pending: list[bytes] = []
        self.last_write = 0.0  # loop time of the last write

    def writable(self) -> bool:
        """Whether offered frames would be taken now."""
        t = self._transport
        return not t.is_closing() and t.get_write_buffer_size() <= self._bound

    def offer(self, frames: list[bytes]) -> bool:
        t = self._transport
        if t.is_closing() or t.get_write_buffer_size() > self._bound:
            return False
        if not self._pending:
            self._flusher.add(self)
        self._pending += frames
        return True

    def flush(self) -> None:
        pending = self._pending
        if not pending:
            return
        self._pending = []
        self.last_write = self._loop.time()
        t = self._transport
        if t.is_closing():
            return  # the client left; it resumes by Last-Event-ID
        if self._chunked:
            size = 0
            for f in pending:
                size += len(f)
            t.writelines([b"%x\r\n" % size, *pending, b"\r\n"])
        elif len(pending) == 1:
            t.write(pending[0])
        else:
            t.writelines(pending)
