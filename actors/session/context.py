"""What a turn sends the model: the session's active path up to the user turn it answers.

Read by the actor when the turn starts (the tree may change while the model writes). The actor
keeps the last path it read (``PathPrompt``), so a turn builds only the messages added since.
"""

from __future__ import annotations

from actors.core.model import ChatMessage, ModelRequest, PromptMemo, Resume
from actors.core.records import ClientTool, SessionRecord
from actors.core.summary import ContextSummary
from actors.core.tree import MessageTree, Node
from actors.session.summaries import Summaries

__all__ = ["PathPrompt", "model_request"]


def _messages_of(node: Node) -> list[ChatMessage]:
    """A node as the model reads it: its restore hint, or its tool results and its text."""
    if node.hint is not None:
        return [ChatMessage("system", f"Instruction for the next answer: {node.hint}", node.id)]
    out = [
        ChatMessage("system", f"Result of tool {use.name}({use.arguments}): {use.output}", node.id)
        for use in node.tool_calls or []
        if use.output is not None
    ]
    if node.content:
        out.append(ChatMessage(node.role, node.content, node.id))
    return out


class PathPrompt:
    """The path of the session's last turn and its messages, kept by the actor between turns.

    The next turn's path usually is that path and two more nodes (the answer, then the new user
    turn): it walks up from its user turn only until it meets the kept path, and reuses the
    messages of everything above. A part of the kept path is reused only while it cannot have
    changed: the same tree (a trim builds a new one), no node moved since (a queued message
    re-attached), and every node in it settled (an answer still being written changes; a user
    turn or a finished answer never does). ``memo`` goes with every request, for what the
    model's side keeps between turns (the context window's counts).
    """

    __slots__ = ("_ends", "_index", "_messages", "_moves", "_nodes", "_settled", "_tree", "memo")

    def __init__(self) -> None:
        self.memo = PromptMemo()
        self._reset(None)

    def _reset(self, tree: MessageTree | None) -> None:
        self._tree = tree
        self._moves = tree.moves if tree is not None else 0
        self._nodes: list[Node] = []
        self._ends: list[int] = []  # after node i, the number of messages so far
        self._messages: list[ChatMessage] = []
        self._index: dict[str, int] = {}  # node id -> its place in _nodes
        self._settled = 0  # _nodes[:_settled] are settled

    def path(self, tree: MessageTree, user_id: str) -> tuple[list[ChatMessage], int]:
        """The messages of the path ending at ``user_id`` (the caller's own list), and how
        many nodes the path has."""
        if tree is not self._tree or tree.moves != self._moves:
            self._reset(tree)
        new: list[Node] = []
        keep = 0
        node_id: str | None = user_id
        while node_id is not None:
            node = tree.nodes[node_id]
            at = self._index.get(node_id)
            if at is not None and at < self._settled and self._nodes[at] is node:
                keep = at + 1
                break
            new.append(node)
            node_id = node.parent_id
        if keep < len(self._nodes):
            for gone in self._nodes[keep:]:
                del self._index[gone.id]
            del self._nodes[keep:]
            del self._messages[self._ends[keep - 1] if keep else 0 :]
            del self._ends[keep:]
            self._settled = keep
        for node in reversed(new):
            self._index[node.id] = len(self._nodes)
            self._nodes.append(node)
            self._messages += _messages_of(node)
            self._ends.append(len(self._messages))
            if self._settled == len(self._nodes) - 1 and node.status != "running":
                self._settled += 1
        return list(self._messages), len(self._nodes)

    def on_path(self, summaries: Summaries) -> list[ContextSummary]:
        """Which of ``summaries`` hang on a node of the path last read."""
        return summaries.on_path(self._index) if len(summaries) else []


def model_request(
    record: SessionRecord,
    tree: MessageTree,
    user_id: str,
    *,
    client_tools: list[ClientTool] | None = None,
    resume: Resume | None = None,
    summaries: Summaries | None = None,
    prompts: PathPrompt | None = None,
) -> ModelRequest:
    """The request answering ``user_id``: system prompt, then the path, with restore hints and
    earlier tool results as system text (so a restore never re-runs a tool). ``client_tools``
    are the task's own, after the session's (same name: the task's wins); ``resume`` is where a
    turn that waited on tool calls goes on. Each message names the node it comes from, and
    ``summaries`` gives the hidden summaries on the path, for the runner to fit the path into
    the model's context window. ``prompts`` is the actor's ``PathPrompt`` (without one, the
    whole path is read)."""
    declared = {t.name: t for t in [*record.client_tools, *(client_tools or [])]}
    prompts = prompts or PathPrompt()
    path, _ = prompts.path(tree, user_id)
    messages = [ChatMessage("system", record.system_prompt), *path] if record.system_prompt else path
    return ModelRequest(
        messages=messages,
        tools=list(record.tools),
        session_id=record.id,
        agent_id=record.agent_id,
        documents=list(record.documents),
        end_user_id=record.end_user_id,
        # The answer being written is already a child of the user turn: the others came before.
        attempt=max(sum(1 for c in tree.nodes[user_id].children if tree.nodes[c].role == "assistant") - 1, 0),
        client_tools=list(declared.values()),
        resume=resume,
        summaries=prompts.on_path(summaries) if summaries is not None else [],
        memo=prompts.memo,
    )
