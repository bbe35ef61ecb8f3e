"""The ports of the core: what a session actor needs from the world, as Protocols.

Adapters implement them: the stores (actors/store), the agent runner and the simulated model
(actors/agent), the cluster's remote sessions (actors/cluster).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from actors.core.model import ModelRequest, TurnItem

__all__ = ["Provider"]


class Provider(Protocol):
    """Runs one answer: text deltas, tool calls and results, then usage and model name."""

    name: str

    def stream(self, request: ModelRequest) -> AsyncIterator[TurnItem]: ...
