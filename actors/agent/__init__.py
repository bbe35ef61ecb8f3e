"""The agent turn: model providers and what they are asked."""

from __future__ import annotations

from actors.agent.provider import ChatMessage, Chunk, ModelRequest, Provider
from actors.agent.simulated import SimulatedProvider

__all__ = ["ChatMessage", "Chunk", "ModelRequest", "Provider", "SimulatedProvider"]
