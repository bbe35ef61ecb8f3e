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
        ChatMessage("system", f"Result of tool {use.name}({use.arguments_text()}): {use.output}", node.id)
        for use in node.tool_calls or []
        if use.output is not None
    ]
    if node.content:
        out.append(ChatMessage(node.role, node.content, node.id))
    return out


class PathPrompt:
    """The path of the session's last turn and its messages, kept with the session's tree
    (``MessageTree.memo``: a trim's new tree starts without) between turns.

    The next turn's path usually is that path and two more nodes (the answer, then the new user
    turn): it walks up from its user turn only until it meets the end of the kept path, and
    reuses the messages of everything above. A path that does not pass through it (an edit, a
    navigation elsewhere) is read whole, once. The kept path is reused only while it cannot
    have changed: no node moved since (a queued message re-attached), and every node in it
    settled (an answer still being written changes; a user turn or a finished answer never
    does): a path with an unsettled node is not kept. ``memo`` goes with every request, for
    what the model's side keeps between turns (the context window's counts). It holds no
    reference to the tree, so a passivated session's tree goes at once, not at a collection.
    """

    __slots__ = ("_end", "_messages", "_moves", "memo")

    def __init__(self) -> None:
        self.memo = PromptMemo()
        self._end: Node | None = None  # the last node of the kept path
        self._moves = 0
        self._messages: list[ChatMessage] = []

    def path(self, tree: MessageTree, user_id: str) -> list[ChatMessage]:
        """The messages of the path of ``tree`` ending at ``user_id`` (the caller's own list)."""
        end = self._end if tree.moves == self._moves else None
        new: list[Node] = []
        node_id: str | None = user_id
        while node_id is not None:
            node = tree.nodes[node_id]
            if node is end:
                break
            new.append(node)
            node_id = node.parent_id
        else:  # the kept path is not above this one
            self._messages = []
        self._moves = tree.moves
        new.reverse()
        for node in new:
            self._messages += _messages_of(node)
        messages = list(self._messages)
        if any(node.status == "running" for node in new):
            self._end, self._messages = None, []
        elif new:
            self._end = new[-1]
        return messages


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
    path = prompts.path(tree, user_id)
    # A summary hangs on a node with messages of its own (the fitter's groups are made of
    # them), so the path's messages name every node it may hang on.
    on_path: list[ContextSummary] = []
    if summaries is not None and len(summaries):
        on_path = summaries.on_path({m.node_id for m in path if m.node_id is not None})
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
        summaries=on_path,
        memo=prompts.memo,
    )
