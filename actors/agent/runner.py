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

Before each call the prompt is fitted into the route's context window (actors/agent/fitting.py):
the oldest turns are dropped, or summarised once by the agent's own model (the summary goes to
the actor as ``SummaryChunk``, which keeps it as a hidden node for the next turns).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Literal

from actors.agent.agents import Agents
from actors.agent.backends.base import ModelCall, ModelMessage, ModelToolCall, ProviderError, ToolSpec
from actors.agent.documents.library import DocumentLibrary
from actors.agent.fitting import Fitter, PathGroups, SummaryPlan, summary_prompt
from actors.agent.router import Router
from actors.agent.tokens import TokenCounter, Tokenizers
from actors.agent.tools import ToolBox, ToolContext, parse_arguments
from actors.agent.windows import Windows
from actors.core.ids import new_id, utcnow
from actors.core.model import (
    Chunk,
    ModelRequest,
    SummaryChunk,
    ToolCallChunk,
    ToolResultChunk,
    ToolWaitChunk,
    TurnItem,
)
from actors.core.summary import ContextSummary
from actors.core.tree import ToolWait, Usage
from actors.store.tables import AgentRecord

__all__ = ["AgentRunner", "ContextStrategy"]

log = logging.getLogger("sessiond.agent")

ContextStrategy = Literal["truncate", "summarize"]


class AgentRunner:
    """Agents, their routes, tools and documents, behind the actor's Provider interface."""

    name = "agent"

    def __init__(
        self,
        agents: Agents,
        router: Router,
        tools: ToolBox,
        library: DocumentLibrary,
        *,
        max_rounds: int,
        windows: Windows | None = None,
        tokenizers: Tokenizers | None = None,
        strategy: ContextStrategy = "truncate",
        summary_tokens: int = 512,
    ) -> None:
        self.agents = agents
        self.router = router
        self.tools = tools
        self.library = library
        self.max_rounds = max_rounds
        self.windows = windows or Windows({})
        self.tokenizers = tokenizers or Tokenizers()
        self.strategy: ContextStrategy = strategy
        self.summary_tokens = summary_tokens

    async def _prompt(
        self, request: ModelRequest, system_prompt: str, counter: TokenCounter
    ) -> tuple[list[ModelMessage], PathGroups]:
        """The head (system prompt, documents' passages) and the path, grouped by node and
        counted (what the session's memo kept of it from its last turn is reused)."""
        chat = request.messages
        head: list[ModelMessage] = []
        # The actor puts the session's own system prompt first (the one message of no node);
        # only a session without one gets the agent's.
        if chat and chat[0].node_id is None and chat[0].role == "system":
            head.append(ModelMessage(role="system", content=chat[0].content))
            chat = chat[1:]
        elif system_prompt:
            head.append(ModelMessage(role="system", content=system_prompt))
        memo = request.memo
        path = PathGroups.of(memo.fitted if memo is not None else None, chat, counter)
        if memo is not None:
            memo.fitted = path
        if request.documents:
            query = next((m.content for m in reversed(chat) if m.role == "user"), "")
            passages = await self.library.context(request.documents, query)
            if passages:
                head.append(ModelMessage(role="system", content=passages))
        return head, path

    async def _summarize(
        self, agent: AgentRecord, plan: SummaryPlan, counter: TokenCounter
    ) -> ContextSummary | None:
        """Ask the agent's own model for the summary ``plan`` describes (None if it fails)."""
        call = ModelCall(messages=summary_prompt(plan, self.summary_tokens), model="", temperature=agent.temperature)
        text: list[str] = []
        usage = Usage()
        model: str | None = None
        try:
            async for item in self.router.stream(agent.model, call):
                if isinstance(item, ModelToolCall):
                    continue
                text += item.deltas
                if item.usage is not None:
                    usage = usage + item.usage
                if item.model is not None:
                    model = item.model
        except ProviderError as exc:
            log.warning("the summary of older turns failed, they are dropped instead: %s", exc)
            return None
        content = counter.clip("".join(text).strip(), self.summary_tokens)
        if not content:
            return None
        return ContextSummary(
            id=new_id("sum"), through_id=plan.through_id, digest=plan.digest, content=content,
            created_at=utcnow(), covered=plan.covered, model=model, usage=usage,
        )

    def _wait(self, name: str, agent_approval: str, request: ModelRequest, client: set[str]) -> ToolWait | None:
        """Whether a call of ``name`` waits, and for what (None: it runs now)."""
        if name in request.tools and name in self.tools:
            return "approval" if self.tools.needs_approval(name, agent_approval) else None
        return "client" if name in client else None

    async def stream(self, request: ModelRequest) -> AsyncIterator[TurnItem]:
        agent = await self.agents.resolve(request.agent_id)
        limits = self.windows.for_route(agent.model)
        counter = self.tokenizers.for_model(limits.model)
        await counter.load()
        head, path = await self._prompt(request, agent.system_prompt, counter)
        specs = self.tools.specs(request.tools)
        # The frontend's tools, unless the server has one of that name active (it wins).
        own = {s.name for s in specs}
        client_specs = [
            ToolSpec(t.name, t.description, t.parameters) for t in request.client_tools if t.name not in own
        ]
        specs = [*specs, *client_specs]
        client = {s.name for s in client_specs}
        ctx = ToolContext(session_id=request.session_id, end_user_id=request.end_user_id, documents=request.documents)
        fitter = Fitter(head, path, limits=limits, counter=counter, tools=specs)
        usage = Usage()
        model: str | None = None
        if self.strategy == "summarize":
            plan = fitter.summarize(request.summaries, self.summary_tokens)
            if plan is not None:
                summary = await self._summarize(agent, plan, counter)
                if summary is None:
                    fitter.truncate()
                else:
                    usage = usage + summary.usage
                    yield SummaryChunk(summary)
                    fitter.use(summary, fitter.start)
        if fitter.dropped:
            log.debug(
                "session %s: %d older messages %s to fit the context window of %d tokens",
                request.session_id, fitter.dropped, "summarised" if fitter.summary else "left out", limits.window,
            )
        # What the turn itself adds (a resumed answer, tool calls and results) is never dropped.
        messages: list[ModelMessage] = []
        if request.resume is not None:
            messages = [ModelMessage(role="assistant", content=request.resume.text, tool_calls=[])]
            resumed = messages[-1]
            for use in request.resume.calls:
                arguments = use.arguments_text()
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
            fitter.truncate(messages)
            call = ModelCall(
                messages=fitter.messages(messages), model="", tools=specs, temperature=agent.temperature,
                attempt=request.attempt, prompt_bound=fitter.bound(messages),
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

