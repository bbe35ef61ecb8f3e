"""The mailbox vocabulary: every command a SessionActor understands."""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = [
    "AnyCommand",
    "CancelTask",
    "Command",
    "DeleteSessionCmd",
    "EditMessage",
    "ExportSession",
    "GetMessages",
    "GetSession",
    "GetTree",
    "ListCheckpoints",
    "Navigate",
    "Passivate",
    "PatchSession",
    "RegenerateMessage",
    "RestoreCheckpoint",
    "SendMessage",
    "Shutdown",
    "Subscribe",
    "TurnEnded",
]


class Command(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="op"):
    """Base of every command; ``if_match`` guards mutations against stale clients."""


class GetSession(Command, frozen=True, tag="get_session"):
    pass


class PatchSession(Command, frozen=True, tag="patch_session"):
    title: str | msgspec.UnsetType | None = msgspec.UNSET
    metadata: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    context: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    tools: list[str] | msgspec.UnsetType = msgspec.UNSET
    link_documents: tuple[str, ...] = ()
    unlink_documents: tuple[str, ...] = ()
    if_match: int | None = None


class GetMessages(Command, frozen=True, tag="get_messages"):
    limit: int = 100
    offset: int = 0


class GetTree(Command, frozen=True, tag="get_tree"):
    pass


class SendMessage(Command, frozen=True, tag="send_message"):
    content: str
    parent_id: str | None = None
    stream: bool = False
    queue: bool = False
    if_match: int | None = None


class EditMessage(Command, frozen=True, tag="edit_message"):
    message_id: str
    content: str
    stream: bool = False
    if_match: int | None = None


class RegenerateMessage(Command, frozen=True, tag="regenerate_message"):
    message_id: str
    stream: bool = False
    if_match: int | None = None


class Navigate(Command, frozen=True, tag="navigate"):
    message_id: str
    if_match: int | None = None


class CancelTask(Command, frozen=True, tag="cancel_task"):
    pass


class ListCheckpoints(Command, frozen=True, tag="list_checkpoints"):
    pass


class RestoreCheckpoint(Command, frozen=True, tag="restore_checkpoint"):
    checkpoint_id: str
    hint: str | None = None
    stream: bool = False
    if_match: int | None = None


class Subscribe(Command, frozen=True, tag="subscribe"):
    last_event_id: int | None = None


class ExportSession(Command, frozen=True, tag="export_session"):
    pass


class DeleteSessionCmd(Command, frozen=True, tag="delete_session"):
    pass


class Passivate(Command, frozen=True, tag="passivate"):
    """Stop if still idle (the registry's sweeper sends it)."""

    idle_seconds: float


class Shutdown(Command, frozen=True, tag="shutdown"):
    """Interrupt any running task, flush and stop (server drain)."""


class TurnEnded(Command, frozen=True, tag="turn_ended"):
    """Sent by the actor's own turn task when the model is done (or failed)."""

    task_id: str
    error: str | None = None


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
    | DeleteSessionCmd
    | Passivate
    | Shutdown
    | TurnEnded
)
