"""idle: what sessions and idle streams cost in server memory.

Three fresh server processes, so each figure is a difference of RSS on one process and no
phase inherits memory freed by another:

* actors: create N sessions (never activated: stored only), then activate each (one read
  request, no stream), then let them passivate (``--idle-seconds``), then activate again;
* streams: create N sessions, then hold one idle SSE stream open on each (which activates
  its actor), for ``--hold`` seconds;
* reference: N idle SSE streams on the bare aiohttp server, for scale.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import aiohttp

from bench.client import Api, now
from bench.metrics import Timeline
from bench.procs import Child, raise_nofile, reference, remove_data, sessiond
from bench.report import Report, progress
from bench.sampler import MB, Sampler
from bench.scenarios.stream import NO_ADMISSION

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=10_000, help="sessions and idle streams (N)")
    p.add_argument(
        "--idle-seconds", type=float, default=30.0,
        help="the server's passivation delay for this run (longer than activating N sessions takes)",
    )
    p.add_argument("--hold", type=float, default=5.0, help="seconds the N streams are held open")
    p.add_argument("--settle", type=float, default=1.5, help="seconds to wait before each RSS reading")
    p.add_argument("--connect-concurrency", type=int, default=100)
    p.add_argument("--phases", default="actors,streams,reference", help="which servers to measure")


async def _each(n: int, concurrency: int, fn: Callable[[int], Awaitable[None]], on_done: Callable[[], None]) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            await fn(i)
        on_done()

    await asyncio.gather(*(one(i) for i in range(n)))


async def _metric(api: Api, name: str) -> float | None:
    """A gauge from the server's /metrics, when it has one."""
    return (await api.metric_values(name)).get(name)


class _Phase:
    def __init__(self, report: Report, child: Child, label: str, n: int, prog: Any, settle: float) -> None:
        self.report = report
        self.child = child
        self.n = n
        self.prog = prog
        self.settle = settle
        self.tl = Timeline(label, now())
        self.label = label
        self.task = prog.add_task(label, total=1, info="")
        self.sampler: Sampler | None = None
        self.last_rss = 0

    async def reading(self) -> int:
        await asyncio.sleep(self.settle)  # let the allocator and the kernel settle
        rss = self.child.rss_bytes()
        self.tl.gauge(now(), rss_mb=round(rss / MB, 2))
        return rss

    def row(self, step: str, count: int, rss: int, before: int, per: str, live: float | None = None) -> None:
        delta = rss - before
        self.report.rows.append(
            {
                "live": None if live is None else int(live),
                "server": self.label,
                "step": step,
                "count": count,
                "rss_mb": round(rss / MB, 1),
                "delta_mb": round(delta / MB, 2),
                "per_item_kb": round(delta / count / 1024, 2) if count else None,
                "per": per,
            }
        )

    def step(self, description: str, total: int) -> Callable[[], None]:
        self.prog.update(self.task, description=f"{self.label}: {description}", total=total, completed=0)
        done = [0]

        def advance() -> None:
            done[0] += 1
            if done[0] % 50 == 0 or done[0] == total:
                self.prog.update(self.task, completed=done[0], info=f"{done[0]:,}/{total:,}")

        return advance


async def _create(api: Api, phase: _Phase, n: int, conc: int) -> list[str]:
    ids: list[str] = []

    async def one(_i: int) -> None:
        ids.append(await api.create_session())

    await _each(n, conc, one, phase.step("create sessions", n))
    return ids


def _timed(report: Report, what: str, n: int, started: float) -> None:
    """A note of how long ``n`` activations took, each one request (``--connect-concurrency`` at once)."""
    seconds = now() - started
    report.notes.append(f"{what}: {n:,} sessions in {seconds:.2f} s, {n / seconds:,.0f} per second")


