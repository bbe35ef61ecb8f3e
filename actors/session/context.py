"""What a turn sends the model: the session's active path up to the user turn it answers.

Read by the actor when the turn starts (the tree may change while the model writes).
"""

from __future__ import annotations

from actors.core.model import ChatMessage, ModelRequest, Resume
from actors.core.records import ClientTool, SessionRecord
from actors.core.tree import MessageTree
from actors.session.summaries import Summaries

__all__ = ["model_request"]


def model_request(
    record: SessionRecord,
    tree: MessageTree,
    user_id: str,
    *,
    client_tools: list[ClientTool] | None = None,
    resume: Resume | None = None,
    summaries: Summaries | None = None,
) -> ModelRequest:
    """The request answering ``user_id``: system prompt, then the path, with restore hints and
    earlier tool results as system text (so a restore never re-runs a tool). ``client_tools``
    are the task's own, after the session's (same name: the task's wins); ``resume`` is where a
    turn that waited on tool calls goes on. Each message names the node it comes from, and
    ``summaries`` gives the hidden summaries on the path, for the runner to fit the path into
    the model's context window."""
    declared = {t.name: t for t in [*record.client_tools, *(client_tools or [])]}
    messages: list[ChatMessage] = []
    if record.system_prompt:
        messages.append(ChatMessage("system", record.system_prompt))
    path = tree.path_to(user_id)
    for node in path:
        if node.hint is not None:
            messages.append(ChatMessage("system", f"Instruction for the next answer: {node.hint}", node.id))
            continue
        for use in node.tool_calls or []:
            if use.output is not None:
                text = f"Result of tool {use.name}({use.arguments}): {use.output}"
                messages.append(ChatMessage("system", text, node.id))
        if node.content:
            messages.append(ChatMessage(node.role, node.content, node.id))
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
        summaries=summaries.on_path(n.id for n in path) if summaries is not None else [],
    )
