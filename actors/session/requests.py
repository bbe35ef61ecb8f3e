"""Idempotent requests: the keys a session remembers, and the task a repeat is answered with.

A send, edit, regenerate or restore with an ``Idempotency-Key`` (or ``client_message_id``) is
remembered in the session row (``SessionRecord.requests``) in the commit that adds its user
message, so a client that lost the reply (a timeout, a dropped connection, a server killed
between the commit and the answer) can send it again and get the first task back, never a
second answer. The actor calls ``find`` before anything else, so a repeat is answered even
while its task runs (no 409) or after the session moved on (no 412).
"""

from __future__ import annotations

import time

from actors.core.commands import TaskCommand
from actors.core.errors import InvalidRequestError
from actors.core.records import (
    IDEMPOTENCY_WINDOW_SECONDS,
    MAX_IDEMPOTENT_REQUESTS,
    IdempotentRequest,
    SessionRecord,
)
from actors.core.replies import TurnOutcome, TurnStatus
from actors.core.tree import MessageTree, Usage

__all__ = ["find", "outcome", "remember"]

_ENDED: dict[str, TurnStatus] = {
    "completed": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
    "interrupted": "interrupted",
}


def find(record: SessionRecord, command: TaskCommand[object]) -> IdempotentRequest | None:
    """The remembered request ``command`` repeats, if any (422 if its key asked something else)."""
    key = command.idempotency_key
    if key is None:
        return None
    oldest = time.time() - IDEMPOTENCY_WINDOW_SECONDS
    for request in reversed(record.requests):
        if request.key == key and request.created_at >= oldest:
            if request.fingerprint != command.fingerprint():
                raise InvalidRequestError(
                    "this Idempotency-Key was used for a different request in this session"
                )
            return request
    return None


def remember(record: SessionRecord, command: TaskCommand[object], task_id: str, message_id: str, cursor: int) -> None:
    """Remember ``command``'s key for its task (the caller commits the record with the message)."""
    if command.idempotency_key is None:
        return
    now = time.time()
    kept = [r for r in record.requests if r.created_at >= now - IDEMPOTENCY_WINDOW_SECONDS]
    kept = kept[-(MAX_IDEMPOTENT_REQUESTS - 1):]
    entry = IdempotentRequest(command.idempotency_key, command.fingerprint(), task_id, message_id, cursor, now)
    record.requests = [*kept, entry]


def outcome(tree: MessageTree, request: IdempotentRequest) -> TurnOutcome:
    """How the ended task of ``request`` ended, read back from the tree."""
    node = tree.nodes[request.message_id]
    reply = next(
        (tree.nodes[c] for c in node.children if tree.nodes[c].task_id == request.task_id), None
    )
    if reply is None:
        # A queued task that never started (cancelled, or the server stopped): no answer.
        return TurnOutcome(request.task_id, "interrupted", node, Usage(), None, request.error)
    index, count = tree.sibling_position(reply.id)
    status = _ENDED.get(reply.status, "interrupted")
    return TurnOutcome(
        request.task_id, status, reply, reply.usage or Usage(), reply.model, request.error, index, count
    )
