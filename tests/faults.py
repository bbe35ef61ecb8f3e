"""Faults for cluster tests: a private redis-server the test starts, stops and restarts."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from pathlib import Path

import redis.asyncio as aioredis

__all__ = ["CuttingProxy", "PrivateRedis", "free_port"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """``redis-server`` on a port of its own, its dump file (if any) in ``dir``."""

    def __init__(self, dir: Path) -> None:
        self.dir = dir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        dir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._spawn()
        # A process must come up: poll, bounded.
        deadline = time.monotonic() + 10
        conn = aioredis.from_url(self.url)
        try:
            while True:
                try:
                    await conn.ping()
                    return
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.02)
        finally:
            await conn.aclose()

    def _spawn(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.dir), "--dbfilename", "dump.rdb",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def kill(self) -> None:
        """SIGKILL: what it held is gone (nothing is saved)."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    async def shutdown_saving(self) -> None:
        """Stop after writing every key to the dump file, so the next start has them back."""
        conn = aioredis.from_url(self.url)
        try:
            await conn.shutdown(save=True)
        except Exception:
            pass  # the connection dies with the server, as it should
        finally:
            await conn.aclose()
        assert self.proc is not None
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class CuttingProxy:
    """A TCP proxy on 127.0.0.1 to ``target``: ``cut()`` drops every connection and refuses new
    ones (an outage of what is behind it), ``restore()`` takes connections again. ``hold()``
    keeps what clients send from reaching the target (a write stuck on its way) until
    ``release()``; ``held`` is set once something was held back."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.held = asyncio.Event()

    def hold(self) -> None:
        self.held.clear()
        self._flowing.clear()

    def release(self) -> None:
        self._flowing.set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._pipes |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, upstream: bool) -> None:
            try:
                while data := await src.read(65536):
                    if upstream and not self._flowing.is_set():
                        self.held.set()
                        await self._flowing.wait()
                    dst.write(data)
                    await dst.drain()
            except (OSError, RuntimeError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))
        self._pipes -= {writer, up_writer}

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._pipes):
            w.transport.abort()
        self._pipes.clear()
        await self._server.wait_closed()
        self._server = None

    async def restore(self) -> None:
        await self.start()

    async def aclose(self) -> None:
        if self._server is not None:
            await self.cut()
