"""The tools the configuration adds beyond the built-ins: MCP servers and HTTP tools.

Secrets are named, not written, in config.toml: each header or child variable names the
variable of sessiond's environment that holds it, read here at start (a missing one stops the
start with one sentence). Nothing of them is stored or answered by the API.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Mapping

import aiohttp
from aiohttp import web

from actors.agent.httptools import HttpTool, http_tool
from actors.agent.mcp import McpConnection, McpServer, mcp_tools
from actors.agent.tools import ToolBox
from server.config import Config, ConfigError

__all__ = ["setup_tools"]

log = logging.getLogger("sessiond.tools")


def _secrets(names: Mapping[str, str], where: str) -> dict[str, str]:
    """``{key: os.environ[variable]}`` for ``{key: variable}``."""
    out: dict[str, str] = {}
    for key, variable in names.items():
        value = os.environ.get(variable)
        if value is None:
            raise ConfigError(f"{where}: the environment variable {variable} (for {key}) is not set")
        out[key] = value
    return out


def setup_tools(app: web.Application, config: Config, toolbox: ToolBox) -> None:
    """Register the HTTP tools now and the MCP servers' tools at start; close them at exit."""
    tools = config.tools
    connections: list[McpConnection] = []
    for name, m in tools.mcp.items():
        where = f"tools.mcp.{name}"
        if "." in name or not name:
            raise ConfigError(f"{where}: an MCP server name cannot be empty or hold '.'")
        if bool(m.command) == bool(m.url):
            raise ConfigError(f"{where}: give either command (stdio) or url (streamable HTTP)")
        server = McpServer(
            name=name, command=m.command, args=list(m.args), env=_secrets(m.env, f"{where}.env"),
            url=m.url, headers=_secrets(m.headers, f"{where}.headers"),
        )
        # Listing at start may wait for the server to start (a process, its imports): longer
        # than a call may take.
        connections.append(McpConnection(server, connect_timeout=max(tools.timeout_seconds, 30.0)))
        toolbox.expect_namespace(name)
    sessions: list[aiohttp.ClientSession] = []
    for name, h in tools.http.items():
        if name in toolbox:
            raise ConfigError(f"tools.http.{name}: a tool of that name exists already")
        spec = HttpTool(
            name=name, url=h.url, method=h.method, description=h.description, parameters=dict(h.parameters),
            headers=_secrets(h.headers, f"tools.http.{name}.headers"),
        )
        toolbox.register(http_tool(spec, tools.allow_hosts, lambda: sessions[0]))

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        sessions.append(aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=tools.timeout_seconds)))
        for connection in connections:
            name = connection.server.name
            try:
                for tool in await mcp_tools(connection):
                    toolbox.register(tool)
            except Exception as exc:  # a server that is down must not keep sessiond from starting
                log.warning("MCP server %s: its tools are not available: %r", name, exc)
            toolbox.listed_namespace(name)
        yield
        for connection in connections:
            await connection.aclose()
        await sessions[0].close()

    app.cleanup_ctx.append(lifecycle)
