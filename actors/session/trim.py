"""keep_latest retention, as the session actor applies it: the newest messages stay, the rest go.

What stays is ``actors.core.retention.kept_ids``: the newest N messages of the active path,
the oldest of them becoming the root. Every other message goes (older turns, other branches,
anything below the active leaf), and with them, in one commit:

- the checkpoints of messages that went (those of kept messages stay, and restore as before);
- their search index entries (SQLite's FTS triggers and PostgreSQL's expression indexes follow
  the message rows);
- every hidden context summary (actors/core/summary.py): each tells of a path from the old
  root, which no longer exists, and holds what the removed messages said;
- every durable event so far: events tell of messages (a completed message carries its whole
  text), so none is kept. ``event_floor`` records where the log starts again: a stream
  resuming from an earlier id is told ``stream.reset`` and refetches the (trimmed) history;
- remembered idempotency keys whose message went.

The session's ``last_active_at`` does not move (a trim is not activity), its ``version`` does
(an old tab's ``If-Match`` fails). Only the actor calls this, with no task running or queued.
"""

from __future__ import annotations

import msgspec

from actors.core.records import PutMessage, PutSession, TrimSession
from actors.core.retention import kept_ids
from actors.core.tree import MessageTree
from actors.session.state import SessionState
from actors.session.summaries import Summaries

__all__ = ["trim"]


async def trim(state: SessionState, keep: int) -> int:
    """Keep the newest ``keep`` messages of ``state``'s active path; returns how many went."""
    tree = state.tree
    kept = kept_ids(tree, keep)
    keep_set = set(kept)
    gone = [node_id for node_id in tree.nodes if node_id not in keep_set]
    if not gone:
        return 0
    # Nothing changes in memory until the commit is done: a failed one leaves the session whole.
    nodes = [msgspec.structs.replace(tree.nodes[i], children=[]) for i in kept]
    ops: list[PutMessage | PutSession | TrimSession] = []
    if nodes and nodes[0].parent_id is not None:
        nodes[0].parent_id = None
        ops.append(PutMessage.of(state.id, nodes[0]))
    checkpoints = [c for c in state.checkpoints if c.message_id in keep_set]
    through = state._next_seq - 1
    record = msgspec.structs.replace(
        state.record,
        active_leaf_id=tree.active_leaf_id if tree.active_leaf_id in keep_set else (kept[-1] if kept else None),
        message_count=len(kept),
        version=state.record.version + 1,
        requests=[r for r in state.record.requests if r.message_id in keep_set],
        event_floor=through,
        seq_reserved=max(state.record.seq_reserved, through),
    )
    dropped = [c.id for c in state.checkpoints if c.message_id not in keep_set]
    ops += [TrimSession(state.id, gone, dropped, through, state.summaries.ids()), PutSession.of(record)]
    await state._commit(ops)
    state.tree = MessageTree.from_nodes(nodes, record.active_leaf_id)
    state.checkpoints = checkpoints
    state.summaries = Summaries()
    state.record = record
    state.log.forget_through(through)
    state._last_task_start = None
    state._hole_end = None
    return len(gone)
