"""The doctor's look at each model provider: its key is set, it lists models, and it lists ours.

``GET {base_url}/models`` (OpenAI) or ``GET {base_url}/api/tags`` (Ollama), with the key serve
would send; the provider is fine only when that answers 200 and names every model the
configuration asks of it (its ``model`` and those the agents' routes name).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from actors.agent.agents import parse_route
from server.config import Config, ProviderSection
from server.preflight import FAIL, OK, Check, missing_key

__all__ = ["DEFAULT_URLS", "check_provider", "check_providers", "wanted_models"]

DEFAULT_URLS = {"openai": "https://api.openai.com/v1", "ollama": "http://127.0.0.1:11434"}


def wanted_models(config: Config, name: str) -> list[str]:
    """The models the configuration asks of provider ``name``, its own ``model`` first."""
    own = config.providers[name].model
    wanted = [own] if own else []
    for agent in config.agents.values():
        for entry in parse_route(agent.model):
            if entry.provider == name and entry.model and entry.model not in wanted:
                wanted.append(entry.model)
    return wanted


def _listed(kind: str, body: Any) -> set[str]:
    if kind == "ollama":
        names = {m.get("name", "") for m in body.get("models", []) if isinstance(m, dict)}
        # Ollama lists "llama3:latest" for a model pulled and asked for as "llama3".
        return names | {n.removesuffix(":latest") for n in names}
    return {m.get("id", "") for m in body.get("data", []) if isinstance(m, dict)}


async def check_provider(name: str, p: ProviderSection, wanted: list[str]) -> Check:
    import aiohttp

    setting = f"[providers.{name}]"
    headers = {}
    if p.api_key_env:
        key = os.environ.get(p.api_key_env)
        if not key:
            return Check(FAIL, "provider", missing_key(name, p.api_key_env))
        headers["Authorization"] = f"Bearer {key}"
    base = (p.base_url or DEFAULT_URLS.get(p.kind, "")).rstrip("/")
    url = base + ("/api/tags" if p.kind == "ollama" else "/models")
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=8)) as http:
            async with http.get(url, headers=headers, allow_redirects=False) as resp:
                status = resp.status
                body = await resp.json(content_type=None) if status == 200 else None
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        return Check(FAIL, "provider", f"{setting} {url} does not answer: {exc or type(exc).__name__}")
    if status in (401, 403):
        where = f"the key in ${p.api_key_env}" if p.api_key_env else "no key (api_key_env is not set)"
        return Check(FAIL, "provider", f"{setting} {url} refused {where} (HTTP {status})")
    if status != 200 or not isinstance(body, dict):
        return Check(FAIL, "provider", f"{setting} {url} answered HTTP {status}, not a list of models: check base_url")
    listed = _listed(p.kind, body)
    missing = [m for m in wanted if m not in listed]
    if missing:
        shown = ", ".join(sorted(listed)[:5]) or "none"
        return Check(
            FAIL, "provider",
            f"{setting} {url} does not list {', '.join(repr(m) for m in missing)} (it lists {len(listed)}: {shown})",
        )
    return Check(OK, "provider", f"{setting} {url} answers and lists {', '.join(repr(m) for m in wanted)}")


async def check_providers(config: Config) -> list[Check]:
    remote = {n: p for n, p in config.providers.items() if p.kind != "simulated"}
    if not remote:
        return [Check(OK, "provider", "the built-in simulated model: nothing to reach")]
    return list(await asyncio.gather(*(check_provider(n, p, wanted_models(config, n)) for n, p in remote.items())))
