"""ContextSummary: a hidden node of a session's tree, what a model was told of older turns.

When a conversation outgrows its model's context window and ``[context] strategy`` is
``summarize``, the agent's model is asked once to summarise the turns that no longer fit. The
summary hangs on the last message it covers (``through_id``) and is valid for exactly one path
prefix: the path from the root through that message, as ``digest`` fingerprints it. An edit or
another branch leads through other messages, so it finds no summary and gets its own; a path
that goes on through ``through_id`` reuses it until its own older turns outgrow it.

It is stored with its session (and removed with it) but is not a message: message listings,
paths, exports, shares, forks and search never see it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import msgspec

from actors.core.tree import Usage

__all__ = ["MAX_SUMMARIES", "ContextSummary", "path_digest"]

# Summaries kept per session, the newest; an older one is dropped when a new one is saved (a
# branch that needs a dropped one again asks its model again).
MAX_SUMMARIES = 16


class ContextSummary(msgspec.Struct, frozen=True, kw_only=True):
    """The summary of the path from the root through ``through_id`` (see the module docstring)."""

    id: str
    through_id: str
    digest: str
    content: str
    created_at: str
    covered: int = 0  # how many messages of the path it stands for
    model: str | None = None
    usage: Usage = msgspec.field(default_factory=Usage)


def path_digest(parts: Iterable[tuple[str, str, str]]) -> str:
    """The fingerprint of a path prefix: each message's (node id, role, text) in order."""
    h = hashlib.sha256()
    for node_id, role, text in parts:
        for field in (node_id, role, text):
            data = field.encode()
            h.update(len(data).to_bytes(8, "big"))
            h.update(data)
    return h.hexdigest()
