"""Headless Chromium (Debian's ``chromium``) driven by Playwright, for the chat page tests.

Playwright never downloads a browser here: it starts the system's Chromium by path, on a fresh
profile directory that Playwright makes and removes. Starting Playwright and Chromium takes
seconds, so the tests of a module share one browser (in that module's event loop) and each test
gets a context of its own: its own storage, its own tabs.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from playwright.async_api import Browser, async_playwright

from server.app import make_app
from tests.conftest import HEADERS, make_config

__all__ = ["CHROMIUM_ARGS", "CuttingProxy", "ServerFactory", "chromium", "chromium_path", "servers"]

CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

ServerFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


def chromium_path() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail("the chat page tests need Debian's chromium: apt-get install -y chromium (.ci/run does it)")
    return path


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


@asynccontextmanager
async def servers(data_dir: Path) -> AsyncIterator[ServerFactory]:
    """Start real servers (make_app on 127.0.0.1:0) in the running loop, as conftest's
    ``make_client`` does; sections override the test config. Closed on exit."""
    started: list[TestClient[Any, Any]] = []

    async def start(**sections: dict[str, Any]) -> TestClient[Any, Any]:
        app = make_app(make_config(data_dir, **sections))
        client: TestClient[Any, Any] = TestClient(TestServer(app), headers=HEADERS)
        await client.start_server()
        started.append(client)
        return client

    try:
        yield start
    finally:
        while started:
            await started.pop().close()


class CuttingProxy:
    """A TCP proxy in front of a server that can drop every open connection, as a flaky network
    would, and turn away the next stream requests with a 503, as a busy node might."""

    def __init__(self, port: int) -> None:
        self._target = port
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._accepted: set[asyncio.StreamWriter] = set()  # every client connection still open
        self.refuse_streams = 0
        self.refused = 0

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._accepted.add(writer)
        try:
            first = await reader.read(65536)
            if not first:
                return
            if self.refuse_streams and first.startswith(b"GET ") and b"/stream" in first.split(b"\r\n", 1)[0]:
                self.refuse_streams -= 1
                self.refused += 1
                writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                await writer.drain()
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)
            self._links.update((writer, up_writer))
            up_writer.write(first)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            writer.close()
            self._handlers.discard(task)
            self._accepted.discard(writer)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._links.discard(dst)
            dst.close()

    def cut(self) -> int:
        """Drop every open connection now; how many sockets were aborted."""
        links = list(self._links)
        self._links.clear()
        for w in links:
            w.transport.abort()
        return len(links)

    async def aclose(self) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        # A connection that has sent nothing yet (a browser opens spare ones) waits in its first
        # read, and would keep this waiting for ever: it is dropped too.
        for w in list(self._accepted):
            w.transport.abort()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()
