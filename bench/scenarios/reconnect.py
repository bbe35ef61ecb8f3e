"""reconnect: clients drop at random points and resume by Last-Event-ID; nothing lost, nothing twice.

Each client sends a message with ``stream: true`` and reads it. After a random number of
events, and at a random place in what it received (the rest of that chunk, possibly half a
frame, is thrown away, as when a connection dies), it drops the connection and resumes with
``GET /v1/sessions/{id}/stream`` and ``Last-Event-ID`` = the last complete event it got,
again and again until the task's terminal event. Then it reads the task once more from its
start, without dropping, as the reference, and compares:

* lost: events of the task the client never got;
* duplicated: events the client got more than once;
* and the reply rebuilt from its deltas must equal the stored answer.
"""

from __future__ import annotations

import argparse
import asyncio
import random
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import msgspec

from bench.client import Api, Frame, iter_frames, now
from bench.metrics import Timeline, ms, percentile
from bench.procs import remove_data, sessiond
from bench.report import Report, progress
from bench.sampler import MB, Sampler
from bench.scenarios.stream import NO_ADMISSION

__all__ = ["add_arguments", "run"]

_TERMINAL = {"task.completed", "task.failed", "task.cancelled", "task.interrupted"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clients", type=int, default=100, help="concurrent sessions (C)")
    p.add_argument("--messages", type=int, default=2, help="messages per session")
    p.add_argument("--tps", type=float, default=100.0, help="model tokens/s (paced, so drops land mid-reply)")
    p.add_argument("--reply-tokens", type=int, default=300)
    p.add_argument("--mean-gap", type=int, default=12, help="mean events read between two drops")
    p.add_argument("--max-reconnects", type=int, default=20_000, help="stop dropping after this many in all")
    p.add_argument("--timeout", type=float, default=300.0, help="most seconds for the whole run")


class _Totals:
    def __init__(self) -> None:
        self.reconnects = 0
        self.tasks = 0
        self.lost = 0
        self.duplicated = 0
        self.mismatched = 0
        self.errors: dict[str, int] = {}
        self.resume_latency: list[float] = []
        self.events = 0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


async def _read_some(
    resp: aiohttp.ClientResponse, got: list[Frame], budget: int, rng: random.Random
) -> tuple[bool, bool]:
    """Read until the terminal event (True, _) or until ``budget`` events were taken (False, True)."""
    taken = 0
    async for frames in iter_frames(resp):
        if taken + len(frames) >= budget:
            # Drop here: keep a random prefix of this chunk, as if the rest never arrived.
            # (The very first event is always kept: it names the task to resume.)
            keep = rng.randint(0 if got else 1, len(frames))
            for f in frames[:keep]:
                got.append(f)
                if f.type in _TERMINAL:
                    return True, False
            return False, True
        for f in frames:
            got.append(f)
            if f.type in _TERMINAL:
                return True, False
        taken += len(frames)
    return False, False


async def _client(i: int, api: Api, args: argparse.Namespace, totals: _Totals, tl: Timeline,
                  rng: random.Random, deadline: float) -> None:
    sid = await api.create_session()
    for n in range(args.messages):
        if now() >= deadline:
            return
        got: list[Frame] = []
        done = dropped = False
        async with api.send(sid, f"reconnect client {i} message {n}") as resp:
            if resp.status != 200:
                totals.error(f"send {resp.status}")
                await resp.read()
                return
            budget = rng.randint(1, 2 * args.mean_gap)
            done, dropped = await _read_some(resp, got, budget, rng)
            if dropped:
                resp.close()  # cut the connection mid-stream
        if not got or got[0].type != "task.started":
            totals.error("no task.started")
            return
        task_id = msgspec.json.decode(got[0].data)["task_id"]
        first_id = got[0].id
        assert first_id is not None
        # Resume until the terminal event; bounded by the reconnect budget and the deadline.
        while not done and now() < deadline:
            last = max((f.id for f in got if f.id is not None), default=first_id)
            allow_drop = totals.reconnects < args.max_reconnects
            totals.reconnects += 1
            t0 = now()
            try:
                async with api.stream(sid, last) as resp:
                    if resp.status != 200:
                        totals.error(f"resume {resp.status}")
                        await resp.read()
                        continue
                    totals.resume_latency.append(now() - t0)
                    tl.sample("resume", now(), now() - t0)
                    budget = rng.randint(1, 2 * args.mean_gap) if allow_drop else 1 << 30
                    done, dropped = await _read_some(resp, got, budget, rng)
                    resp.close()
            except (aiohttp.ClientError, OSError) as exc:
                totals.error(type(exc).__name__)
        if not done:
            totals.error("unfinished")
            continue
        # The reference: the whole task again, from just before its first event, no drops.
        ref: list[Frame] = []
        async with api.stream(sid, first_id - 1) as resp:
            await _read_some(resp, ref, 1 << 30, rng)
            resp.close()
        ref_ids = [f.id for f in ref]
        got_ids = [f.id for f in got]
        lost = set(ref_ids) - set(got_ids)
        dup = len(got_ids) - len(set(got_ids))
        totals.lost += len(lost)
        totals.duplicated += dup
        totals.tasks += 1
        totals.events += len(got)
        tl.events(now(), len(got))
        deltas = "".join(msgspec.json.decode(f.data)["delta"] for f in got if f.type == "message.delta")
        completed = next((f for f in ref if f.type == "message.completed"), None)
        answer = msgspec.json.decode(completed.data)["message"]["content"] if completed else None
        if answer != deltas or any(f.type == "stream.reset" for f in got):
            totals.mismatched += 1
        if task_id != msgspec.json.decode(ref[0].data).get("task_id"):
            totals.mismatched += 1


async def run(args: argparse.Namespace, report: Report) -> None:
    for key, heading in (
        ("clients", "C"), ("tasks", "replies checked"), ("reconnects", "reconnects"), ("events", "events read"),
        ("lost", "lost"), ("duplicated", "duplicated"), ("mismatched", "reply != deltas"),
        ("resume_p50_ms", "resume p50 ms"), ("resume_p99_ms", "resume p99 ms"), ("errors", "errors"),
        ("rss_mb", "RSS MB"), ("client_lag_ms", "cli late ms"),
    ):
        report.column(key, heading)
    rng = random.Random(args.seed)
    totals = _Totals()
    async with AsyncExitStack() as stack:
        child = sessiond(args.out, tokens_per_second=args.tps, reply_tokens=args.reply_tokens, config=args.config,
                         env=NO_ADMISSION)
        await child.start()
        stack.push_async_callback(child.stop)
        stack.callback(remove_data, child)
        api = Api(child.url)
        stack.push_async_callback(api.aclose)
        tl = Timeline(f"reconnect C={args.clients}", now())
        report.timelines.append(tl)
        deadline = now() + args.timeout
        with progress() as prog:
            task = prog.add_task("reconnect", total=args.clients * args.messages, info="")

            def tick(s: Sampler) -> None:
                prog.update(task, completed=totals.tasks, info=(
                    f"reconnects {totals.reconnects:,}  lost {totals.lost}  dup {totals.duplicated}  "
                    f"rss {s.last_rss / MB:,.0f} MB"))

            async with Sampler(child, tl, tick) as sm:
                clients = [
                    _client(i, api, args, totals, tl, random.Random(rng.random()), deadline)
                    for i in range(args.clients)
                ]
                results: list[Any] = await asyncio.gather(*clients, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                totals.error(f"client: {type(r).__name__}: {r}")
    report.rows.append({
        "clients": args.clients, "tasks": totals.tasks, "reconnects": totals.reconnects, "events": totals.events,
        "lost": totals.lost, "duplicated": totals.duplicated, "mismatched": totals.mismatched,
        "resume_p50_ms": ms(percentile(totals.resume_latency, 50)),
        "resume_p99_ms": ms(percentile(totals.resume_latency, 99)),
        "errors": sum(totals.errors.values()), "rss_mb": round(sm.max_rss / MB, 1),
        "client_lag_ms": round(sm.client_lag_max * 1000),
    })
    if totals.errors:
        report.notes.append(f"errors: {totals.errors}")
    report.check("lost events = 0", totals.lost == 0 and totals.tasks > 0, f"{totals.lost} in {totals.tasks} replies",
                 hard=True)
    report.check("duplicated events = 0", totals.duplicated == 0 and totals.tasks > 0, f"{totals.duplicated}",
                 hard=True)
    report.check("every reply equals its deltas", totals.mismatched == 0, f"{totals.mismatched} differ", hard=True)
