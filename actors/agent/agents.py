"""Agents: from config.toml (``[agents.NAME]``, read-only, id = NAME) and made through the API
(``agt_...``, kept in the store). The agent with id ``default`` answers sessions that name none;
without a ``[agents.default]`` table it is the simulated model with no tools and no prompt.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Literal

import msgspec

from actors.agent.tools import ToolBox
from actors.core.errors import ConflictError, InvalidRequestError, NotFoundError
from actors.core.ids import new_id, utcnow
from actors.store.base import Store
from actors.store.tables import AgentRecord, RouteEntry

__all__ = ["DEFAULT_AGENT_ID", "Agents", "parse_route"]

DEFAULT_AGENT_ID = "default"
_MAX_NAME = 200


def parse_route(entries: Sequence[str | RouteEntry]) -> list[RouteEntry]:
    """Route entries from ``"provider"``, ``"provider/model"`` (the model may hold further
    slashes, as in ``vllm/Qwen/Qwen2.5-7B-Instruct``) or ``{provider, model}``."""
    out: list[RouteEntry] = []
    for entry in entries:
        if isinstance(entry, RouteEntry):
            out.append(entry)
        else:
            provider, _, model = entry.partition("/")
            out.append(RouteEntry(provider.strip(), model.strip() or None))
    return out


class Agents:
    """Finds, lists, creates, changes and deletes agents; checks their routes and tools."""

    def __init__(
        self, store: Store, configured: Sequence[AgentRecord], *, providers: Collection[str], tools: ToolBox
    ) -> None:
        self.store = store
        self.providers = set(providers)
        self.tools = tools
        self._config = {a.id: a for a in configured}
        if DEFAULT_AGENT_ID not in self._config:
            self._config[DEFAULT_AGENT_ID] = AgentRecord(
                id=DEFAULT_AGENT_ID, name="default", model=[RouteEntry("simulated")], source="config"
            )
        for agent in self._config.values():
            self.check(agent.model, agent.tools, agent.temperature, where=f"agents.{agent.id}")
        # API agents already read; this process is the only writer of its store's agents.
        self._cache: dict[str, AgentRecord] = {}

    @property
    def default(self) -> AgentRecord:
        return self._config[DEFAULT_AGENT_ID]

    def check(
        self, model: Sequence[RouteEntry], tools: Sequence[str], temperature: float | None, *, where: str = ""
    ) -> None:
        at = f"{where}: " if where else ""
        if not model:
            raise InvalidRequestError(f"{at}model must name at least one provider")
        for entry in model:
            if entry.provider not in self.providers:
                known = ", ".join(sorted(self.providers))
                raise InvalidRequestError(f"{at}unknown provider {entry.provider!r} in model (known: {known})")
        unknown = self.tools.unknown(tools)
        if unknown:
            raise InvalidRequestError(f"{at}unknown tools: {', '.join(unknown)}")
        if temperature is not None and not 0 <= temperature <= 2:
            raise InvalidRequestError(f"{at}temperature must be between 0 and 2")

    async def get(self, agent_id: str) -> AgentRecord:
        agent = self._config.get(agent_id) or self._cache.get(agent_id)
        if agent is None:
            agent = await self.store.get_agent(agent_id)
            if agent is None:
                raise NotFoundError(f"no agent {agent_id}")
            self._cache[agent_id] = agent
        return agent

    async def resolve(self, agent_id: str | None) -> AgentRecord:
        """The agent a session answers with: its own, else the default one."""
        return self.default if agent_id is None else await self.get(agent_id)

    async def list(self) -> list[AgentRecord]:
        return [*self._config.values(), *await self.store.list_agents()]

    async def create(
        self,
        *,
        name: str,
        system_prompt: str = "",
        model: Sequence[RouteEntry] | None = None,
        tools: Sequence[str] = (),
        temperature: float | None = None,
        approval: Literal["always", "never"] = "never",
    ) -> AgentRecord:
        route = list(model) if model is not None else list(self.default.model)
        self._check_name(name)
        self.check(route, tools, temperature)
        now = utcnow()
        agent = AgentRecord(
            id=new_id("agt"), name=name, system_prompt=system_prompt, model=route, tools=list(dict.fromkeys(tools)),
            temperature=temperature, approval=approval, source="api", created_at=now, updated_at=now,
        )
        await self.store.put_agent(agent)
        self._cache[agent.id] = agent
        return agent

    async def update(self, agent_id: str, **changes: object) -> AgentRecord:
        """Change the given fields (``temperature=None`` clears it) of an API agent."""
        agent = await self._writable(agent_id)
        updated = msgspec.structs.replace(agent, **changes, updated_at=utcnow())  # type: ignore[arg-type]
        updated.tools = list(dict.fromkeys(updated.tools))
        self._check_name(updated.name)
        self.check(updated.model, updated.tools, updated.temperature)
        await self.store.put_agent(updated)
        self._cache[agent_id] = updated
        return updated

    async def delete(self, agent_id: str) -> None:
        await self._writable(agent_id)
        await self.store.delete_agent(agent_id)
        self._cache.pop(agent_id, None)

    async def _writable(self, agent_id: str) -> AgentRecord:
        if agent_id in self._config:
            raise ConflictError(f"agent {agent_id} is defined in config.toml; change it there")
        return await self.get(agent_id)

    @staticmethod
    def _check_name(name: str) -> None:
        if not name.strip() or len(name) > _MAX_NAME:
            raise InvalidRequestError(f"name must be 1 to {_MAX_NAME} characters")
