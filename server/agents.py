"""Builds the agent side from the configuration: providers, router, tools, documents, agents,
and the runner the session actors call; keeps them under app keys and closes them at exit."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

from aiohttp import web

from actors.agent.agents import Agents, parse_route
from actors.agent.backends.base import Backend
from actors.agent.backends.ollama import OllamaBackend
from actors.agent.backends.openai import OpenAIBackend
from actors.agent.backends.simulated import SimulatedBackend
from actors.agent.backends.upstream import UpstreamSettings
from actors.agent.documents.extract import ExtractLimits
from actors.agent.documents.library import KINDS, DocumentLibrary
from actors.agent.router import CallObserver, Router
from actors.agent.runner import AgentRunner
from actors.agent.tokens import TokenCounter, Tokenizers
from actors.agent.tools import ToolBox, builtin_tools
from actors.agent.windows import ProviderLimits, Windows
from actors.core.errors import InvalidRequestError
from actors.store.base import Store
from actors.store.tables import AgentRecord
from server.appkeys import AGENTS, LIBRARY, ROUTER, TOOLBOX
from server.config import Config, ConfigError, ProviderSection
from server.preflight import missing_key
from server.toolsetup import setup_tools

__all__ = ["build_backends", "setup_agents"]

_DEFAULT_URLS = {"openai": "https://api.openai.com/v1", "ollama": "http://127.0.0.1:11434"}


def _backend(name: str, p: ProviderSection, config: Config, counter: TokenCounter) -> Backend:
    if p.kind == "simulated":
        s = config.simulated
        return SimulatedBackend(name, tokens_per_second=s.tokens_per_second, reply_tokens=s.reply_tokens)
    if p.kind not in _DEFAULT_URLS:
        raise ConfigError(f"providers.{name}.kind {p.kind!r} is not one of openai, ollama, simulated")
    if not p.model:
        raise ConfigError(f"providers.{name}.model is required (the model a route gets from it)")
    api_key = None
    if p.api_key_env:
        api_key = os.environ.get(p.api_key_env)
        if not api_key:
            raise ConfigError(missing_key(name, p.api_key_env))
    settings = UpstreamSettings(
        base_url=p.base_url or _DEFAULT_URLS[p.kind],
        api_key=api_key,
        connect_timeout=p.connect_timeout_seconds,
        first_token_timeout=p.first_token_timeout_seconds,
        read_timeout=p.read_timeout_seconds,
        probe_timeout=config.routing.probe_timeout_seconds,
    )
    if p.kind == "openai":
        return OpenAIBackend(
            name, settings, model=p.model, counter=counter, stream_usage=p.stream_usage, max_tokens=p.max_tokens or None
        )
    return OllamaBackend(name, settings, model=p.model, counter=counter, keep_alive=p.keep_alive or None)


def build_backends(config: Config, counter: TokenCounter) -> dict[str, Backend]:
    """Every ``[providers.NAME]``, plus ``simulated`` unless a table of that name replaces it."""
    backends: dict[str, Backend] = {}
    if "simulated" not in config.providers:
        s = config.simulated
        backends["simulated"] = SimulatedBackend(tokens_per_second=s.tokens_per_second, reply_tokens=s.reply_tokens)
    for name, section in config.providers.items():
        if "/" in name:
            raise ConfigError(f"providers.{name}: a provider name cannot hold '/'")
        backends[name] = _backend(name, section, config, counter)
    return backends


def setup_agents(
    app: web.Application, config: Config, store: Store, *, observer: CallObserver | None = None
) -> AgentRunner:
    """Build the runner and its parts, keep them on ``app``, and close them at exit.

    ``observer`` is told how long each model call took and how it ended (the metrics hook).
    """
    ctx = config.context
    tokenizers = Tokenizers(config.tokenizer_dir)
    counter = tokenizers.default
    docs = config.documents
    unknown = [t for t in docs.allowed_types if t not in KINDS]
    if unknown:
        raise ConfigError(f"documents.allowed_types: unknown types {unknown} (known: {', '.join(KINDS)})")
    library = DocumentLibrary(
        store, config.data_dir / "documents", max_bytes=docs.max_bytes, allowed=docs.allowed_types,
        context_tokens=docs.context_tokens, chunk_words=max(docs.chunk_words, 10), counter=counter,
        extract=ExtractLimits(
            max_pages=docs.max_pages, max_chars=docs.max_chars, cpu_seconds=docs.extract_cpu_seconds,
            memory_bytes=docs.extract_memory_bytes, wall_seconds=docs.extract_seconds,
        ),
        max_extractions=docs.max_extractions,
    )
    toolbox = ToolBox(timeout=config.tools.timeout_seconds, approval=dict(config.tools.approval))
    for tool in builtin_tools(library):
        toolbox.register(tool)
    setup_tools(app, config, toolbox)  # MCP servers and HTTP tools
    backends = build_backends(config, counter)
    router = Router(
        backends, cooldown=config.routing.cooldown_seconds, probe_interval=config.routing.probe_interval_seconds,
        observer=observer,
    )
    configured = [
        AgentRecord(
            id=agent_id, name=a.name or agent_id, system_prompt=a.system_prompt, model=parse_route(a.model),
            tools=list(a.tools), temperature=a.temperature, approval=a.approval, source="config",
        )
        for agent_id, a in config.agents.items()
    ]
    try:
        agents = Agents(store, configured, providers=backends.keys(), tools=toolbox)
    except InvalidRequestError as exc:
        raise ConfigError(exc.detail) from None
    windows = Windows(
        {
            name: ProviderLimits(
                b.default_model,
                config.providers[name].context_window if name in config.providers else 0,
                config.providers[name].max_tokens if name in config.providers else 0,
            )
            for name, b in backends.items()
        },
        windows=ctx.windows, default_window=ctx.default_window, reserve_tokens=ctx.reserve_tokens,
    )
    runner = AgentRunner(
        agents, router, toolbox, library, max_rounds=config.tools.max_rounds, windows=windows,
        tokenizers=tokenizers, strategy=ctx.strategy, summary_tokens=ctx.summary_tokens,
    )
    app[AGENTS] = agents
    app[TOOLBOX] = toolbox
    app[LIBRARY] = library
    app[ROUTER] = router

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        library.sweep()
        router.start()
        yield
        await router.aclose()

    app.cleanup_ctx.append(lifecycle)
    return runner
