"""Model routes with fallback, and the health of each provider.

A route is an ordered list of (provider, model). A call goes to the first healthy provider; one
that cannot be reached, times out before its first token, or answers 5xx/429 is marked
unhealthy and the call goes on to the next. Once anything was streamed there is no fallback: a
failure then ends the answer (the task fails with its partial text kept).

An unhealthy provider is skipped for ``cooldown`` seconds, then the health probe (one owned
task) asks it again every ``probe_interval`` seconds until it answers. If every provider of a
route is unhealthy, they are tried anyway, in order: a stale mark should not refuse a call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Protocol

import msgspec

from actors.agent.backends.base import Backend, ModelCall, ModelItem, ProviderError, ProviderUnavailableError
from actors.agent.backends.upstream import describe
from actors.core.model import Chunk
from actors.store.tables import RouteEntry

__all__ = ["CallObserver", "ProviderHealth", "Router", "model_label"]

log = logging.getLogger("sessiond.router")


def model_label(provider: str, model: str) -> str:
    """How an answer names its model: ``provider/model`` (just ``simulated`` for the simulated one)."""
    return provider if not model or model == provider else f"{provider}/{model}"


class CallObserver(Protocol):
    """Told how each model call went (the metrics): timed here, not by a wrapping generator,
    so a chunk passes one layer fewer on its way to the session."""

    def first_chunk(self, provider: str, seconds: float) -> None: ...

    def call_ended(self, provider: str, seconds: float, error: str | None, *, cancelled: bool) -> None: ...


class ProviderHealth(msgspec.Struct):
    """What the router knows of one provider (GET /v1/providers shows it)."""

    name: str
    kind: str
    healthy: bool = True
    reason: str | None = None  # why it was marked unhealthy
    retry_in: float | None = None  # seconds until the next probe


class _Health:
    __slots__ = ("healthy", "reason", "until", "up")

    def __init__(self) -> None:
        self.healthy = True
        self.until = 0.0
        self.reason = ""
        self.up = asyncio.Event()
        self.up.set()


class Router:
    """Streams a call through a route; owns the health probe task."""

    def __init__(
        self,
        backends: Mapping[str, Backend],
        *,
        cooldown: float,
        probe_interval: float,
        observer: CallObserver | None = None,
    ) -> None:
        self.backends = dict(backends)
        self._observer = observer
        self._health = {name: _Health() for name in self.backends}
        self.cooldown = cooldown
        self.probe_interval = probe_interval
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._probe_loop(), name="provider-health-probe")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
            self._task = None
        for backend in self.backends.values():
            await backend.aclose()

    # -- health ----------------------------------------------------------------------------

    def is_healthy(self, provider: str) -> bool:
        return self._health[provider].healthy

    def health(self) -> list[ProviderHealth]:
        now = asyncio.get_running_loop().time()
        out = []
        for name, h in self._health.items():
            retry = None if h.healthy else max(h.until - now, 0.0)
            out.append(ProviderHealth(name, self.backends[name].kind, h.healthy, h.reason or None, retry))
        return out

    def mark_down(self, provider: str, reason: str) -> None:
        h = self._health[provider]
        if h.healthy:
            log.warning("provider %s is unhealthy for %gs: %s", provider, self.cooldown, reason)
        h.healthy = False
        h.reason = reason
        h.until = asyncio.get_running_loop().time() + self.cooldown
        h.up.clear()
        self._wake.set()

    def mark_up(self, provider: str) -> None:
        h = self._health[provider]
        if not h.healthy:
            log.info("provider %s is healthy again", provider)
        h.healthy = True
        h.reason = ""
        h.up.set()

    async def wait_healthy(self, provider: str) -> None:
        """Return once ``provider`` is healthy (at once if it is)."""
        await self._health[provider].up.wait()

    async def probe(self, provider: str) -> bool:
        """Ask ``provider`` whether it is up; mark it accordingly."""
        try:
            await self.backends[provider].probe()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            h = self._health[provider]
            h.reason = f"health probe: {describe(exc)}"
            h.until = asyncio.get_running_loop().time() + self.probe_interval
            return False
        self.mark_up(provider)
        return True

    async def probe_due(self) -> None:
        """Probe every unhealthy provider whose cool-down is over."""
        now = asyncio.get_running_loop().time()
        due = [n for n, h in self._health.items() if not h.healthy and h.until <= now]
        await asyncio.gather(*(self.probe(n) for n in due))

    async def _probe_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.probe_due()
            waits = [h.until for h in self._health.values() if not h.healthy]
            self._wake.clear()
            # Sleep until the next cool-down ends, or until a provider is marked down.
            timeout = max(min(waits) - loop.time(), 0.0) if waits else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    # -- calls -----------------------------------------------------------------------------

    def check_route(self, route: Sequence[RouteEntry]) -> None:
        """Raise ``KeyError`` naming the first provider of ``route`` that is not configured."""
        for entry in route:
            if entry.provider not in self.backends:
                raise KeyError(entry.provider)

    async def stream(self, route: Sequence[RouteEntry], call: ModelCall) -> AsyncIterator[ModelItem]:
        """The answer of the first model of ``route`` that takes the call."""
        for entry in route:
            if entry.provider not in self.backends:  # an agent made before its provider was removed
                raise ProviderError(f"the route names the provider {entry.provider!r}, which is not configured")
        entries = [e for e in route if self._health[e.provider].healthy]
        if not entries:
            entries = list(route)  # all marked down: try them anyway rather than refuse
        failures: list[str] = []
        observer = self._observer
        for entry in entries:
            backend = self.backends[entry.provider]
            attempt = msgspec.structs.replace(call, model=entry.model or backend.default_model)
            started = False
            error: str | None = None
            cancelled = False
            began = time.perf_counter()
            try:
                async with contextlib.aclosing(backend.stream(attempt)) as items:  # type: ignore[type-var]
                    async for item in items:
                        if not started:
                            started = True
                            if observer is not None:
                                observer.first_chunk(entry.provider, time.perf_counter() - began)
                        if isinstance(item, Chunk) and item.model is not None:
                            item = Chunk(item.deltas, item.usage, model_label(entry.provider, item.model))
                        yield item
            except ProviderUnavailableError as exc:
                error = type(exc).__name__
                if started:  # never fall back once the answer began
                    raise ProviderError(str(exc)) from exc
                self.mark_down(entry.provider, str(exc))
                failures.append(str(exc))
                log.warning("model %s unavailable, trying the next one: %s", entry.provider, exc)
                continue
            except Exception as exc:
                error = type(exc).__name__
                raise
            except BaseException:  # cancelled, or the consumer stopped early (GeneratorExit)
                cancelled = True
                raise
            finally:
                if observer is not None:
                    observer.call_ended(entry.provider, time.perf_counter() - began, error, cancelled=cancelled)
            if self._health[entry.provider].healthy is False:
                self.mark_up(entry.provider)  # it answered after all
            return
        tried = {e.provider for e in entries}
        failures += [
            f"{e.provider}: skipped while unhealthy ({self._health[e.provider].reason})"
            for e in route if e.provider not in tried
        ]
        raise ProviderError("no model of the route answered: " + "; ".join(failures))
