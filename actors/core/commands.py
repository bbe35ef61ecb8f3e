"""The mailbox vocabulary: every command a SessionActor understands, each naming its reply.

``Command[R]`` is answered with an ``R``: ``await session.ask(GetMessages())`` is a
``MessagePage``, for a local actor and for a session on another node alike (the cluster reads
``R`` off the class to decode the owner's answer). The four commands that start a model task
share ``TaskCommand``; whether one does is a property of the command, so the edge can ask it
before the session sees it.
"""

from __future__ import annotations

import hashlib
from typing import Any, Generic, TypeVar

import msgspec

from actors.core.export import SessionExport
from actors.core.records import Checkpoint, ClientTool, ForkRef, SessionRecord
from actors.core.replies import Expiry, MessagePage, TaskHandle, TreeView
from actors.core.retention import Retention
from actors.core.stream import EventStream
from actors.core.summary import ContextSummary
from actors.core.tree import Node, ToolWait

__all__ = [
    "READS",
    "AnyCommand",
    "CancelTask",
    "Command",
    "DecideToolCall",
    "DeleteSession",
    "EditMessage",
    "ExpireSession",
    "ExportSession",
    "FoldReply",
    "GetMessages",
    "GetSession",
    "GetTree",
    "ListCheckpoints",
    "MailboxCommand",
    "Navigate",
    "Passivate",
    "PatchSession",
    "RegenerateMessage",
    "ReserveSeqs",
    "RestoreCheckpoint",
    "SaveSummary",
    "SendMessage",
    "Shutdown",
    "SubmitToolResult",
    "Subscribe",
    "TaskCommand",
    "ToolCalled",
    "ToolReturned",
    "TurnCommand",
    "TurnEnded",
    "WaitExpired",
]

# Covariant: a command is only ever a producer of its reply (a TaskCommand[TaskHandle] is a
# TaskCommand[TaskHandle | str]).
R = TypeVar("R", covariant=True)

_encode = msgspec.json.Encoder(order="deterministic").encode


class Command(msgspec.Struct, Generic[R], frozen=True, forbid_unknown_fields=True, tag_field="op"):
    """Base of every command; ``R`` is the type of its reply."""


class TaskCommand(Command[R], frozen=True, kw_only=True):
    """A command that starts (or queues) a model task; ``stream`` asks for its events.

    With ``idempotency_key`` a repeat of the same request answers the task the first one
    started; ``last_event_id`` is where a repeat's stream resumes (the task's start if None).
    """

    stream: bool = False
    idempotency_key: str | None = None
    last_event_id: int | None = None
    # Answer only a repeat (404 if the key is new): the edge asks so when the caller is over
    # its message limit, since a repeat starts nothing and is never refused for that.
    repeat_only: bool = False

    @property
    def starts_task(self) -> bool:
        return True

    def fingerprint(self) -> str:
        """What is asked, without how it is delivered or guarded: two requests with one key
        and one fingerprint are one request (a retry may switch to streaming, or resume)."""
        asked = msgspec.structs.replace(
            self, stream=False, idempotency_key=None, last_event_id=None, repeat_only=False,
            **{name: None for name in ("if_match",) if hasattr(self, name)},
            **{name: False for name in ("queue",) if hasattr(self, name)},
        )
        return hashlib.sha256(_encode(asked)).hexdigest()


class GetSession(Command[SessionRecord], frozen=True, tag="get_session"):
    pass


class PatchSession(Command[SessionRecord], frozen=True, tag="patch_session"):
    title: str | msgspec.UnsetType | None = msgspec.UNSET
    metadata: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    context: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    tools: list[str] | msgspec.UnsetType = msgspec.UNSET
    client_tools: list[ClientTool] | msgspec.UnsetType = msgspec.UNSET
    link_documents: tuple[str, ...] = ()
    unlink_documents: tuple[str, ...] = ()
    add_fork: ForkRef | None = None  # a session was forked from this one
    retention: Retention | msgspec.UnsetType | None = msgspec.UNSET  # None: back to the configured rule
    temporary: bool | msgspec.UnsetType = msgspec.UNSET
    if_match: int | None = None


class GetMessages(Command[MessagePage], frozen=True, tag="get_messages"):
    limit: int = 100
    offset: int = 0


class GetTree(Command[TreeView], frozen=True, tag="get_tree"):
    pass


class SendMessage(TaskCommand[TaskHandle], frozen=True, tag="send_message"):
    content: str
    parent_id: str | None = None
    queue: bool = False
    if_match: int | None = None
    client_tools: list[ClientTool] = msgspec.field(default_factory=list)  # for this task only


class EditMessage(TaskCommand[TaskHandle], frozen=True, tag="edit_message"):
    message_id: str
    content: str
    if_match: int | None = None


class RegenerateMessage(TaskCommand[TaskHandle], frozen=True, tag="regenerate_message"):
    message_id: str
    if_match: int | None = None


