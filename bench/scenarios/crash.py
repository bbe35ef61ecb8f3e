"""crash: sends under load, SIGKILL at a random moment, restart, check every acknowledged message.

A message is acknowledged when its POST answered 200 (with ``stream: true`` the status line
is sent only after the message is durably committed). After the kill the server is started
again on the same data directory, and every session's history must hold every acknowledged
message. Also measured: recovery time (from the restart to the first answered history
request), and how the answers that were being streamed at the kill are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import random
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp

from bench.client import Api, now, read_task
from bench.metrics import Timeline
from bench.procs import Child, remove_data, sessiond
from bench.report import Report, progress
from bench.sampler import MB, Sampler
from bench.scenarios.stream import NO_ADMISSION

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trials", type=int, default=3, help="kill/restart cycles")
    p.add_argument("--clients", type=int, default=100, help="concurrent senders, one session each")
    p.add_argument("--tps", type=float, default=50.0, help="model tokens/s")
    p.add_argument("--reply-tokens", type=int, default=40)
    p.add_argument("--kill-after", default="1,4", help="the kill comes at a uniform random time in this range (s)")


async def _senders(api: Api, sessions: list[str], trial: int, acked: dict[str, list[str]], stop: asyncio.Event,
                   tl: Timeline, counts: dict[str, int], rate: float) -> None:
    async def one(i: int, sid: str) -> None:
        n = 0
        while not stop.is_set() and n < 10_000:
            content = f"crash trial {trial} client {i} message {n}"
            n += 1
            try:
                async with api.send(sid, content) as resp:
                    if resp.status != 200:
                        counts[f"send {resp.status}"] = counts.get(f"send {resp.status}", 0) + 1
                        await resp.read()
                        if resp.status >= 500:
                            return
                        continue
                    acked[sid].append(content)  # the 200 is the acknowledgement
                    counts["acknowledged"] = counts.get("acknowledged", 0) + 1
                    await read_task(resp, rate=rate, on_events=tl.events)
            except (aiohttp.ClientError, OSError, TimeoutError):
                return  # the server is gone

    await asyncio.gather(*(one(i, sid) for i, sid in enumerate(sessions)))


async def _verify(api: Api, acked: dict[str, list[str]]) -> tuple[int, int, int, int]:
    """(acknowledged, lost, interrupted answers, sessions checked) from the restarted server."""
    total = lost = interrupted = 0
    gate = asyncio.Semaphore(50)

    async def one(sid: str, sent: list[str]) -> None:
        nonlocal total, lost, interrupted
        async with gate:
            history = await api.get_json(f"/v1/sessions/{sid}/messages?limit=1000")
        items = history["items"]
        contents = {m["content"] for m in items if m["role"] == "user"}
        total += len(sent)
        lost += sum(1 for c in sent if c not in contents)
        interrupted += sum(1 for m in items if m["role"] == "assistant" and m.get("status") == "interrupted")

    await asyncio.gather(*(one(sid, sent) for sid, sent in acked.items()))
    return total, lost, interrupted, len(acked)


async def run(args: argparse.Namespace, report: Report) -> None:
    for key, heading in (
        ("trial", "trial"), ("killed_at_s", "killed at s"), ("acknowledged", "acknowledged"), ("lost", "lost"),
        ("interrupted", "interrupted answers"), ("restart_s", "restart s"), ("recovery_s", "recovery s"),
        ("send_errors", "send errors"), ("rss_mb", "RSS MB"),
    ):
        report.column(key, heading)
    report.notes.append("restart: spawn to 'listening'; recovery: spawn to the first history answered after it")
    rng = random.Random(args.seed)
    lo, hi = (float(x) for x in args.kill_after.split(","))
    env = {**NO_ADMISSION, "SESSIOND_SESSIONS_IDLE_SECONDS": "3600"}
    data_dir: Path | None = None
    first: Child | None = None
    total_lost = 0
    async with AsyncExitStack() as stack:
        acked: dict[str, list[str]] = {}
        with progress() as prog:
            for trial in range(1, args.trials + 1):
                child = sessiond(args.out, tokens_per_second=args.tps, reply_tokens=args.reply_tokens,
                                 config=args.config, env=env, data_dir=data_dir, name="sessiond-crash")
                if first is None:
                    first = child
                    stack.callback(remove_data, child)
                data_dir = child.data_dir
                t_spawn = now()
                await child.start()
                restart_s = now() - t_spawn
                api = Api(child.url)
                try:
                    recovery_s = None
                    if acked:  # the previous trial's sessions: verify after the last kill
                        any_sid = next(iter(acked))
                        await api.get_json(f"/v1/sessions/{any_sid}/messages?limit=1")
                        recovery_s = now() - t_spawn
                        total, lost, interrupted, _ = await _verify(api, acked)
                        report.rows[-1].update(acknowledged=total, lost=lost, interrupted=interrupted,
                                               restart_s=round(restart_s, 2), recovery_s=round(recovery_s, 2))
                        total_lost += lost
                    sessions = [await api.create_session() for _ in range(args.clients)]
                    trial_acked: dict[str, list[str]] = {sid: [] for sid in sessions}
                    acked = trial_acked
                    tl = Timeline(f"trial {trial}", now())
                    report.timelines.append(tl)
                    stop = asyncio.Event()
                    counts: dict[str, int] = {}
                    kill_at = rng.uniform(lo, hi)
                    task = prog.add_task(f"crash trial {trial}", total=kill_at, info="")

                    def tick(s: Sampler, task: Any = task, counts: dict[str, int] = counts, t0: float = tl.t0,
                             kill_at: float = kill_at) -> None:
                        acks = counts.get("acknowledged", 0)
                        prog.update(task, completed=min(now() - t0, kill_at),
                                    info=f"acknowledged {acks:,}  rss {s.last_rss / MB:,.0f} MB")

                    async with Sampler(child, tl, tick) as sm:
                        senders = asyncio.ensure_future(_senders(api, sessions, trial, acked, stop, tl, counts,
                                                                 args.tps))
                        await asyncio.sleep(kill_at)
                        child.kill()
                        killed_at = now() - tl.t0
                        stop.set()
                        await child.wait()
                        _, pending = await asyncio.wait([senders], timeout=60)
                        for task_ in pending:
                            task_.cancel()
                    report.rows.append({
                        "trial": trial, "killed_at_s": round(killed_at, 2),
                        "send_errors": sum(v for k, v in counts.items() if k != "acknowledged"),
                        "rss_mb": round(sm.max_rss / MB, 1),
                    })
                finally:
                    await api.aclose()
            # The last kill: restart once more and verify.
            child = sessiond(args.out, tokens_per_second=args.tps, reply_tokens=args.reply_tokens,
                             config=args.config, env=env, data_dir=data_dir, name="sessiond-crash")
            t_spawn = now()
            await child.start()
            restart_s = now() - t_spawn
            stack.push_async_callback(child.stop)
            api = Api(child.url)
            stack.push_async_callback(api.aclose)
            any_sid = next(iter(acked))
            await api.get_json(f"/v1/sessions/{any_sid}/messages?limit=1")
            recovery_s = now() - t_spawn
            total, lost, interrupted, _ = await _verify(api, acked)
            report.rows[-1].update(acknowledged=total, lost=lost, interrupted=interrupted,
                                   restart_s=round(restart_s, 2), recovery_s=round(recovery_s, 2))
            total_lost += lost
    acknowledged = sum(r.get("acknowledged", 0) for r in report.rows)
    report.check("lost acknowledged messages = 0", total_lost == 0 and acknowledged > 0,
                 f"{total_lost} of {acknowledged}", hard=True)
