"""Tools: the ones this server has, and the ones active in a session."""

from __future__ import annotations

from typing import Any

import msgspec

from server.schema.common import RequestBody

__all__ = ["SessionTools", "SessionToolsBody", "ToolList", "ToolOut"]


class ToolOut(msgspec.Struct):
    name: str
    description: str
    parameters: dict[str, Any]


class ToolList(msgspec.Struct):
    items: list[ToolOut]


class SessionToolsBody(RequestBody):
    tools: list[str]


class SessionTools(msgspec.Struct):
    tools: list[str]