class Navigate(Command[list[tuple[Node, int, int]]], frozen=True, tag="navigate"):
    message_id: str
    if_match: int | None = None


class CancelTask(Command[str], frozen=True, tag="cancel_task"):
    """Answered with the id of the task it cancelled."""


class ListCheckpoints(Command[list[Checkpoint]], frozen=True, tag="list_checkpoints"):
    pass


class RestoreCheckpoint(TaskCommand[TaskHandle | str], frozen=True, tag="restore_checkpoint"):
    """Go back to a checkpoint: with a hint, a task answering it (a TaskHandle); without,
    only the active leaf moves (answered with its id)."""

    checkpoint_id: str
    hint: str | None = None
    if_match: int | None = None

    @property
    def starts_task(self) -> bool:
        return self.hint is not None and bool(self.hint.strip())


class Subscribe(Command[EventStream], frozen=True, tag="subscribe"):
    last_event_id: int | None = None


class ExportSession(Command[SessionExport], frozen=True, tag="export_session"):
    pass


class DeleteSession(Command[None], frozen=True, tag="delete_session"):
    pass


class Passivate(Command[bool], frozen=True, tag="passivate"):
    """Stop if still idle (the registry's sweeper sends it); answers whether it stopped."""

    idle_seconds: float


class ExpireSession(Command[Expiry], frozen=True, tag="expire_session"):
    """The retention sweeper found the session due: if nothing runs in it and its rule (its own,
    else ``configured``) is still due, delete it or trim it (actors/core/retention.py)."""

    configured: Retention | None
    temporary_ttl: float


class Shutdown(Command[None], frozen=True, tag="shutdown"):
    """Interrupt any running task, flush and stop (server drain)."""


class DecideToolCall(Command[str], frozen=True, tag="decide_tool_call"):
    """Approve or deny a call that waits for approval; answered with its task's id."""

    call_id: str
    approve: bool
    reason: str | None = None


class SubmitToolResult(Command[str], frozen=True, tag="submit_tool_result"):
    """The frontend's result of a client tool call; answered with its task's id."""

    call_id: str
    output: str
    is_error: bool = False


AnyCommand = (
    GetSession
    | PatchSession
    | GetMessages
    | GetTree
    | SendMessage
    | EditMessage
    | RegenerateMessage
    | Navigate
    | CancelTask
    | ListCheckpoints
    | RestoreCheckpoint
    | Subscribe
    | ExportSession
    | DeleteSession
    | Passivate
    | ExpireSession
    | Shutdown
    | DecideToolCall
    | SubmitToolResult
)
"""Every command another part of sessiond (or another node) may send a session."""


# -- the running turn's own commands: how it changes its session ----------------------------


class ToolCalled(Command[None], frozen=True, tag="tool_called"):
    """The model of task ``task_id`` called a tool (``wait``: one it must wait for)."""

    task_id: str
    call_id: str
    name: str
    arguments: dict[str, Any]
    wait: ToolWait | None = None


class ToolReturned(Command[None], frozen=True, tag="tool_returned"):
    """A tool of task ``task_id`` answered: durable at once, with a checkpoint."""

    task_id: str
    call_id: str
    name: str
    output: str
    is_error: bool


class ReserveSeqs(Command[None], frozen=True, tag="reserve_seqs"):
    """The running turn used its block of event ids: reserve the next one durably (at least
    ``count`` ids: the deltas it is about to emit)."""

    task_id: str
    count: int = 1


class SaveSummary(Command[None], frozen=True, tag="save_summary"):
    """The running turn had older turns summarised to fit the context window: keep the summary
    as a hidden node (durable before the turn goes on)."""

    task_id: str
    summary: ContextSummary


class FoldReply(Command[None], frozen=True, tag="fold_reply"):
    """The running turn streamed for ``fold_seconds``: store its answer's text so far."""

    task_id: str


class TurnEnded(Command[None], frozen=True, tag="turn_ended"):
    """Sent by the actor's own turn task when the model is done (or failed), or when it
    stopped to wait on tool calls (``waiting``: the task is not over)."""

    task_id: str
    error: str | None = None
    waiting: bool = False


class WaitExpired(Command[None], frozen=True, tag="wait_expired"):
    """The actor's own timer: a waiting task's tool call may have waited too long."""

    task_id: str


TurnCommand = ToolCalled | ToolReturned | ReserveSeqs | SaveSummary | FoldReply | TurnEnded | WaitExpired
"""What a session's running turn sends its actor; never forwarded across nodes."""

MailboxCommand = AnyCommand | TurnCommand


# Commands that only read: every other one changes the session, and in cluster mode is taken
# only by a node that can prove it holds the session's lease.
READS = (GetSession, GetMessages, GetTree, ListCheckpoints, Subscribe, ExportSession)
