"""The portable form of a session: a versioned JSON document (export, import, copy, merge).

Pure functions: no asyncio, no storage. Export keeps creation order and every id, so an
import of an export is the same session, and an export of that import is the same bytes.

An import is untrusted input: every field is bounded (counts, lengths, the size and depth of
free-form JSON), dates must be dates, token counts must be counts, and the session's usage is
recomputed from its messages, never taken from the document.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from typing import Annotated, Any, Literal

import msgspec

from actors.core.errors import InvalidRequestError
from actors.core.ids import new_id, utcnow
from actors.core.records import Checkpoint, SessionRecord
from actors.core.tree import Node, NodeStatus, Role, ToolUse, Usage

__all__ = [
    "FORMAT",
    "MAX_CHECKPOINTS",
    "MAX_CONTENT_CHARS",
    "MAX_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_LIST",
    "MAX_MESSAGES",
    "VERSION",
    "Date",
    "ExportedCheckpoint",
    "ExportedMessage",
    "ExportedSession",
    "Id",
    "SessionExport",
    "build_export",
    "check_json",
    "check_links",
    "fork_export",
    "from_export",
    "merge_paths",
    "remap_ids",
]

FORMAT: Literal["sessiond.session"] = "sessiond.session"
VERSION = 1

_enc = msgspec.json.Encoder()


# Bounds on one imported document (the server's max_body_bytes bounds its whole size too).
MAX_MESSAGES = 10_000
MAX_CHECKPOINTS = 20_000  # an answer's checkpoint, and one per tool result
MAX_CONTENT_CHARS = 1_000_000  # one message's text
MAX_JSON_BYTES = 65_536  # metadata, context, one tool call's arguments: encoded
MAX_JSON_DEPTH = 32
_MAX_COUNT = 1 << 40  # tokens of one message: a count, not a way to move a bill

# Ids in a document: what this server hands out, and nothing a path or a key could trip on.
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")]
# What utcnow() writes: RFC 3339 in UTC, so dates sort as text (checked as a calendar date below).
Date = Annotated[str, msgspec.Meta(pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")]
_MAX_NAME = 256  # a namespace, an end user, an agent, a tool
_MAX_SHORT = 1024  # a title, a model, a task id, a checkpoint label
MAX_LIST = 256  # tools, tool calls of one message, linked documents


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
    created_at: Date
    # Read for compatibility, never trusted: recomputed from the messages.
    usage: Usage = msgspec.field(default_factory=Usage)


class ExportedMessage(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    id: Id
    parent_id: Id | None
    role: Role
    content: str
    created_at: Date
    status: NodeStatus = "completed"
    task_id: str | None = None
    model: str | None = None
    usage: Usage | None = None
    hint: str | None = None
    tool_calls: list[ToolUse] | None = None


class ExportedCheckpoint(msgspec.Struct, forbid_unknown_fields=True):
    id: Id
    message_id: Id
    created_at: Date
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
                status=n.status,  # type: ignore[arg-type]  # a Node holds one of these five
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


def _depth(value: Any, limit: int) -> int:
    """How deeply ``value`` nests (a scalar is 0), counting no further than ``limit + 1``."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        stack.extend((child, depth) for child in children)
    return deepest


def check_links(count: int) -> None:
    """422 for a session that would link more than MAX_LIST documents."""
    if count > MAX_LIST:
        raise InvalidRequestError(f"a session links at most {MAX_LIST} documents; unlink some first")


