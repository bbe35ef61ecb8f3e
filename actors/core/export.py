"""The portable form of a session: a versioned JSON document (export, import, copy, merge).

Pure functions: no asyncio, no storage. Export keeps creation order and every id, so an
import of an export is the same session, and an export of that import is the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Literal

import msgspec

from actors.core.errors import InvalidRequestError
from actors.core.ids import new_id, utcnow
from actors.core.records import Checkpoint, SessionRecord
from actors.core.tree import Node, NodeStatus, Role, ToolUse, Usage

__all__ = [
    "FORMAT",
    "VERSION",
    "ExportedSession",
    "SessionExport",
    "build_export",
    "from_export",
    "merge_paths",
    "remap_ids",
]

FORMAT: Literal["sessiond.session"] = "sessiond.session"
VERSION = 1


# Ids in a document: what this server hands out, and nothing a path or a key could trip on.
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")]


class ExportedSession(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    id: Id
    namespace: Annotated[str, msgspec.Meta(min_length=1)] = "default"
    end_user_id: str | None = None
    agent_id: str | None = None
    title: str | None = None
    system_prompt: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    context: dict[str, Any] = msgspec.field(default_factory=dict)
    tools: list[str] = msgspec.field(default_factory=list)
    is_guest: bool = False
    created_at: str
    usage: Usage = msgspec.field(default_factory=Usage)


class ExportedMessage(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    id: Id
    parent_id: Id | None
    role: Role
    content: str
    created_at: str
    status: NodeStatus = "completed"
    task_id: str | None = None
    model: str | None = None
    usage: Usage | None = None
    hint: str | None = None
    tool_calls: list[ToolUse] | None = None


class ExportedCheckpoint(msgspec.Struct, forbid_unknown_fields=True):
    id: Id
    message_id: Id
    created_at: str
    label: str


class SessionExport(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    format: Literal["sessiond.session"] = FORMAT
    version: int = VERSION
    session: ExportedSession
    messages: list[ExportedMessage]
    active_leaf_id: str | None = None
    checkpoints: list[ExportedCheckpoint] = msgspec.field(default_factory=list)
    documents: list[str] = msgspec.field(default_factory=list)


def build_export(record: SessionRecord, nodes: Iterable[Node], checkpoints: Iterable[Checkpoint]) -> SessionExport:
    """``nodes`` parents first, siblings oldest first (``MessageTree.in_order()``)."""
    r = record
    return SessionExport(
        session=ExportedSession(
            id=r.id,
            namespace=r.namespace,
            end_user_id=r.end_user_id,
            agent_id=r.agent_id,
            title=r.title,
            system_prompt=r.system_prompt,
            metadata=r.metadata,
            context=r.context,
            tools=r.tools,
            is_guest=r.is_guest,
            created_at=r.created_at,
            usage=r.usage,
        ),
        messages=[
            ExportedMessage(
                id=n.id,
                parent_id=n.parent_id,
                role=n.role,
                content=n.content,  # type: ignore[arg-type]
                created_at=n.created_at,
                status=n.status,
                task_id=n.task_id,
                model=n.model,
                usage=n.usage,
                hint=n.hint,
                tool_calls=n.tool_calls,
            )
            for n in nodes
        ],
        active_leaf_id=r.active_leaf_id,
        checkpoints=[ExportedCheckpoint(c.id, c.message_id, c.created_at, c.label) for c in checkpoints],
        documents=list(r.documents),
    )


def from_export(doc: SessionExport) -> tuple[SessionRecord, list[Node], list[Checkpoint]]:
    """Check ``doc`` is a consistent tree and turn it into what the store keeps."""
    if doc.version != VERSION:
        raise InvalidRequestError(f"export version {doc.version} is not supported (this server reads {VERSION})")
    seen: set[str] = set()
    nodes: list[Node] = []
    for m in doc.messages:
        if m.id in seen:
            raise InvalidRequestError(f"message {m.id} appears twice")
        if m.parent_id is not None and m.parent_id not in seen:
            raise InvalidRequestError(f"message {m.id} comes before its parent {m.parent_id}")
        seen.add(m.id)
        # A task cannot run on in another server: what was running is interrupted.
        status = "interrupted" if m.status == "running" else m.status
        nodes.append(
            Node(
                m.id,
                m.parent_id,
                m.role,
                m.content,
                m.created_at,
                status,
                m.task_id,
                m.model,
                m.usage,
                m.hint,
                m.tool_calls,
            )
        )
    if doc.active_leaf_id is not None and doc.active_leaf_id not in seen:
        raise InvalidRequestError("active_leaf_id is not one of the messages")
    for c in doc.checkpoints:
        if c.message_id not in seen:
            raise InvalidRequestError(f"checkpoint {c.id} points at an unknown message")
    s = doc.session
    now = utcnow()
    record = SessionRecord(
        id=s.id,
        namespace=s.namespace,
        created_at=s.created_at,
        last_active_at=now,
        end_user_id=s.end_user_id,
        agent_id=s.agent_id,
        title=s.title,
        system_prompt=s.system_prompt,
        metadata=s.metadata,
        context=s.context,
        tools=s.tools,
        is_guest=s.is_guest,
        active_leaf_id=doc.active_leaf_id,
        usage=s.usage,
        message_count=len(nodes),
        documents=list(doc.documents),
    )
    return record, nodes, [Checkpoint(c.id, c.message_id, c.created_at, c.label) for c in doc.checkpoints]


def remap_ids(doc: SessionExport) -> SessionExport:
    """The same document with fresh session, message and checkpoint ids."""
    ids = {m.id: new_id("msg") for m in doc.messages}
    return msgspec.structs.replace(
        doc,
        session=msgspec.structs.replace(doc.session, id=new_id("ses")),
        messages=[
            msgspec.structs.replace(
                m, id=ids[m.id], parent_id=ids.get(m.parent_id, m.parent_id) if m.parent_id else None
            )
            for m in doc.messages
        ],
        active_leaf_id=ids.get(doc.active_leaf_id) if doc.active_leaf_id else None,
        # Unknown references are left as they are, for from_export() to refuse.
        checkpoints=[
            msgspec.structs.replace(c, id=new_id("ckp"), message_id=ids.get(c.message_id, c.message_id))
            for c in doc.checkpoints
        ],
    )


def merge_paths(paths: list[list[Node]]) -> list[Node]:
    """One history from several: each active path in order, chained, with fresh ids."""
    out: list[Node] = []
    parent: str | None = None
    for path in paths:
        for n in path:
            copy = Node(
                new_id("msg"),
                parent,
                n.role,
                n.content,
                n.created_at,
                n.status,
                n.task_id,
                n.model,
                n.usage,
                n.hint,
                n.tool_calls,
            )
            out.append(copy)
            parent = copy.id
    return out
