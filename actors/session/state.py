"""SessionState: the data of one live session, and the one way its events become visible.

The base of SessionActor (actors/session/actor.py): it holds the tree, the record, the
checkpoints, the numbered event log with its subscriber hub, and the turn in progress, and it
numbers and publishes events (``_publish`` commits them first, then shows them). The actor adds
the mailbox loop and every command handler on top; nothing here runs on its own.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import cast

import msgspec

from actors.core.commands import GetMessages
from actors.core.errors import BadHeaderError, NotFoundError, PreconditionFailedError, TaskRunningError
from actors.core.events import TERMINAL_EVENTS, Event, EventLog, FrameEncoder, delta_data, encode_event, event_type
from actors.core.ids import utcnow
from actors.core.records import Fence, LoadedSession, Op, PutEvent, PutSession, SessionRecord, Stats, StoredEvent
from actors.core.replies import MessagePage
from actors.core.tree import MessageTree, Node
from actors.core.webhooks import Outbox
from actors.ports import EventSink, SessionStore
from actors.session.context import PathPrompt
from actors.session.fanout import Hub, Subscription
from actors.session.summaries import Summaries
from actors.session.turn import Turn

__all__ = ["ActorSettings", "SessionState"]

_TASK_END_MEMORY = 64  # terminal seqs remembered for task-scoped streams


class ActorSettings(msgspec.Struct, frozen=True):
    """How a session actor runs: its mailbox bound, how many events it keeps and replays."""

    mailbox_size: int = 64
    event_retention: int = 10000
    event_retention_bytes: int = 4 << 20  # of those events' frames, at most
    seq_block: int = 4096
    max_queued: int = 16
    replay_events: int = 1000
    wait_timeout: float = 3600.0  # how long a tool call may wait for approval or a client result
    fold_seconds: float = 1.0  # how often a streaming answer's text is stored (0: only at its end)


class SessionState:
    """One session's live data (see the module docstring)."""

    def __init__(
        self,
        loaded: LoadedSession,
        *,
        store: SessionStore,
        settings: ActorSettings,
        stats: Stats,
        frame: FrameEncoder,
        sink: EventSink | None = None,
        outbox: Outbox | None = None,
        epoch: int = 0,
    ) -> None:
        record = loaded.record
        self.id = record.id
        self.record = record
        self.tree = MessageTree.from_nodes(loaded.nodes, record.active_leaf_id)
        self.checkpoints = loaded.checkpoints
        self.summaries = Summaries(loaded.summaries)  # hidden nodes: never listed with messages
        events = loaded.events
        # Fewer events than asked for are all the store has, unless it removed older ones.
        bounded = len(events) >= settings.replay_events or record.events_bounded
        floor = events[0].seq - 1 if events and bounded else 0
        # Retention may have removed every event up to record.event_floor (keep_latest): the
        # log starts above it, and a stream resuming below it is told stream.reset.
        max_seq = max(loaded.max_seq, record.event_floor)
        self.log = EventLog(
            frame=frame, retention=settings.event_retention, retention_bytes=settings.event_retention_bytes,
            floor=max(floor, record.event_floor),
            last_seq=record.event_floor,
        )
        self._last_task_start: int | None = None
        for ev in events:
            self.log.append(ev.seq, ev.type, ev.data)
            if ev.type == "task.started":
                self._last_task_start = ev.seq
        # Ids handed out before a crash may be above every durable one: continue above both.
        self._next_seq = max(record.seq_reserved, max_seq) + 1
        # The id of the last event this session showed: the next event names it as its ``prev``
        # in the Redis stream, so a reader holding less knows it missed something. A clean stop
        # showed its durable events last; after a crash (a task still running), anything up to
        # the reservation may have been shown and lost with the node: a reader that saw less
        # than that is told stream.reset, here and through Redis, never a silent gap.
        # (A task that waits on tool calls stays running across a clean stop; it reserved
        # nothing beyond what is durable, so it leaves no hole.)
        crashed = bool(record.running) and record.seq_reserved > max_seq
        self._shown = self._next_seq - 1 if crashed else max_seq
        self._hole_end: int | None = None
        if crashed:
            self._hole_end = self._shown
            self.log.floor = max(self.log.floor, self._shown)
        self.hub = Hub(self.log)
        self._store = store
        # The lease epoch this activation claimed: every commit carries it, and the store
        # refuses one once another activation (on another node) has claimed a higher one.
        self.epoch = epoch
        self._settings = settings
        self._stats = stats
        self._sink = sink
        # Webhooks: the outbox rows of an event are committed with it (None: no endpoints).
        self._outbox = outbox or None
        self._turn: Turn | None = None
        self._queued: deque[Turn] = deque()
        self._loop = asyncio.get_running_loop()

    @property
    def prompts(self) -> PathPrompt:
        """The path the last turn read, for the next one to build on: kept with the tree (a
        trim's new tree starts without), made by the session's first turn. (Not an attribute of
        the actor's own: past 29 of them, each actor's attributes take a table of 1.5 KB.)"""
        prompts = self.tree.memo
        if not isinstance(prompts, PathPrompt):
            prompts = self.tree.memo = PathPrompt()
        return prompts

    # -- identity, read without the mailbox: these fields never change after creation ------

    @property
    def namespace(self) -> str:
        return self.record.namespace

    @property
    def end_user_id(self) -> str | None:
        return self.record.end_user_id

    # -- reads -----------------------------------------------------------------------------

    def _snapshot(self) -> SessionRecord:
        return msgspec.structs.replace(self.record, message_count=len(self.tree))

    def _messages(self, cmd: GetMessages) -> MessagePage:
        path = self.tree.active_path()
        page = path[cmd.offset : cmd.offset + cmd.limit]
        items: list[tuple[Node, int, int]] = []
        for node in page:
            index, count = self.tree.sibling_position(node.id)
            items.append((node, index, count))
        return MessagePage(
            items=items,
            usage=self.record.usage,
            has_more=cmd.offset + len(page) < len(path),
            total=len(path),
        )

    def _subscribe(self, last_event_id: int | None) -> Subscription:
        if last_event_id is None:
            start = self._last_task_start
            last_event_id = start - 1 if start is not None else self.log.last_seq
        elif last_event_id > self.log.last_seq:
            # Ids are never reused, so no stream of this session ever sent it: waiting for it
            # would deliver nothing, ever. Said at once instead (400, before the stream starts).
            raise BadHeaderError(
                f"Last-Event-ID {last_event_id} is past the last event of this session ({self.log.last_seq})"
            )
        return self.hub.subscribe(last_event_id, on_reset=self.reset_cursor)

    def reset_cursor(self) -> int:
        """Where a stream told to reset continues: the running task's start, else now."""
        start = self._last_task_start
        if self._turn is not None and start is not None and self.log.covers(start - 1):
            return start - 1
        hole = self._hole_end
        if hole is not None and self.log.covers(hole) and hole < self.log.last_seq:
            return hole  # past a crash's hole: on with what followed it (the tasks' ends)
        return self.log.last_seq

    # -- events ----------------------------------------------------------------------------

    async def _commit(self, ops: Sequence[Op]) -> None:
        """Write ``ops`` under this activation's lease epoch (FencedError: nothing written)."""
        await self._store.commit([Fence(self.id, self.epoch), *ops])

    async def _publish(self, events: Sequence[Event], ops: Sequence[Op] = (), *, ends: Sequence[str] = ()) -> list[int]:
        """Number ``events``, commit them with ``ops``, and only then show them to subscribers.

        Committing first means an id a client has seen is always durable or above the
        durable reservation, and a crash can never hand it out again.
        """
        seqs: list[int] = []
        stored: list[StoredEvent] = []
        for event in events:
            seq = self._next_seq
            self._next_seq += 1
            seqs.append(seq)
            stored.append(StoredEvent(seq, event_type(event), encode_event(event)))
        if self._next_seq - 1 > self.record.seq_reserved:
            self.record.seq_reserved = self._next_seq - 1
        if ends and self.record.requests:
            # Where an ended task's stream stops, durable with its end: a repeat of its
            # request after a restart replays it and closes there.
            for request in self.record.requests:
                if request.task_id in ends:
                    request.end_seq = seqs[-1]
        all_ops = [*ops, *(PutEvent(self.id, ev) for ev in stored), PutSession.of(self.record)]
        outbox = self._outbox
        # Webhooks: an event's deliveries are durable in its own commit, or neither is.
        deliveries = outbox.for_events(self.record, events, seqs) if outbox is not None else []
        await self._commit([*all_ops, *deliveries] if deliveries else all_ops)
        if deliveries and outbox is not None:
            outbox.wake()
        for event, ev in zip(events, stored, strict=True):
            self.log.append(ev.seq, ev.type, ev.data)
            if ev.type == "task.started":
                self._last_task_start = ev.seq
            if ev.type in TERMINAL_EVENTS:
                # Each terminal event ends its own task (several end at once on a drain or a
                # failover): its stream, here and through Redis, stops there.
                task_id = cast(str, getattr(event, "task_id"))  # noqa: B009 - every terminal event has one
                self.hub.task_end_seq[task_id] = ev.seq
                end_task: str | None = task_id
            else:
                end_task = None
            if self._sink is not None:
                self._sink(self.id, ev.seq, ev.type, ev.data, end_task, self._shown)
            self._shown = ev.seq
        ended = self.hub.task_end_seq
        for task_id in ends:
            ended.setdefault(task_id, seqs[-1])
        while len(ended) > _TASK_END_MEMORY:
            del ended[next(iter(ended))]
        self._stats.events += len(stored)
        self.hub.notify()
        return seqs

    def _touch(self) -> None:
        self.record.last_active_at = utcnow()
        self.record.version += 1
        self.record.message_count = len(self.tree)

    def _check_version(self, if_match: int | None) -> None:
        if if_match is not None and if_match != self.record.version:
            raise PreconditionFailedError(f"session is at version {self.record.version}, not {if_match}")

    def _require_idle(self) -> None:
        if self._turn is not None:
            raise TaskRunningError(f"task {self._turn.task_id} is running; cancel it or queue")

    def _node(self, message_id: str) -> Node:
        node = self.tree.get(message_id)
        if node is None:
            raise NotFoundError(f"no message {message_id} in this session")
        return node

    def _emit_deltas(self, turn: Turn, deltas: list[str]) -> None:
        """Number each delta, append it to the log (and the sink), then wake the subscribers
        once for the whole batch."""
        head = turn.delta_head
        append = self.log.append
        sink = self._sink
        for delta in deltas:
            seq = self._next_seq
            self._next_seq = seq + 1
            data = delta_data(head, delta)
            append(seq, "message.delta", data)
            if sink is not None:
                sink(self.id, seq, "message.delta", data, None, self._shown)
            self._shown = seq
        if turn.fold_at and self._loop.time() >= turn.fold_at:
            # Once per fold_seconds of streaming, the text so far goes to the store (in the
            # group commit of the moment), so a crash keeps what the user saw up to then.
            turn.fold_at = 0.0  # set again once this fold is done
            self._fold(turn)
        self._stats.events += len(deltas)
        self.hub.notify()

    def _fold(self, turn: Turn) -> None:
        """Ask for ``turn``'s text to be stored (the actor's mailbox does it)."""

    def _has_ids(self, count: int = 1) -> bool:
        """Whether the next ``count`` event ids are reserved durably already."""
        return self._next_seq + count - 1 <= self.record.seq_reserved
