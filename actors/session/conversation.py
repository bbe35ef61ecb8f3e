"""ConversationCommands: the commands that change a session's tree and start its tasks.

Send, edit, regenerate and restore add a user turn (or answer one again) and start its task, or
queue it behind the running one (``_begin``: the message, the task and its idempotency key in
one commit); a repeat of an idempotent request answers with its first task (``_repeat``).
Navigate and patch change the record only.
"""

from __future__ import annotations

import msgspec

from actors.core.commands import (
    EditMessage,
    GetMessages,
    Navigate,
    PatchSession,
    RegenerateMessage,
    RestoreCheckpoint,
    SendMessage,
    TaskCommand,
)
from actors.core.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
)
from actors.core.export import MAX_LIST, check_json, check_links
from actors.core.ids import new_id, utcnow
from actors.core.records import (
    Op,
    PutMessage,
    PutSession,
    RunningTask,
    SessionRecord,
)
from actors.core.replies import TaskHandle
from actors.core.tree import Node
from actors.session import requests
from actors.session.turn import Turn
from actors.session.waits import ToolWaits

__all__ = ["ConversationCommands"]


class ConversationCommands(ToolWaits):
    """What a session's users change in it (see the module docstring)."""

    async def _patch(self, cmd: PatchSession) -> SessionRecord:
        self._check_version(cmd.if_match)
        r = self.record
        retention = r.retention if cmd.retention is msgspec.UNSET else cmd.retention
        temporary = r.temporary if cmd.temporary is msgspec.UNSET else cmd.temporary
        if temporary and retention is not None:
            raise InvalidRequestError("a temporary session has no retention of its own; set one of the two")
        # Checked whole before anything changes: patches of new keys or documents must not grow
        # a session without end (its row is written whole with every commit).
        metadata = r.metadata
        if cmd.metadata is not msgspec.UNSET:
            metadata = dict(r.metadata)
            for key, value in cmd.metadata.items():
                if value is None:
                    metadata.pop(key, None)
                else:
                    metadata[key] = value
            try:
                check_json("metadata (merged with the session's)", metadata)
            except InvalidRequestError:
                # Metadata stored past the cap (before it held) may still shrink, a step at a time.
                if len(msgspec.json.encode(metadata)) >= len(msgspec.json.encode(r.metadata)):
                    raise
        if cmd.context is not msgspec.UNSET:
            check_json("context", cmd.context)
        documents = r.documents
        if cmd.link_documents:
            documents = [*documents, *(d for d in cmd.link_documents if d not in documents)]
        if cmd.unlink_documents:
            documents = [d for d in documents if d not in cmd.unlink_documents]
        if len(documents) > len(r.documents):  # one linked past the cap before it held may stay
            check_links(len(documents))
        if cmd.title is not msgspec.UNSET:
            r.title = cmd.title
        r.metadata, r.documents = metadata, documents
        if cmd.context is not msgspec.UNSET:
            r.context = cmd.context
        if cmd.tools is not msgspec.UNSET:
            r.tools = list(cmd.tools)
        if cmd.client_tools is not msgspec.UNSET:
            r.client_tools = list(cmd.client_tools)
        if cmd.add_fork is not None:
            r.forks = [*r.forks, cmd.add_fork][-MAX_LIST:]  # the newest: forking must not grow it without end
        r.retention, r.temporary = retention, temporary
        self._touch()
        await self._commit([PutSession.of(r)])
        return self._snapshot()

    async def _send(self, cmd: SendMessage) -> TaskHandle:
        if (repeat := self._repeat(cmd)) is not None:
            return repeat
        self._check_version(cmd.if_match)
        if not cmd.content.strip():
            raise InvalidRequestError("content must not be empty")
        parent_id = cmd.parent_id if cmd.parent_id is not None else self.tree.active_leaf_id
        if parent_id is not None and self._node(parent_id).role != "assistant":
            raise InvalidRequestError("a user message must follow an assistant message")
        if self._turn is not None:
            if not cmd.queue:
                self._require_idle()
            if len(self._queued) >= self._settings.max_queued:
                raise ConflictError("too many messages are queued in this session")
            if cmd.parent_id is not None:
                raise InvalidRequestError("a queued message follows the running answer; omit parent_id")
            # Parked under the running answer; when its turn comes it moves under the answer
            # just before it, so queued messages chain in the order they were sent.
            parent_id = self._turn.reply_id
        user = Node(new_id("msg"), parent_id, "user", cmd.content, utcnow())
        return await self._begin(user, cmd)

    async def _edit(self, cmd: EditMessage) -> TaskHandle:
        if (repeat := self._repeat(cmd)) is not None:
            return repeat
        self._check_version(cmd.if_match)
        self._require_idle()
        node = self._node(cmd.message_id)
        if node.role != "user":
            raise InvalidRequestError("only a user message can be edited; regenerate an answer instead")
        if not cmd.content.strip():
            raise InvalidRequestError("content must not be empty")
        user = Node(new_id("msg"), node.parent_id, "user", cmd.content, utcnow())
        return await self._begin(user, cmd)

    async def _regenerate(self, cmd: RegenerateMessage) -> TaskHandle:
        if (repeat := self._repeat(cmd)) is not None:
            return repeat
        self._check_version(cmd.if_match)
        self._require_idle()
        node = self._node(cmd.message_id)
        if node.role != "assistant" or node.parent_id is None:
            raise InvalidRequestError("only an assistant message can be regenerated")
        return await self._begin(None, cmd, answer_to=node.parent_id)

    async def _navigate(self, cmd: Navigate) -> list[tuple[Node, int, int]]:
        self._check_version(cmd.if_match)
        self._require_idle()
        self._node(cmd.message_id)
        self.tree.active_leaf_id = self.tree.newest_leaf_under(cmd.message_id)
        self.record.active_leaf_id = self.tree.active_leaf_id
        self._touch()
        await self._commit([PutSession.of(self.record)])
        return self._messages(GetMessages(limit=1 << 30)).items

    async def _restore(self, cmd: RestoreCheckpoint) -> TaskHandle | str:
        if cmd.starts_task and (repeat := self._repeat(cmd)) is not None:
            return repeat
        self._check_version(cmd.if_match)
        self._require_idle()
        cp = next((c for c in self.checkpoints if c.id == cmd.checkpoint_id), None)
        if cp is None:
            raise NotFoundError(f"no checkpoint {cmd.checkpoint_id} in this session")
        if cmd.hint is None or not cmd.hint.strip():
            self.tree.active_leaf_id = cp.message_id
            self.record.active_leaf_id = cp.message_id
            self._touch()
            await self._commit([PutSession.of(self.record)])
            return cp.message_id
        # The hint becomes a user turn after the checkpoint, sent to the model as an
        # instruction: the steps before the checkpoint stand as they are, nothing is re-run.
        user = Node(new_id("msg"), cp.message_id, "user", cmd.hint, utcnow(), hint=cmd.hint)
        return await self._begin(user, cmd)

    def _repeat(self, cmd: TaskCommand[object]) -> TaskHandle | None:
        """The task a repeat of an idempotent request answers with (None: not a repeat)."""
        request = requests.find(self.record, cmd)
        if request is None:
            if cmd.repeat_only:
                raise NotFoundError("no earlier request in this session has this idempotency key")
            return None
        turn = next((t for t in (self._turn, *self._queued) if t is not None and t.task_id == request.task_id), None)
        if turn is not None:
            done = turn.done
        else:
            done = self._loop.create_future()
            done.set_result(requests.outcome(self.tree, request))
        sub = None
        if cmd.stream:
            cursor = request.cursor if cmd.last_event_id is None else max(request.cursor, cmd.last_event_id)
            if turn is None:
                # Ended: the stream replays what the log still holds and closes at its end.
                end = request.end_seq if request.end_seq is not None else self.log.last_seq
                self.hub.task_end_seq.setdefault(request.task_id, end)
                cursor = min(cursor, end)
            sub = self.hub.subscribe(cursor, task_id=request.task_id, on_reset=self.reset_cursor)
        return TaskHandle(request.task_id, request.message_id, sub, done, request.cursor, repeated=True)

    async def _begin(self, user: Node | None, cmd: TaskCommand[object], *, answer_to: str | None = None) -> TaskHandle:
        """Add ``user`` (or answer ``answer_to`` again), persist, and start or queue its task."""
        stream = cmd.stream
        ops: list[Op] = []
        queued = self._turn is not None
        if user is not None:
            self.tree.add(user, activate=not queued)
            ops.append(PutMessage.of(self.id, user))
            answer_to = user.id
        assert answer_to is not None
        # Only a message declares tools for its own task (edit, regenerate and restore do not).
        client_tools = cmd.client_tools if isinstance(cmd, SendMessage) else None
        turn = Turn(new_id("tsk"), answer_to, self._loop.create_future(), queued=queued, client_tools=client_tools)
        # Remembered in the record, which commits with the user message below.
        requests.remember(self.record, cmd, turn.task_id, answer_to, self.log.last_seq)
        if queued:
            self._queued.append(turn)
            self.record.running = [*self.record.running, RunningTask(turn.task_id, answer_to, None, turn.client_tools)]
            self._touch()
            await self._commit([*ops, PutSession.of(self.record)])
            cursor = self.log.last_seq
            sub = self.hub.subscribe(cursor, task_id=turn.task_id, on_reset=self.reset_cursor) if stream else None
            return TaskHandle(turn.task_id, answer_to, sub, turn.done, cursor)
        cursor = self.log.last_seq
        await self._start_turn(turn, ops)
        sub = self.hub.subscribe(cursor, task_id=turn.task_id, on_reset=self.reset_cursor) if stream else None
        return TaskHandle(turn.task_id, answer_to, sub, turn.done, cursor)
