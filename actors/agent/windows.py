"""Context windows: how many tokens each model of a route takes, and how many an answer needs.

A model's window is, in order: its provider's ``context_window`` (``[providers.NAME]``, for a
server that runs a model with a window of its own, such as Ollama's ``num_ctx``), else the
longest name in ``[context] windows`` and the built-in table below that starts the model's
name (``gpt-4o`` covers ``gpt-4o-mini-2024-07-18``; for ``org/name`` only the name counts),
else ``[context] default_window``. The room kept for the answer is the provider's
``max_tokens`` where set, else ``[context] reserve_tokens``.

A route with fallbacks is fitted to its smallest window, so whichever model answers can take
the prompt; its tokens are counted with the encoding of the route's first model.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import msgspec

from actors.store.tables import RouteEntry

__all__ = ["DEFAULT_WINDOWS", "ProviderLimits", "RouteLimits", "Windows", "window_for"]

# Tokens of prompt and answer together, by the start of the model's name (lower case).
DEFAULT_WINDOWS: dict[str, int] = {
    "gpt-5": 400_000,
    "gpt-4.1": 1_047_576,
    "gpt-4.5": 128_000,
    "gpt-4o": 128_000,
    "chatgpt-4o": 128_000,
    "gpt-4-turbo": 128_000,
    "gpt-4-1106": 128_000,
    "gpt-4-0125": 128_000,
    "gpt-4-32k": 32_768,
    "gpt-4": 8_192,
    "gpt-3.5-turbo": 16_385,
    "o1": 200_000,
    "o1-mini": 128_000,
    "o3": 200_000,
    "o4-mini": 200_000,
    "gpt-oss": 131_072,
    "llama3": 8_192,
    "llama-3": 8_192,
    "meta-llama-3": 8_192,
    "llama3.1": 131_072,
    "llama3.2": 131_072,
    "llama3.3": 131_072,
    "llama-3.1": 131_072,
    "llama-3.2": 131_072,
    "llama-3.3": 131_072,
    "meta-llama-3.1": 131_072,
    "qwen2": 32_768,
    "qwen2.5": 32_768,
    "qwen3": 40_960,
    "mistral": 32_768,
    "mixtral": 32_768,
    "mistral-nemo": 131_072,
    "gemma2": 8_192,
    "gemma-2": 8_192,
    "gemma3": 131_072,
    "gemma-3": 131_072,
    "phi3": 4_096,
    "phi4": 16_384,
    "deepseek-r1": 131_072,
    "deepseek-v3": 131_072,
    # The simulated model keeps no context of its own: its window never cuts a conversation
    # unless the operator sets one ([providers.NAME] context_window or [context] windows).
    "simulated": 1_000_000,
}


_REMEMBERED_ROUTES = 1024


def window_for(model: str, table: Mapping[str, int]) -> int | None:
    """The window of the longest name in ``table`` that starts ``model`` (None: no name does)."""
    name = model.rsplit("/", 1)[-1].lower()
    best: str | None = None
    for key in table:
        if name.startswith(key.lower()) and (best is None or len(key) > len(best)):
            best = key
    return table[best] if best is not None else None


class ProviderLimits(msgspec.Struct, frozen=True):
    """What a provider's settings say of its models' windows."""

    default_model: str
    context_window: int = 0  # 0: by the model's name
    max_tokens: int = 0  # 0: [context] reserve_tokens


class RouteLimits(msgspec.Struct, frozen=True):
    """The budget of one route: its smallest window, the room kept for the answer, and the
    model whose tokenizer counts."""

    window: int
    reserve: int
    model: str


class Windows:
    """Context windows of the configured providers' models."""

    def __init__(
        self,
        providers: Mapping[str, ProviderLimits],
        *,
        windows: Mapping[str, int] | None = None,
        default_window: int = 8192,
        reserve_tokens: int = 1024,
    ) -> None:
        self.providers = dict(providers)
        self.table = {**DEFAULT_WINDOWS, **{k.lower(): v for k, v in (windows or {}).items()}}
        self.default_window = default_window
        self.reserve_tokens = reserve_tokens
        # A route's limits, found once: the name lookup reads the whole table, on every turn.
        # Bounded: agents' routes are the API's to make.
        self._limits = functools.lru_cache(maxsize=_REMEMBERED_ROUTES)(self._limits_of)

    def _entry(self, entry: RouteEntry) -> tuple[int, int, str]:
        p = self.providers.get(entry.provider) or ProviderLimits(default_model=entry.provider)
        model = entry.model or p.default_model
        window = p.context_window or window_for(model, self.table) or self.default_window
        return window, p.max_tokens or self.reserve_tokens, model

    def for_route(self, route: Sequence[RouteEntry]) -> RouteLimits:
        return self._limits(tuple(route))

    def _limits_of(self, route: tuple[RouteEntry, ...]) -> RouteLimits:
        entries = [self._entry(e) for e in route]
        if not entries:
            return RouteLimits(self.default_window, self.reserve_tokens, "")
        window = min(w for w, _, _ in entries)
        reserve = max(r for _, r, _ in entries)
        return RouteLimits(window, reserve, entries[0][2])
