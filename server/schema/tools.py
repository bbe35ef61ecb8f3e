"""Tools: the ones this server has, the ones active in a session, the frontend's own, and
the decisions on tool calls that wait (approve, deny, a client tool's result)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from server.schema.common import RequestBody

__all__ = [
    "ClientToolBody",
    "DenyBody",
    "SessionTools",
    "SessionToolsBody",
    "ToolCallOut",
    "ToolList",
    "ToolOut",
    "ToolResultBody",
]


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


class ClientToolBody(RequestBody):
    """A tool the frontend runs: the model may call it; the task waits for its result."""

    name: Annotated[str, msgspec.Meta(pattern="^[A-Za-z0-9_-]{1,64}$")]
    description: Annotated[str, msgspec.Meta(max_length=2000)] = ""
    parameters: dict[str, Any] = msgspec.field(default_factory=lambda: {"type": "object"})  # JSON Schema


class DenyBody(RequestBody):
    reason: Annotated[str, msgspec.Meta(max_length=2000)] | None = None  # given to the model


class ToolResultBody(RequestBody):
    output: str
    is_error: bool = False


class ToolCallOut(msgspec.Struct):
    task_id: str
    call_id: str
    status: Literal["approved", "denied", "submitted"]
