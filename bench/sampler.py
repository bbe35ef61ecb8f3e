"""A background sampler: server RSS and CPU, client CPU, and the progress line, twice a second."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from types import TracebackType

from bench.metrics import Timeline
from bench.procs import Child

__all__ = ["Sampler"]

MB = 1024 * 1024


class Sampler:
    """``async with Sampler(child, timeline, on_tick):`` samples until the block ends."""

    def __init__(
        self,
        child: Child | None,
        timeline: Timeline,
        on_tick: Callable[[Sampler], None] | None = None,
        interval: float = 0.5,
    ) -> None:
        self.child = child
        self.timeline = timeline
        self.on_tick = on_tick
        self.interval = interval
        self.max_rss = 0
        self.last_rss = 0
        self._task: asyncio.Task[None] | None = None
        self._t0 = 0.0
        self._cpu0 = 0.0
        self._loop0 = 0.0
        self._client0 = 0.0
        self._last_t = self._last_cpu = self._last_client = 0.0
        self.server_cpu = 0.0  # mean share of one core over the block
        self.server_cpu_seconds = 0.0
        self.server_loop_seconds = 0.0  # of those, the main thread's (the event loop's)
        self.client_lag_max = 0.0  # the longest the bench's loop woke up late
        self.client_cpu = 0.0

    async def __aenter__(self) -> Sampler:
        self._t0 = time.perf_counter()
        self._cpu0 = self.child.cpu_seconds() if self.child else 0.0
        self._loop0 = self.child.loop_cpu_seconds() if self.child else 0.0
        self._client0 = time.process_time()
        self.sample()
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self.sample()
        wall = max(time.perf_counter() - self._t0, 1e-9)
        if self.child is not None:
            self.server_cpu_seconds = self.child.cpu_seconds() - self._cpu0
            self.server_loop_seconds = self.child.loop_cpu_seconds() - self._loop0
            self.server_cpu = self.server_cpu_seconds / wall
        self.client_cpu = (time.process_time() - self._client0) / wall

    def sample(self, **extra: float) -> None:
        t = time.perf_counter()
        rss = self.child.rss_bytes() if self.child else 0
        if rss:
            self.last_rss = rss
            self.max_rss = max(self.max_rss, rss)
        cpu = self.child.cpu_seconds() if self.child else 0.0
        client = time.process_time()
        dt = t - self._last_t if self._last_t else 0.0
        gauges = {"rss_mb": round(rss / MB, 2), **extra}
        if dt > 0:
            gauges["server_cpu"] = round((cpu - self._last_cpu) / dt * 100, 1)
            gauges["client_cpu"] = round((client - self._last_client) / dt * 100, 1)
        self._last_t, self._last_cpu, self._last_client = t, cpu, client
        self.timeline.gauge(t, **gauges)
        if self.on_tick is not None:
            self.on_tick(self)

    async def _run(self) -> None:
        # How late the bench's own event loop wakes up: when it is late, the load generator
        # (or the machine) is saturated and the latencies measured include that.
        while True:
            t = time.perf_counter()
            await asyncio.sleep(self.interval)
            late = time.perf_counter() - t - self.interval
            self.client_lag_max = max(self.client_lag_max, late)
            self.sample(client_lag_ms=round(late * 1000, 1))
