"""Agents and model providers: the bodies of create and patch, and the lists answered."""

from __future__ import annotations

from typing import Literal

import msgspec

from actors.agent.router import ProviderHealth
from actors.store.tables import AgentRecord, RouteEntry
from server.schema.common import RequestBody

__all__ = ["AgentBody", "AgentList", "AgentPatchBody", "ProviderList"]


class AgentBody(RequestBody):
    name: str
    system_prompt: str = ""
    model: list[str | RouteEntry] | None = None  # None: the default agent's route
    tools: list[str] = msgspec.field(default_factory=list)
    temperature: float | None = None
    approval: Literal["always", "never"] = "never"  # "always": every tool call waits for a person


class AgentPatchBody(RequestBody):
    name: str | msgspec.UnsetType = msgspec.UNSET
    system_prompt: str | msgspec.UnsetType = msgspec.UNSET
    model: list[str | RouteEntry] | msgspec.UnsetType = msgspec.UNSET
    tools: list[str] | msgspec.UnsetType = msgspec.UNSET
    temperature: float | msgspec.UnsetType | None = msgspec.UNSET
    approval: Literal["always", "never"] | msgspec.UnsetType = msgspec.UNSET


class AgentList(msgspec.Struct):
    items: list[AgentRecord]


class ProviderList(msgspec.Struct):
    items: list[ProviderHealth]
