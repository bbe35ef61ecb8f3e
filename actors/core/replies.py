"""The replies of the session commands that are not records: pages, views, task handles."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import msgspec

from actors.core.records import SessionRecord
from actors.core.retention import ExpiryOutcome
from actors.core.stream import EventStream
from actors.core.tree import Node, Usage

if TYPE_CHECKING:
    from asyncio import Future

__all__ = ["Expiry", "MessagePage", "TaskHandle", "TreeView", "TurnOutcome", "TurnStatus"]

TurnStatus = Literal["completed", "failed", "cancelled", "interrupted"]


class MessagePage(msgspec.Struct, frozen=True):
    items: list[tuple[Node, int, int]]  # node, sibling_index, sibling_count
    usage: Usage
    has_more: bool
    total: int


class Expiry(msgspec.Struct, frozen=True):
    """What retention did to a session: the session as it was when deleted, or how many
    messages a trim removed."""

    outcome: ExpiryOutcome
    record: SessionRecord | None = None
    removed: int = 0


class TreeView(msgspec.Struct, frozen=True):
    nodes: list[Node]
    active_leaf_id: str | None


class TurnOutcome(msgspec.Struct, frozen=True):
    """How a task ended, with its answer."""

    task_id: str
    status: TurnStatus
    message: Node
    usage: Usage
    model: str | None
    error: str | None = None
    sibling_index: int = 0
    sibling_count: int = 1


class TaskHandle:
    """The reply to a command that starts (or queues) a task: its stream if asked for, and
    a future of its outcome. Live objects: a handle never crosses nodes as it is."""

    __slots__ = ("cursor", "done", "message_id", "repeated", "subscription", "task_id")

    def __init__(
        self,
        task_id: str,
        message_id: str,
        subscription: EventStream | None,
        done: Future[TurnOutcome],
        cursor: int = 0,
        *,
        repeated: bool = False,
    ) -> None:
        self.task_id = task_id
        self.message_id = message_id
        self.subscription = subscription
        self.done = done
        self.cursor = cursor  # the event id just before this task's events
        self.repeated = repeated  # a repeat of an idempotent request: no new task was started
