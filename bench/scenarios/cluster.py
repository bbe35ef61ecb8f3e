"""cluster: the cost of the cluster path. The same load on one node (embedded defaults), on one
node in cluster mode (PostgreSQL + Redis), and on N nodes in cluster mode, where each client
creates its session on one node and sends (and streams) through the next, so most commands are
forwarded to the session's owner and every event reaches the client through a Redis Stream.
"""

from __future__ import annotations

import argparse
import itertools
import os
import secrets
from contextlib import AsyncExitStack
from typing import Any

from bench.client import Api, now, warm_up
from bench.load import LoadSpec, drive, lag_note, result_row
from bench.metrics import Timeline
from bench.procs import Child, remove_data, sessiond
from bench.report import Report, progress
from bench.scenarios.stream import NO_ADMISSION

__all__ = ["add_arguments", "run"]

PG_ADMIN = os.environ.get("SESSIOND_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clients", type=int, default=100, help="concurrent sessions (C)")
    p.add_argument("--nodes", type=int, default=3, help="nodes of the cluster step")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of sending per step, after ramp-up")
    p.add_argument("--ramp", type=float, default=1.0)
    p.add_argument("--tps", type=float, default=50.0, help="model tokens/s per reply (0 = unpaced)")
    p.add_argument("--reply-tokens", type=int, default=50)
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="keys get a prefix of this run's own")


class _RoundRobinApi(Api):
    """An Api whose every request goes to the next node: create on one, send through another."""

    def __init__(self, urls: list[str]) -> None:
        super().__init__(urls[0])
        self._urls = itertools.cycle(u.rstrip("/") for u in urls)

    @property  # type: ignore[override]
    def base(self) -> str:
        return next(self._urls)

    @base.setter
    def base(self, value: str) -> None:
        pass


async def _database() -> str:
    import asyncpg

    admin = await asyncpg.connect(PG_ADMIN)
    name = f"sessiond_bench_{secrets.token_hex(4)}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name


async def _drop(dsn: str) -> None:
    import asyncpg

    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{dsn.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await admin.close()


async def run(args: argparse.Namespace, report: Report) -> None:
    for key, heading in (
        ("setup", "setup"),
        ("nodes", "nodes"),
        ("events_per_s", "events/s"),
        ("vs_one", "vs 1 node"),
        ("ttft_p50_ms", "TTFT p50 ms"),
        ("ttft_p99_ms", "TTFT p99 ms"),
        ("lag_p50_ms", "lag p50 ms"),
        ("lag_p99_ms", "lag p99 ms"),
        ("full_p99_ms", "reply p99 ms"),
        ("errors", "errors"),
    ):
        report.column(key, heading)
    if args.tps > 0:
        report.notes.append(lag_note())
    report.notes.append(
        "cluster steps: each client creates its session on one node and sends through the next (round robin), "
        "so commands are forwarded to the owner and events come back through Redis Streams"
    )
    spec = LoadSpec(clients=args.clients, messages=1000, duration=args.duration, ramp=args.ramp, rate=args.tps)
    dsn = await _database()
    base: dict[str, Any] = dict(tokens_per_second=args.tps, reply_tokens=args.reply_tokens, config=args.config)
    cluster_env = {
        **NO_ADMISSION,
        "SESSIOND_STORE_KIND": "postgres",
        "SESSIOND_STORE_POSTGRES_DSN": dsn,
        "SESSIOND_FANOUT_KIND": "redis",
        "SESSIOND_REDIS_URL": args.redis_url,
        "SESSIOND_CLUSTER_PREFIX": f"bench{secrets.token_hex(4)}",
        "SESSIOND_TOKENS_SECRET": secrets.token_urlsafe(48),  # cluster mode: one secret for every node
        "SESSIOND_CLUSTER_STREAM_TTL_SECONDS": "600",
    }
    steps: list[tuple[str, list[Child]]] = [
        ("embedded (SQLite, local)", [sessiond(args.out, env=NO_ADMISSION, **base)]),
        ("cluster mode", [sessiond(args.out, env=cluster_env, name="node1", **base)]),
        (
            "cluster mode",
            [sessiond(args.out, env=cluster_env, name=f"node{i + 1}", **base) for i in range(args.nodes)],
        ),
    ]
    first: float | None = None
    try:
        with progress() as prog:
            for setup, children in steps:
                async with AsyncExitStack() as stack:
                    for child in children:
                        await child.start()
                        stack.push_async_callback(child.stop)
                        stack.callback(remove_data, child)
                        await warm_up(child.url, child.name)
                    urls = [c.url for c in children]
                    api = Api(urls[0]) if len(urls) == 1 else _RoundRobinApi(urls)
                    label = f"{len(urls)} node{'s' if len(urls) > 1 else ''}, {setup}"
                    tl = Timeline(label, now(), group="cluster", series=label)
                    task = prog.add_task(label, total=spec.ramp + spec.duration, info="")
                    try:
                        res = await drive(api, spec, tl)
                    finally:
                        await api.aclose()
                    prog.update(task, completed=spec.ramp + spec.duration)
                    row = result_row(res, setup=setup, nodes=len(urls))
                    if first is None:
                        first = row["events_per_s"] or None
                    row["vs_one"] = f"{row['events_per_s'] / first:.0%}" if first else None
                    report.rows.append(row)
                    report.timelines.append(tl)
    finally:
        await _drop(dsn)
