"""The agent turn: the Provider the session actors talk to.

For each answer it finds the session's agent, puts the agent's system prompt and the linked
documents' most relevant passages before the conversation, and sends it through the agent's
model route. When the model calls tools it runs them (each call and result goes to the actor,
which records them as events and a checkpoint), hands the results back and asks again, until
the model answers with text.

A call that needs a person's approval (``[tools.approval]``, or the agent's ``approval``) or
that names one of the frontend's own tools (``client_tools``) is not run: it is reported with
its ``wait``, the other calls of the round run, and the turn ends with ``ToolWaitChunk``. The
actor runs it again once every call is decided, with ``request.resume``: the approved calls
run then, and the model goes on from their results.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec

from actors.agent.agents import Agents
from actors.agent.backends.base import ModelCall, ModelMessage, ModelToolCall, ProviderError, ToolSpec
from actors.agent.documents.library import DocumentLibrary
from actors.agent.router import Router
from actors.agent.tools import ToolBox, ToolContext, parse_arguments
from actors.core.model import Chunk, ModelRequest, ToolCallChunk, ToolResultChunk, ToolWaitChunk, TurnItem
from actors.core.tree import ToolWait, Usage

__all__ = ["AgentRunner"]


class AgentRunner:
    """Agents, their routes, tools and documents, behind the actor's Provider interface."""

    name = "agent"

    def __init__(
        self, agents: Agents, router: Router, tools: ToolBox, library: DocumentLibrary, *, max_rounds: int
    ) -> None:
        self.agents = agents
        self.router = router
        self.tools = tools
        self.library = library
        self.max_rounds = max_rounds

    async def _messages(self, request: ModelRequest, system_prompt: str) -> list[ModelMessage]:
        messages = [ModelMessage(role=m.role, content=m.content) for m in request.messages]
        # The actor puts the session's own system prompt first; only a session without one
        # (nothing else the actor sends comes before the first user turn as "system") gets the
        # agent's.
        has_own = bool(messages) and messages[0].role == "system"
        at = 1 if has_own else 0
        if system_prompt and not has_own:
            messages.insert(0, ModelMessage(role="system", content=system_prompt))
            at = 1
        if request.documents:
            query = next((m.content for m in reversed(messages) if m.role == "user"), "")
            passages = await self.library.context(request.documents, query)
            if passages:
                messages.insert(at, ModelMessage(role="system", content=passages))
        return messages

    def _wait(self, name: str, agent_approval: str, request: ModelRequest, client: set[str]) -> ToolWait | None:
        """Whether a call of ``name`` waits, and for what (None: it runs now)."""
        if name in request.tools and name in self.tools:
            return "approval" if self.tools.needs_approval(name, agent_approval) else None
        return "client" if name in client else None

    async def stream(self, request: ModelRequest) -> AsyncIterator[TurnItem]:
        agent = await self.agents.resolve(request.agent_id)
        messages = await self._messages(request, agent.system_prompt)
        specs = self.tools.specs(request.tools)
        # The frontend's tools, unless the server has one of that name active (it wins).
        own = {s.name for s in specs}
        client_specs = [
            ToolSpec(t.name, t.description, t.parameters) for t in request.client_tools if t.name not in own
        ]
        specs = [*specs, *client_specs]
        client = {s.name for s in client_specs}
        ctx = ToolContext(session_id=request.session_id, end_user_id=request.end_user_id, documents=request.documents)
        usage = Usage()
        model: str | None = None
        if request.resume is not None:
            messages = [*messages, ModelMessage(role="assistant", content=request.resume.text, tool_calls=[])]
            resumed = messages[-1]
            for use in request.resume.calls:
                arguments = _arguments_text(use.arguments)
                assert resumed.tool_calls is not None
                resumed.tool_calls.append(ModelToolCall(use.call_id, use.name, arguments))
                output, is_error = use.output, use.is_error
                if output is None:  # approved: it runs now
                    output, is_error = await self.tools.run(use.name, arguments, ctx, request.tools)
                    yield ToolResultChunk(use.call_id, use.name, output, is_error)
                messages.append(ModelMessage(role="tool", content=output, tool_call_id=use.call_id, name=use.name))
        for round_no in range(self.max_rounds + 1):
            text: list[str] = []
            calls: list[ModelToolCall] = []
            call = ModelCall(
                messages=messages, model="", tools=specs, temperature=agent.temperature, attempt=request.attempt
            )
            async for item in self.router.stream(agent.model, call):
                if isinstance(item, ModelToolCall):
                    calls.append(item)
                    continue
                if item.deltas:
                    text += item.deltas
                    # Pass a batch of text on as it is (the hot path), the usage kept back.
                    yield item if item.usage is None and item.model is None else Chunk(item.deltas)
                if item.usage is not None:
                    usage = usage + item.usage
                if item.model is not None:
                    model = item.model
            if not calls:
                break
            if round_no == self.max_rounds:
                raise ProviderError(f"the model still asked for tools after {self.max_rounds} rounds of them")
            messages = [*messages, ModelMessage(role="assistant", content="".join(text), tool_calls=calls)]
            waiting = False
            for tool_call in calls:
                wait = self._wait(tool_call.name, agent.approval, request, client)
                yield ToolCallChunk(tool_call.call_id, tool_call.name, parse_arguments(tool_call.arguments), wait)
                if wait is not None:
                    waiting = True
                    continue
                output, is_error = await self.tools.run(tool_call.name, tool_call.arguments, ctx, request.tools)
                yield ToolResultChunk(tool_call.call_id, tool_call.name, output, is_error)
                messages.append(
                    ModelMessage(role="tool", content=output, tool_call_id=tool_call.call_id, name=tool_call.name)
                )
            if waiting:
                yield Chunk(usage=usage, model=model)
                yield ToolWaitChunk()
                return
        yield Chunk(usage=usage, model=model)


def _arguments_text(arguments: dict[str, Any]) -> str:
    """The JSON text of a stored call's arguments (what the model wrote, if it was not an object)."""
    if set(arguments) == {"raw"} and isinstance(arguments["raw"], str):
        return arguments["raw"]
    return msgspec.json.encode(arguments).decode()
