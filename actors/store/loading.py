"""A session's activation read, in one statement on either store.

Each store's query gives the session's parts as rows of ``(part, key, text, data, type)``,
ordered by part and key: its row, its messages and checkpoints by position, its newest events,
its hidden summaries, and the highest durable event id. One statement is one snapshot, and one
round trip (PostgreSQL) or one hop to the reader's thread (SQLite) instead of six.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from actors.core.records import Checkpoint, LoadedSession, StoredEvent, decode_record
from actors.core.summary import ContextSummary
from actors.core.tree import Node

__all__ = ["CHECKPOINTS", "EVENTS", "MAX_SEQ", "MESSAGES", "ROW", "SUMMARIES", "loaded_session"]

ROW, MESSAGES, CHECKPOINTS, EVENTS, SUMMARIES, MAX_SEQ = range(6)

_node = msgspec.json.Decoder(Node)
_checkpoint = msgspec.json.Decoder(Checkpoint)
_summary = msgspec.json.Decoder(ContextSummary)


def loaded_session(rows: Iterable[Sequence[Any]]) -> LoadedSession | None:
    """The session the rows of its load make; None if they hold no session row."""
    texts: tuple[list[Any], ...] = ([], [], [], [], [])
    events: list[StoredEvent] = []
    max_seq = 0
    for part, key, text, data, kind in rows:
        if part == EVENTS:
            events.append(StoredEvent(int(key), kind, bytes(data)))
        elif part == MAX_SEQ:
            max_seq = int(key or 0)
        else:
            texts[part].append(text)
    if not texts[ROW]:
        return None
    return LoadedSession(
        record=decode_record(texts[ROW][0]),
        nodes=[_node.decode(t) for t in texts[MESSAGES]],
        checkpoints=[_checkpoint.decode(t) for t in texts[CHECKPOINTS]],
        events=events,
        max_seq=max_seq,
        summaries=[_summary.decode(t) for t in texts[SUMMARIES]],
    )
