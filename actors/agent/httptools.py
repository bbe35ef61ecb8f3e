"""HTTP tools: a tool that is an HTTP endpoint (``[tools.http.NAME]``).

sessiond sends the model's arguments as a JSON body (or, for GET, as query parameters) and gives
the model the answer's text. The address is checked against ``[tools] allow_hosts`` on every
call (default: none), so a tool can never make the server call an address the operator did not
list, whatever the URL says; a refused call is an error result that tells the model why. The
answer is read up to a bound, and cut like every tool's output.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgspec

from actors.agent.tools import Tool, ToolContext, ToolError

__all__ = ["HttpTool", "host_allowed", "http_tool"]

_MAX_READ = 1 << 20  # bytes of an answer read at most; the output is cut further for the model


class HttpTool(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    url: str
    method: str = "POST"
    description: str = ""
    parameters: dict[str, Any] = msgspec.field(default_factory=lambda: {"type": "object"})
    headers: dict[str, str] = msgspec.field(default_factory=dict)  # resolved values: never stored


def host_allowed(url: str, allow_hosts: Collection[str]) -> bool:
    """Whether ``url`` is http(s) to a host (or host:port) in ``allow_hosts``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    host = parts.hostname.lower()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    allowed = {h.lower() for h in allow_hosts}
    return host in allowed or f"{host}:{port}" in allowed


def http_tool(spec: HttpTool, allow_hosts: Collection[str], session: Any) -> Tool:
    """The tool; ``session()`` gives the aiohttp ClientSession its calls share."""

    async def run(args: dict[str, Any], ctx: ToolContext) -> str:
        if not host_allowed(spec.url, allow_hosts):
            host = urlsplit(spec.url).netloc or spec.url
            raise ToolError(f"the address {host} is not allowed ([tools] allow_hosts); the call was not made")
        method = spec.method.upper()
        kwargs: dict[str, Any] = {"headers": spec.headers, "allow_redirects": False}
        if method == "GET":
            kwargs["params"] = {
                k: v if isinstance(v, str) else msgspec.json.encode(v).decode() for k, v in args.items()
            }
        else:
            kwargs["json"] = args
        client: aiohttp.ClientSession = session()
        try:
            async with client.request(method, spec.url, **kwargs) as resp:
                body = await resp.content.read(_MAX_READ)
                text = body.decode(resp.charset or "utf-8", errors="replace")
                if resp.status >= 400:
                    raise ToolError(f"the tool's server answered {resp.status}: {text[:500]}")
                return text
        except aiohttp.ClientError as exc:
            raise ToolError(f"the tool's server could not be reached: {exc}") from None

    return Tool(spec.name, spec.description, spec.parameters, run)
