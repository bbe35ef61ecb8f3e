"""MCP servers as tools: one pooled connection per server, through the official ``mcp`` SDK.

A server is a command sessiond starts (stdio) or a streamable HTTP endpoint. Its tools are
listed when sessiond starts and registered as ``SERVER.TOOL``, with the server's JSON Schemas.
Each server has one connection, opened on first use and opened again after it dies (a crashed
process, a dropped HTTP session): a call that finds it dead is an error result for the model,
and the next call starts it again. A call that hangs is cut by the toolbox's timeout, like any
tool's; the connection stays usable for the next call.

The ``mcp`` Client is an anyio context manager that must be entered and left by one task, so
each connection is owned by a task of its own, which holds it open until it is closed or dies.
Secrets (child environment, HTTP headers) are given resolved by the caller, read from the
environment at start: they are never stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import msgspec

from actors.agent.tools import Tool, ToolContext, ToolError

__all__ = ["McpConnection", "McpServer", "mcp_tools"]

log = logging.getLogger("sessiond.mcp")


class McpServer(msgspec.Struct, frozen=True, kw_only=True):
    """Where an MCP server is: ``command`` (stdio) or ``url`` (streamable HTTP)."""

    name: str
    command: str = ""
    args: list[str] = msgspec.field(default_factory=list)
    env: dict[str, str] = msgspec.field(default_factory=dict)  # resolved values: never stored
    url: str = ""
    headers: dict[str, str] = msgspec.field(default_factory=dict)  # resolved values: never stored


class McpConnection:
    """The pooled connection to one MCP server (see the module docstring)."""

    def __init__(self, server: McpServer, *, connect_timeout: float) -> None:
        self.server = server
        self.connect_timeout = connect_timeout
        self._owner: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[Any] | None = None
        self._stop = asyncio.Event()
        self.starts = 0  # how many times a connection was opened (restarts show here)

    def _target(self) -> Any:
        from mcp.client.stdio import StdioServerParameters

        if self.server.command:
            return StdioServerParameters(command=self.server.command, args=self.server.args, env=self.server.env)
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        return streamable_http_client(self.server.url, http_client=httpx2.AsyncClient(headers=self.server.headers))

    async def _own(self, ready: asyncio.Future[Any], stop: asyncio.Event) -> None:
        from mcp import Client

        try:
            async with Client(self._target()) as client:
                if not ready.done():
                    ready.set_result(client)
                await stop.wait()
        except Exception as exc:
            if not ready.done():
                ready.set_exception(ToolError(f"the MCP server {self.server.name} could not be reached: {exc}"))
            else:
                log.warning("MCP server %s: the connection ended: %s", self.server.name, exc)
        finally:
            if not ready.done():
                ready.set_exception(ToolError(f"the MCP server {self.server.name} closed the connection"))

    async def _client(self) -> Any:
        if self._owner is None or self._owner.done():
            loop = asyncio.get_running_loop()
            self._ready = loop.create_future()
            self._stop = asyncio.Event()
            self.starts += 1
            self._owner = loop.create_task(self._own(self._ready, self._stop), name=f"mcp:{self.server.name}")
        assert self._ready is not None
        # Shielded: a caller's timeout must not cancel the start the next call waits for too.
        return await asyncio.shield(self._ready)

    def _drop(self) -> None:
        """Let the connection go (it failed): the next call opens a new one."""
        self._stop.set()
        self._owner = None

    async def list_tools(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(name, description, JSON Schema of the arguments) of every tool the server has."""
        async with asyncio.timeout(self.connect_timeout):
            client = await self._client()
            result = await client.list_tools()
        return [(t.name, t.description or "", dict(t.input_schema or {"type": "object"})) for t in result.tools]

    async def call(self, tool: str, arguments: dict[str, Any]) -> str:
        """The tool's text; ToolError (for the model) if it failed or the server did."""
        client = await self._client()
        try:
            result = await client.call_tool(tool, arguments)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the connection is gone (the process died, the HTTP session broke)
            self._drop()
            raise ToolError(f"the MCP server {self.server.name} failed during the call: {exc}") from None
        parts = [c.text for c in result.content if getattr(c, "text", None) is not None]
        text = "\n".join(parts)
        if not text and result.structured_content is not None:
            text = msgspec.json.encode(result.structured_content).decode()
        if result.is_error:
            raise ToolError(text or f"the tool {tool} failed")
        return text

    async def aclose(self) -> None:
        owner = self._owner
        self._drop()
        if owner is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(5):
                    await owner
            if not owner.done():
                owner.cancel()


async def mcp_tools(connection: McpConnection) -> list[Tool]:
    """The server's tools as this server's tools, named ``SERVER.TOOL``."""
    listed = await connection.list_tools()

    def bound(name: str) -> Any:
        async def run(args: dict[str, Any], ctx: ToolContext) -> str:
            return await connection.call(name, args)

        return run

    prefix = connection.server.name
    return [Tool(f"{prefix}.{name}", description, schema, bound(name)) for name, description, schema in listed]
