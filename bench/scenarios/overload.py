"""overload: twice the capacity, with admission control on and (for contrast) off.

Capacity is ``[admission] max_running_tasks`` (or ``--capacity``). 2 x capacity clients send
paced messages back to back; with admission on, a refused client waits the Retry-After the
server sent and tries again. The claim under test: admitted streams keep their latency,
the others are refused fast, instead of everyone being served late.
"""

from __future__ import annotations

import argparse
import tomllib
from contextlib import AsyncExitStack

from bench.client import warm_up
from bench.load import LoadSpec, lag_note
from bench.procs import remove_data, sessiond
from bench.report import Report, progress
from bench.scenarios.stream import NO_ADMISSION, run_load
from server.config import AdmissionSection

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--capacity", type=int, default=0, help="running tasks admitted (default: config.toml's)")
    p.add_argument("--factor", type=float, default=2.0, help="clients = factor x capacity")
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--ramp", type=float, default=2.0)
    p.add_argument("--tps", type=float, default=50.0)
    p.add_argument("--reply-tokens", type=int, default=100)
    p.add_argument("--no-compare", action="store_true", help="skip the run with admission off")


async def run(args: argparse.Namespace, report: Report) -> None:
    capacity = args.capacity
    if not capacity:
        capacity = AdmissionSection().max_running_tasks
        if args.config is not None:
            capacity = tomllib.loads(args.config.read_text()).get("admission", {}).get("max_running_tasks", capacity)
    clients = int(capacity * args.factor)
    for key, heading in (
        ("mode", "admission"), ("clients", "C"), ("messages", "replies"), ("admitted_clients", "clients served"),
        ("refused", "refused"), ("refused_p50_ms", "refusal p50 ms"), ("refused_p99_ms", "refusal p99 ms"),
        ("ttft_p50_ms", "TTFT p50 ms"), ("ttft_p99_ms", "TTFT p99 ms"), ("lag_p50_ms", "lag p50 ms"),
        ("lag_p99_ms", "lag p99 ms"), ("errors", "errors"), ("rss_mb", "RSS MB"), ("server_cpu", "srv CPU%"),
        ("client_cpu", "cli CPU%"),
    ):
        report.column(key, heading)
    report.notes.append(lag_note())
    report.notes.append(f"capacity {capacity} running tasks; {clients} clients; model {args.tps:g} tokens/s")
    modes = [("on", {"SESSIOND_ADMISSION_MAX_RUNNING_TASKS": str(capacity)})]
    if not args.no_compare:
        modes.append(("off", NO_ADMISSION))
    with progress() as prog:
        for mode, env in modes:
            async with AsyncExitStack() as stack:
                child = sessiond(args.out, tokens_per_second=args.tps, reply_tokens=args.reply_tokens,
                                 config=args.config, env=env)
                await child.start()
                stack.push_async_callback(child.stop)
                stack.callback(remove_data, child)
                await warm_up(child.url, child.name)
                spec = LoadSpec(clients=clients, messages=1 << 20, duration=args.duration, ramp=args.ramp,
                                rate=args.tps, retry_refused=True)
                await run_load(child, f"admission {mode}", spec, report, prog, group=f"C={clients}",
                               series=f"admission {mode}", mode=mode, clients=clients)