async def _actors(args: argparse.Namespace, report: Report, prog: Any) -> None:
    env = {**NO_ADMISSION, "SESSIOND_SESSIONS_IDLE_SECONDS": repr(args.idle_seconds)}
    async with AsyncExitStack() as stack:
        child = sessiond(args.out, tokens_per_second=0, reply_tokens=10, config=args.config, env=env,
                         name="sessiond-actors")
        await child.start()
        stack.push_async_callback(child.stop)
        stack.callback(remove_data, child)
        api = Api(child.url)
        stack.push_async_callback(api.aclose)
        ph = _Phase(report, child, "sessiond actors", args.n, prog, args.settle)
        report.timelines.append(ph.tl)
        base = await ph.reading()
        ph.row("started", 0, base, base, "")
        ids = await _create(api, ph, args.n, args.connect_concurrency)
        created = await ph.reading()
        ph.row("N sessions created, never active", len(ids), created, base, "stored session",
               await _metric(api, "sessiond_actors_active"))

        async def touch(i: int) -> None:
            await api.get_json(f"/v1/sessions/{ids[i]}/messages")

        t0 = now()
        await _each(len(ids), args.connect_concurrency, touch, ph.step("activate", len(ids)))
        _timed(report, "activation (the newest 1 024 from their creation, the rest from the store)", len(ids), t0)
        active = await ph.reading()
        live = await _metric(api, "sessiond_actors_active")
        ph.row("N actors live and idle", len(ids), active, created, "live idle actor", live)
        if live is not None and live < len(ids):
            report.notes.append(f"only {live:.0f} of {len(ids)} actors were live when measured: raise --idle-seconds")
        # Passivation: wait for the server to say no actor is live (or, without /metrics,
        # for a few idle periods).
        ph.step("wait for passivation", 1)
        t0 = now()
        limit = max(4 * args.idle_seconds, 10.0)
        while now() - t0 < limit:
            live = await _metric(api, "sessiond_actors_active")
            if live is None:
                await asyncio.sleep(3 * args.idle_seconds + 1)
                break
            if live == 0:
                break
            await asyncio.sleep(0.25)
        passivated_after = now() - t0
        after = await ph.reading()
        ph.row("after passivation", len(ids), after, active, "memory returned (negative = freed)",
               await _metric(api, "sessiond_actors_active"))
        report.notes.append(
            f"passivation: actors live = {live if live is not None else 'unknown (no /metrics)'} "
            f"{passivated_after:.1f} s after the last request (idle_seconds = {args.idle_seconds})"
        )
        t0 = now()
        await _each(len(ids), args.connect_concurrency, touch, ph.step("activate again", len(ids)))
        _timed(report, "re-activation (each a claim and a load from the store)", len(ids), t0)
        again = await ph.reading()
        ph.row("N actors live again", len(ids), again, after, "growth on re-activation",
               await _metric(api, "sessiond_actors_active"))


async def _streams(args: argparse.Namespace, report: Report, prog: Any, target: str) -> None:
    async with AsyncExitStack() as stack:
        if target == "sessiond":
            env = {**NO_ADMISSION, "SESSIOND_SESSIONS_IDLE_SECONDS": repr(args.idle_seconds)}
            child = sessiond(args.out, tokens_per_second=0, reply_tokens=10, config=args.config, env=env,
                             name="sessiond-streams")
        else:
            child = reference(args.out, tokens_per_second=0, reply_tokens=10)
        await child.start()
        stack.push_async_callback(child.stop)
        stack.callback(remove_data, child)
        api = Api(child.url)
        stack.push_async_callback(api.aclose)
        ph = _Phase(report, child, f"{target} streams", args.n, prog, args.settle)
        report.timelines.append(ph.tl)
        base = await ph.reading()
        ph.row("started", 0, base, base, "")
        ids = await _create(api, ph, args.n, args.connect_concurrency)
        created = await ph.reading()
        ph.row("N sessions created", len(ids), created, base, "stored session")
        open_streams: list[aiohttp.ClientResponse] = []
        errors: dict[str, int] = {}

        def close_all() -> None:
            for r in open_streams:
                r.close()

        stack.callback(close_all)

        async def open_one(i: int) -> None:
            try:
                resp = await api.stream(ids[i])
            except (aiohttp.ClientError, OSError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                return
            if resp.status != 200:
                errors[str(resp.status)] = errors.get(str(resp.status), 0) + 1
                resp.release()
                return
            await resp.content.readuntil(b"\n\n")  # the retry line: the stream is live
            open_streams.append(resp)
            ph.tl.events(now(), 1)

        t0 = now()
        async with Sampler(child, ph.tl):
            await _each(len(ids), args.connect_concurrency, open_one, ph.step("open idle streams", len(ids)))
            opened_in = now() - t0
            held = await ph.reading()
            ph.step("hold", 1)
            await asyncio.sleep(max(args.hold - args.settle, 0))
            server_says = await _metric(api, "sessiond_streams_open")
        ph.row("N idle streams open", len(open_streams), held, created, "idle stream + its live actor",
               await _metric(api, "sessiond_actors_active"))
        report.rows[-1]["opened_in_s"] = round(opened_in, 1)
        report.rows[-1]["errors"] = sum(errors.values())
        report.notes.append(
            f"{target}: {len(open_streams):,} of {len(ids):,} streams opened in {opened_in:.1f} s, "
            f"held {args.hold:.0f} s; streams open by the server's count: "
            f"{'n/a' if server_says is None else f'{server_says:,.0f}'}; errors: {errors or 0}"
        )
        if target == "sessiond" and len(open_streams) >= 10_000:
            per = (held - created) / len(open_streams) / 1024
            report.check("10 000 idle streams < 30 KB RSS each, with the live actor", per < 30, f"{per:.1f} KB")


async def run(args: argparse.Namespace, report: Report) -> None:
    limit = raise_nofile(args.n + 2048)
    if limit < args.n + 1024:
        report.notes.append(f"open-file limit is {limit}: fewer than {args.n} streams can be held")
    for key, heading in (
        ("server", "server"), ("step", "step"), ("count", "N"), ("rss_mb", "RSS MB"), ("delta_mb", "delta MB"),
        ("per_item_kb", "KB each"), ("per", "each is"), ("live", "live actors"), ("opened_in_s", "open s"),
        ("errors", "errors"),
    ):
        report.column(key, heading)
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    with progress() as prog:
        if "actors" in phases:
            await _actors(args, report, prog)
        if "streams" in phases:
            await _streams(args, report, prog, "sessiond")
        if "reference" in phases:
            await _streams(args, report, prog, "reference")
