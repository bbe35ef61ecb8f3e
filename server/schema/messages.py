"""Messages, tasks and branches: the bodies of send, edit, regenerate, navigate and restore, and
the answers (a message, a page of them, the tree, checkpoints, a task's result)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from actors.core.records import Checkpoint
from actors.core.tree import Node, Usage
from server.schema.common import RequestBody
from server.schema.tools import ClientToolBody

__all__ = [
    "CancelOut",
    "CheckpointList",
    "CheckpointOut",
    "EditBody",
    "MessageList",
    "MessageOut",
    "NavigateBody",
    "NavigateOut",
    "RegenerateBody",
    "RestoreBody",
    "RestoreOut",
    "SendMessageBody",
    "SendResult",
    "TreeNodeOut",
    "TreeOut",
    "checkpoint_out",
    "message_out",
    "tree_node_out",
]


class SendMessageBody(RequestBody):
    content: str
    stream: bool = False
    parent_id: str | None = None
    # The frontend's own tools for this task (the session's are PATCHed as ``client_tools``).
    client_tools: Annotated[list[ClientToolBody], msgspec.Meta(max_length=64)] = msgspec.field(default_factory=list)
    # An idempotency key in the body (the Idempotency-Key header's equal): a repeat within
    # 24 hours answers the task the first request started.
    client_message_id: str | None = None


class EditBody(RequestBody):
    content: str
    stream: bool = False
    # An idempotency key in the body (the Idempotency-Key header's equal): a repeat within
    # 24 hours answers the task the first request started.
    client_message_id: str | None = None


class RegenerateBody(RequestBody):
    stream: bool = False
    # An idempotency key in the body (the Idempotency-Key header's equal): a repeat within
    # 24 hours answers the task the first request started.
    client_message_id: str | None = None


class NavigateBody(RequestBody):
    message_id: str


class RestoreBody(RequestBody):
    hint: str | None = None
    stream: bool = False
    # An idempotency key in the body (the Idempotency-Key header's equal): a repeat within
    # 24 hours answers the task the first request started.
    client_message_id: str | None = None


class MessageOut(msgspec.Struct):
    id: str
    parent_id: str | None
    role: str
    content: str
    created_at: str
    status: str
    sibling_index: int
    sibling_count: int
    task_id: str | None = None
    model: str | None = None
    usage: Usage | None = None
    # A user turn made from a restore hint (an instruction), not a message the user wrote.
    hint: bool = False
    # Only with GET messages?format=html: the content rendered as Markdown and sanitized.
    content_html: str | None = None


class MessageList(msgspec.Struct):
    items: list[MessageOut]
    usage: Usage
    has_more: bool
    total: int


class TreeNodeOut(msgspec.Struct):
    id: str
    parent_id: str | None
    role: str
    content: str
    created_at: str
    status: str
    children: list[str]
    model: str | None = None
    usage: Usage | None = None


class TreeOut(msgspec.Struct):
    nodes: list[TreeNodeOut]
    active_leaf_id: str | None


class CheckpointOut(msgspec.Struct):
    id: str
    message_id: str
    created_at: str
    label: str


class CheckpointList(msgspec.Struct):
    items: list[CheckpointOut]


class SendResult(msgspec.Struct):
    """A task's result, answered once it ended (``stream: false``)."""

    message: MessageOut
    task_id: str
    usage: Usage
    model: str | None
    status: str
    error: str | None = None


class NavigateOut(msgspec.Struct):
    """The active path after a branch switch."""

    items: list[MessageOut]


class CancelOut(msgspec.Struct):
    task_id: str
    status: str


class RestoreOut(msgspec.Struct):
    """A restore without a hint: only the active leaf moves."""

    active_leaf_id: str | None


def message_out(node: Node, sibling_index: int = 0, sibling_count: int = 1) -> MessageOut:
    return MessageOut(
        id=node.id,
        parent_id=node.parent_id,
        role=node.role,
        content=node.content,
        created_at=node.created_at,
        status=node.status,
        sibling_index=sibling_index,
        sibling_count=sibling_count,
        task_id=node.task_id,
        model=node.model,
        usage=node.usage,
        hint=node.hint is not None,
    )


def tree_node_out(n: Node) -> TreeNodeOut:
    return TreeNodeOut(n.id, n.parent_id, n.role, n.content, n.created_at, n.status, list(n.children), n.model, n.usage)


def checkpoint_out(cp: Checkpoint) -> CheckpointOut:
    return CheckpointOut(cp.id, cp.message_id, cp.created_at, cp.label)
