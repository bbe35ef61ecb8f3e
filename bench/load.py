"""The load driver shared by stream, overload and soak: C clients, each its own session.

Each client creates a session, then sends messages with ``stream: true`` and reads each
task stream to its end, until it sent M messages or the time is up (a message in flight
then finishes). Clients start spread over the ramp-up. Every loop is bounded in count and
in time, and the whole run has a hard deadline after which clients are cancelled.

Delivery lag of a paced reply (``rate`` tokens/s) is measured without server clocks: the
simulated model schedules token i at start + i/rate with no drift, so for each token the
client computes receipt time - i/rate; the smallest value in a reply is the moment the
schedule started as seen by the fastest token, and each token's lag is its excess over
that. It is a lower bound on the true lag (the fastest token's own delay is not seen), and
exact for jitter, which is what overload adds.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp

from bench.client import Api, TaskRead, now, read_task
from bench.metrics import Timeline

__all__ = ["LoadResult", "LoadSpec", "drive"]


class LoadSpec:
    def __init__(
        self,
        *,
        clients: int,
        messages: int,
        duration: float,
        ramp: float,
        rate: float,
        interval: float = 0.0,
        retry_refused: bool = False,
        grace: float = 120.0,
    ) -> None:
        self.clients = clients
        self.messages = messages
        self.duration = duration
        self.ramp = ramp
        self.rate = rate  # model tokens/s, for the lag computation (0 = unpaced)
        self.interval = interval  # seconds between a client's sends (0 = back to back)
        self.retry_refused = retry_refused  # wait Retry-After after a 503 and send again
        self.grace = grace


class LoadResult:
    def __init__(self) -> None:
        self.events = 0
        self.messages = 0
        self.sessions = 0
        self.errors: Counter[str] = Counter()
        self.refused = 0
        self.ttft: list[float] = []
        self.full: list[float] = []
        self.lag: list[float] = []
        self.refused_latency: list[float] = []
        self.elapsed = 0.0
        self.unfinished = 0
        self.admitted_clients = 0

    @property
    def events_per_s(self) -> float:
        return self.events / self.elapsed if self.elapsed > 0 else 0.0

    def error_text(self) -> str:
        return ", ".join(f"{k}: {v}" for k, v in self.errors.most_common()) or "0"


async def drive(
    api: Api, spec: LoadSpec, timeline: Timeline, *, content: Callable[[int, int], str] | None = None
) -> LoadResult:
    res = LoadResult()
    t0 = now()
    deadline = t0 + spec.ramp + spec.duration

    def count(t: float, n: int) -> None:
        res.events += n
        timeline.events(t, n)

    def record(t_send: float, read: TaskRead) -> None:
        res.messages += 1
        if read.first_delta is not None:
            res.ttft.append(read.first_delta - t_send)
            timeline.sample("ttft", read.first_delta, read.first_delta - t_send)
        if read.end is not None and read.terminal == b"task.completed":
            res.full.append(read.end - t_send)
            timeline.sample("full", read.end, read.end - t_send)
        elif read.terminal:
            res.errors[read.terminal.decode()] += 1
        else:
            res.errors["stream ended early"] += 1
        points = read.lag_points
        if points:
            base = min(points)
            lags = [p - base for p in points]
            res.lag.extend(lags)
            timeline.samples("lag", read.end or now(), lags)

    async def client(i: int) -> None:
        if spec.ramp > 0 and spec.clients > 1:
            await asyncio.sleep(spec.ramp * i / spec.clients)
        try:
            sid = await api.create_session()
        except (aiohttp.ClientError, OSError, RuntimeError) as exc:
            res.errors[f"create: {type(exc).__name__}"] += 1
            return
        res.sessions += 1
        admitted = False
        start = now()
        n = 0
        attempts = 0
        # Bounded: at most `messages` sends, each attempt counted, and never past the deadline.
        while n < spec.messages and attempts < spec.messages * 1000 and now() < deadline:
            attempts += 1
            if spec.interval > 0:
                wait = start + n * spec.interval - now()
                if wait > 0:
                    await asyncio.sleep(min(wait, max(deadline - now(), 0)))
                    if now() >= deadline:
                        break
            t_send = now()
            text = content(i, n) if content else f"message {n} from client {i}"
            try:
                async with api.send(sid, text) as resp:
                    if resp.status == 503:
                        await resp.read()
                        res.refused += 1
                        res.refused_latency.append(now() - t_send)
                        timeline.sample("refused", now(), now() - t_send)
                        if not spec.retry_refused:
                            res.errors["503"] += 1
                            n += 1
                            continue
                        retry = float(resp.headers.get("Retry-After", "1"))
                        await asyncio.sleep(min(retry, max(deadline - now(), 0)))
                        continue
                    if resp.status != 200:
                        # The problem's code says which 4xx/5xx it was (the reference has none).
                        body = await resp.read()
                        try:
                            problem = json.loads(body)
                        except ValueError:
                            problem = None
                        code = problem.get("code", "") if isinstance(problem, dict) else ""
                        res.errors[f"{resp.status} {code}".strip()] += 1
                        n += 1
                        continue
                    admitted = True
                    read = await read_task(resp, rate=spec.rate, on_events=count)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                res.errors[type(exc).__name__] += 1
                n += 1
                continue
            record(t_send, read)
            n += 1
        if admitted:
            res.admitted_clients += 1

    tasks = [asyncio.ensure_future(client(i)) for i in range(spec.clients)]
    done, pending = await asyncio.wait(tasks, timeout=spec.ramp + spec.duration + spec.grace)
    for task in pending:
        task.cancel()
    res.unfinished = len(pending)
    if pending:
        await asyncio.wait(pending)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            res.errors[f"client crashed: {type(task.exception()).__name__}"] += 1
    res.elapsed = now() - t0
    return res


def lag_note() -> str:
    return "lag: receipt time of each token minus its place in the model's schedule, over the reply's best token"


def result_row(res: LoadResult, **extra: Any) -> dict[str, Any]:
    from bench.metrics import ms, percentile

    return {
        **extra,
        "messages": res.messages,
        "events": res.events,
        "events_per_s": round(res.events_per_s, 1),
        "ttft_p50_ms": ms(percentile(res.ttft, 50)),
        "ttft_p99_ms": ms(percentile(res.ttft, 99)),
        "full_p50_ms": ms(percentile(res.full, 50)),
        "full_p99_ms": ms(percentile(res.full, 99)),
        "lag_p50_ms": ms(percentile(res.lag, 50)),
        "lag_p99_ms": ms(percentile(res.lag, 99)),
        "errors": sum(res.errors.values()),
        "error_kinds": res.error_text(),
    }
