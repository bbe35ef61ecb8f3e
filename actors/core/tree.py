"""MessageTree: a conversation as a tree of messages (edits and regenerations are siblings).

Pure data structure: no asyncio, no storage. The session actor is its only writer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import msgspec

__all__ = ["MessageTree", "Node", "NodeStatus", "Role", "ToolUse", "ToolWait", "Usage"]

Role = Literal["user", "assistant"]
NodeStatus = Literal["completed", "running", "cancelled", "failed", "interrupted"]
"""A message's state: ``running`` while its answer is written, then how its task ended."""


class Usage(msgspec.Struct, frozen=True, omit_defaults=False):
    """Token counts of one model call or a sum of them."""

    prompt: int = 0
    completion: int = 0
    total: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt + other.prompt,
            self.completion + other.completion,
            self.total + other.total,
        )


ToolWait = Literal["approval", "client", "approved"]
"""Why a call has no output yet: it waits for a person's approval, for the frontend's result,
or it was approved and runs when the turn goes on."""


class ToolUse(msgspec.Struct):
    call_id: str
    name: str
    arguments: dict[str, Any]
    output: str | None = None
    is_error: bool = False
    # Set while the call waits; kept with the message, so a restart finds it waiting.
    wait: ToolWait | None = None
    expires_at: float | None = None  # wall clock (epoch seconds) when the wait fails the task

    def arguments_text(self) -> str:
        """The arguments as the model wrote them: JSON text (or the text itself, kept as
        ``{"raw": text}``, when it was not a JSON object)."""
        args = self.arguments
        if set(args) == {"raw"} and isinstance(args["raw"], str):
            return args["raw"]
        return msgspec.json.encode(args).decode()


class Node(msgspec.Struct):
    """One message. ``children`` keeps sibling order: oldest first."""

    id: str
    parent_id: str | None
    role: Role
    content: str
    created_at: str
    status: NodeStatus = "completed"
    task_id: str | None = None
    model: str | None = None
    usage: Usage | None = None
    # An instruction given with a checkpoint restore ("hint"), kept on the user turn it steered.
    hint: str | None = None
    # Tool calls made while writing this answer, each with its result (kept for history,
    # export, and as context for later answers, so a restore never re-runs them).
    tool_calls: list[ToolUse] | None = None
    children: list[str] = msgspec.field(default_factory=list)


class MessageTree:
    """Nodes by id, roots in creation order, and the active leaf that picks the visible branch."""

    __slots__ = ("active_leaf_id", "memo", "moves", "nodes", "roots")

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.roots: list[str] = []
        self.active_leaf_id: str | None = None
        self.moves = 0  # how many times a node was re-attached (a path read before may be stale)
        self.memo: object = None  # what the tree's reader keeps between reads (the actor's PathPrompt)

    @classmethod
    def from_nodes(cls, nodes: Iterable[Node], active_leaf_id: str | None) -> MessageTree:
        """Rebuild from nodes in creation order (children lists are recomputed)."""
        tree = cls()
        for node in nodes:
            node.children = []
            tree._link(node)
        tree.active_leaf_id = active_leaf_id if active_leaf_id in tree.nodes else None
        return tree

    def __len__(self) -> int:
        return len(self.nodes)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.nodes

    def get(self, node_id: str) -> Node | None:
        return self.nodes.get(node_id)

    def _link(self, node: Node) -> None:
        if node.parent_id is None:
            self.roots.append(node.id)
        else:
            self.nodes[node.parent_id].children.append(node.id)
        self.nodes[node.id] = node

    def add(self, node: Node, *, activate: bool = True) -> Node:
        """Append ``node`` under its parent (which must exist); make it the active leaf."""
        if node.id in self.nodes:
            raise KeyError(f"duplicate node {node.id}")
        if node.parent_id is not None and node.parent_id not in self.nodes:
            raise KeyError(f"unknown parent {node.parent_id}")
        self._link(node)
        if activate:
            self.active_leaf_id = node.id
        return node

    def move(self, node_id: str, new_parent_id: str) -> None:
        """Re-attach a leaf under another parent (a queued message taking its place)."""
        node = self.nodes[node_id]
        if node.children:
            raise ValueError("only a leaf can move")
        self.siblings(node_id).remove(node_id)
        node.parent_id = new_parent_id
        self.moves += 1
        self.nodes[new_parent_id].children.append(node_id)

    def siblings(self, node_id: str) -> list[str]:
        parent_id = self.nodes[node_id].parent_id
        return self.roots if parent_id is None else self.nodes[parent_id].children

    def sibling_position(self, node_id: str) -> tuple[int, int]:
        """(index, count) among the node's siblings, for a "< 2/3 >" control."""
        sibs = self.siblings(node_id)
        return sibs.index(node_id), len(sibs)

    def path_to(self, node_id: str | None) -> list[Node]:
        """Root-first path ending at ``node_id`` (empty for None)."""
        path: list[Node] = []
        while node_id is not None:
            node = self.nodes[node_id]
            path.append(node)
            node_id = node.parent_id
        path.reverse()
        return path

    def active_path(self) -> list[Node]:
        return self.path_to(self.active_leaf_id)

    def newest_leaf_under(self, node_id: str) -> str:
        """Follow the newest child down to a leaf: what "show this version" selects."""
        node = self.nodes[node_id]
        while node.children:
            node = self.nodes[node.children[-1]]
        return node.id

    def in_order(self) -> list[Node]:
        """Every node, parents before children, siblings oldest first."""
        out: list[Node] = []
        stack = list(reversed(self.roots))
        while stack:
            node = self.nodes[stack.pop()]
            out.append(node)
            stack.extend(reversed(node.children))
        return out