def check_json(what: str, value: Any) -> None:
    """422 for free-form JSON deeper than MAX_JSON_DEPTH or larger than MAX_JSON_BYTES."""
    if _depth(value, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise InvalidRequestError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
    if len(_enc.encode(value)) > MAX_JSON_BYTES:
        raise InvalidRequestError(f"{what} is larger than {MAX_JSON_BYTES} bytes")


def _check_date(what: str, value: str) -> None:
    try:
        datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequestError(f"{what} is not a date: {value!r}") from None


def _check_usage(what: str, usage: Usage | None) -> None:
    if usage is None:
        return
    for name in ("prompt", "completion", "total"):
        count = getattr(usage, name)
        if not 0 <= count <= _MAX_COUNT:
            raise InvalidRequestError(f"{what}: usage.{name} must be a count of tokens, not {count}")


def _check_length(what: str, value: str | list[Any] | None, limit: int) -> None:
    if value is not None and len(value) > limit:
        raise InvalidRequestError(f"{what} is longer than {limit}")


def _check_message(m: ExportedMessage) -> None:
    what = f"message {m.id}"
    _check_date(f"{what}: created_at", m.created_at)
    _check_usage(what, m.usage)
    for name, value, limit in (
        ("content", m.content, MAX_CONTENT_CHARS),
        ("hint", m.hint, MAX_CONTENT_CHARS),
        ("task_id", m.task_id, _MAX_SHORT),
        ("model", m.model, _MAX_SHORT),
        ("tool_calls", m.tool_calls, MAX_LIST),
    ):
        _check_length(f"{what}: {name}", value, limit)
    for use in m.tool_calls or ():
        check_json(f"{what}: the arguments of tool call {use.call_id[:64]}", use.arguments)
        if len(use.call_id) > _MAX_SHORT or len(use.name) > _MAX_NAME or len(use.output or "") > MAX_CONTENT_CHARS:
            raise InvalidRequestError(f"{what}: a tool call is too large")


def _check_session(doc: SessionExport) -> None:
    s = doc.session
    _check_date("session.created_at", s.created_at)
    for name, value, limit in (
        ("namespace", s.namespace, _MAX_NAME),
        ("end_user_id", s.end_user_id, _MAX_NAME),
        ("agent_id", s.agent_id, _MAX_NAME),
        ("title", s.title, _MAX_SHORT),
        ("system_prompt", s.system_prompt, MAX_CONTENT_CHARS),
        ("tools", s.tools, MAX_LIST),
    ):
        _check_length(f"session.{name}", value, limit)
    for tool in s.tools:
        _check_length("a tool name", tool, _MAX_NAME)
    check_json("session.metadata", s.metadata)
    check_json("session.context", s.context)
    for name, items, limit in (
        ("messages", doc.messages, MAX_MESSAGES),
        ("checkpoints", doc.checkpoints, MAX_CHECKPOINTS),
        ("documents", doc.documents, MAX_LIST),
    ):
        if len(items) > limit:
            raise InvalidRequestError(f"a session holds at most {limit} {name} here, this one {len(items)}")
    for c in doc.checkpoints:
        _check_length(f"checkpoint {c.id}: label", c.label, _MAX_SHORT)
    for document_id in doc.documents:
        _check_length("a document id", document_id, _MAX_NAME)


def from_export(doc: SessionExport) -> tuple[SessionRecord, list[Node], list[Checkpoint]]:
    """Check ``doc`` is a consistent, bounded tree and turn it into what the store keeps."""
    if doc.version != VERSION:
        raise InvalidRequestError(f"export version {doc.version} is not supported (this server reads {VERSION})")
    _check_session(doc)
    s = doc.session
    seen: set[str] = set()
    nodes: list[Node] = []
    usage = Usage()
    for m in doc.messages:
        _check_message(m)
        if m.usage is not None:
            usage = usage + m.usage
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
    checkpoint_ids: set[str] = set()
    for c in doc.checkpoints:
        if c.message_id not in seen:
            raise InvalidRequestError(f"checkpoint {c.id} points at an unknown message")
        if c.id in checkpoint_ids:
            raise InvalidRequestError(f"checkpoint {c.id} appears twice")
        checkpoint_ids.add(c.id)
        _check_date(f"checkpoint {c.id}: created_at", c.created_at)
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
        usage=usage,
        message_count=len(nodes),
        documents=list(dict.fromkeys(doc.documents)),
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


def fork_export(doc: SessionExport, message_id: str) -> SessionExport | None:
    """A new session's document holding the path from the root to ``message_id`` (any branch),
    that message active, with the source's settings, metadata and documents; fresh ids.
    None if the session has no such message."""
    by_id = {m.id: m for m in doc.messages}
    if message_id not in by_id:
        return None
    path: list[ExportedMessage] = []
    at: str | None = message_id
    while at is not None:
        m = by_id[at]
        path.append(m)
        at = m.parent_id
    path.reverse()
    kept = {m.id for m in path}
    forked = msgspec.structs.replace(
        doc,
        messages=path,
        active_leaf_id=message_id,
        checkpoints=[c for c in doc.checkpoints if c.message_id in kept],
    )
    return remap_ids(forked)


def merge_paths(paths: list[list[Node]]) -> list[Node]:
    """One history from several: each active path in order, chained, with fresh ids (an answer
    still being written in its source is copied as interrupted, its calls waiting for a
    decision without the wait: nothing will end or decide them here)."""
    out: list[Node] = []
    parent: str | None = None
    for path in paths:
        for n in path:
            running = n.status == "running"
            calls = n.tool_calls
            if running and calls:
                calls = [msgspec.structs.replace(use, wait=None, expires_at=None) for use in calls]
            copy = Node(
                new_id("msg"),
                parent,
                n.role,
                n.content,
                n.created_at,
                "interrupted" if running else n.status,
                n.task_id,
                n.model,
                n.usage,
                n.hint,
                calls,
            )
            out.append(copy)
            parent = copy.id
    return out
