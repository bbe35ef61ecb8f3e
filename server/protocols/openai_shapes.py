"""The OpenAI API's objects built from sessiond's: responses, items, conversations, errors
(``OPENAI_ERRORS``, the error shape of every /openai/v1 route).

A response is a task: its id names the session and the task (``resp_<session>.<task>``), so
it is found without an index; its output is the task's reply message, its input the user
message the task answered. A conversation is a session; its items are the active path.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

import msgspec
from aiohttp import web

from actors.core.errors import InvalidRequestError, NotFoundError, SessiondError
from actors.core.records import SessionRecord
from actors.core.tree import Node, ToolUse, Usage
from server.routes.common import int_query
from server.routing import JSON, ErrorShape, Param, integer

__all__ = [
    "MCP_LABEL",
    "OPENAI_ERRORS",
    "PAGE_QUERY",
    "Metadata",
    "OpenAIError",
    "assistant_message",
    "conversation_out",
    "epoch",
    "input_message",
    "item_list",
    "mcp_item",
    "message_items",
    "output_items",
    "output_text",
    "page",
    "parse_response_id",
    "response_id",
    "response_out",
    "usage_out",
]

# sessiond's tools run on the server, as OpenAI's hosted MCP tools do: their calls are mcp_call
# items of this server label, with their output; none is for the client to run.
MCP_LABEL = "sessiond"

_enc = msgspec.json.Encoder()


# OpenAI's metadata: at most 16 pairs, keys of 64 characters at most, values of 512 (422 past it).
Metadata = Annotated[
    dict[Annotated[str, msgspec.Meta(max_length=64)], Annotated[str, msgspec.Meta(max_length=512)]],
    msgspec.Meta(max_length=16),
]


class OpenAIError(SessiondError):
    """A 400 in the OpenAI shape for what sessiond does not do (``code`` says which)."""

    status, code, title = 400, "unsupported", "Not supported by sessiond"

    def __init__(self, detail: str, code: str = "unsupported", param: str | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.param = param


_TYPES = {401: "authentication_error", 403: "permission_error", 404: "invalid_request_error",
          429: "rate_limit_error"}


def _error_response(exc: SessiondError) -> web.Response:
    # OpenAI answers a bad parameter with 400 where sessiond says 422.
    status = 400 if exc.status == 422 else exc.status
    kind = "server_error" if status >= 500 else _TYPES.get(status, "invalid_request_error")
    body = {"error": {"message": exc.detail, "type": kind, "param": getattr(exc, "param", None), "code": exc.code}}
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    return web.Response(status=status, body=_enc.encode(body), content_type="application/json", headers=headers)


# What the problem middleware answers a 4XX of an /openai/v1 route with (the SDK reads it).
OPENAI_ERRORS = ErrorShape(JSON, {"type": "object", "required": ["error"]}, _error_response)


# -- ids -----------------------------------------------------------------------------------


def response_id(session_id: str, task_id: str) -> str:
    return f"resp_{session_id}.{task_id}"


def parse_response_id(rid: str) -> tuple[str, str]:
    """(session id, task id) of a response id; 404 for anything this server did not make."""
    sid, dot, tid = rid.removeprefix("resp_").rpartition(".")
    if not rid.startswith("resp_") or not dot or not sid or not tid.startswith("tsk_"):
        raise NotFoundError(f"no response {rid}")
    return sid, tid


def epoch(stamp: str) -> int:
    """Unix seconds of an RFC 3339 time (0 for one that is not: an imported session may hold any)."""
    try:
        return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


# -- objects -------------------------------------------------------------------------------


def usage_out(usage: Usage | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {
        "input_tokens": usage.prompt,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": usage.completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total,
    }


def mcp_item(use: ToolUse, *, done: bool = True) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": f"mcp_{use.call_id}", "type": "mcp_call", "server_label": MCP_LABEL, "name": use.name,
        "arguments": json.dumps(use.arguments), "output": None, "error": None, "status": "calling",
    }
    if done and use.output is not None:
        if use.is_error:
            item |= {"error": use.output, "status": "failed"}
        else:
            item |= {"output": use.output, "status": "completed"}
    return item


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def assistant_message(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": [output_text(text)]}


def _item_status(node: Node) -> str:
    return {"completed": "completed", "running": "in_progress"}.get(node.status, "incomplete")


def output_items(node: Node) -> list[dict[str, Any]]:
    """A reply as output items: its tool calls (mcp_call), then its text (one message)."""
    items = [mcp_item(use) for use in node.tool_calls or []]
    if node.content or node.status != "running":
        items.append(assistant_message(node.id, node.content, _item_status(node)))
    return items


def input_message(node: Node) -> dict[str, Any]:
    return {"id": node.id, "type": "message", "role": "user", "status": "completed",
            "content": [{"type": "input_text", "text": node.content}]}


def message_items(node: Node) -> list[dict[str, Any]]:
    """A message of the active path as conversation items."""
    return [input_message(node)] if node.role == "user" else output_items(node)


_STATUS = {"completed": "completed", "running": "in_progress", "cancelled": "cancelled", "failed": "failed",
           "interrupted": "failed"}


def response_out(
    record: SessionRecord,
    task_id: str,
    reply: Node | None,
    *,
    previous: str | None = None,
    background: bool | None = None,
    error: str | None = None,
    created_at: int | None = None,
) -> dict[str, Any]:
    """The Response object of a task (``reply`` None: queued, nothing written yet)."""
    status = _STATUS.get(reply.status, "failed") if reply is not None else "queued"
    out: dict[str, Any] = {
        "id": response_id(record.id, task_id),
        "object": "response",
        "created_at": created_at if created_at is not None else epoch(reply.created_at if reply else record.created_at),
        "status": status,
        "model": (reply.model if reply is not None and reply.model else None) or record.agent_id or "default",
        "output": output_items(reply) if reply is not None else [],
        "instructions": record.system_prompt,
        "conversation": {"id": record.id},
        "previous_response_id": previous,
        "background": background,
        "metadata": {k: str(v) for k, v in record.metadata.items()},
        "parallel_tool_calls": False,
        "tool_choice": "auto",
        "tools": [],
        "store": True,
        "text": {"format": {"type": "text"}},
        "usage": usage_out(reply.usage) if reply is not None and reply.status != "running" else None,
        "error": None,
        "incomplete_details": None,
    }
    if status == "failed":
        reason = error or ("the server stopped while this response was running"
                           if reply is not None and reply.status == "interrupted" else "the model failed")
        out["error"] = {"code": "server_error", "message": reason}
    if status == "completed" and reply is not None:
        out["completed_at"] = out["created_at"]
    return out


def conversation_out(record: SessionRecord) -> dict[str, Any]:
    return {"id": record.id, "object": "conversation", "created_at": epoch(record.created_at),
            "metadata": record.metadata}


def item_list(items: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {"object": "list", "data": items, "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None, "has_more": has_more}


# The query of a list, as OpenAI pages one (``page`` reads it).
PAGE_QUERY = (
    integer("limit", 20, 1, 100, "Page size."),
    Param("order", {"type": "string", "enum": ["asc", "desc"]}, "Oldest (asc) or newest (desc) first."),
    Param("after", {"type": "string"}, "The last id of the previous page."),
)


def page(request: web.Request, items: list[dict[str, Any]], *, default_order: str) -> dict[str, Any]:
    """A page of ``items`` by ``PAGE_QUERY``: ``limit``, ``order`` and ``after`` (an item id)."""
    order = request.query.get("order", default_order)
    if order not in ("asc", "desc"):
        raise InvalidRequestError("order must be asc or desc")
    limit = int_query(request, "limit")
    if order == "desc":
        items = items[::-1]
    after = request.query.get("after")
    if after:
        at = next((i for i, item in enumerate(items) if item["id"] == after), None)
        if at is None:
            raise InvalidRequestError(f"after names no item of this list: {after}")
        items = items[at + 1 :]
    return item_list(items[:limit], len(items) > limit)
