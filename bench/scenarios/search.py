"""search: how fast GET /v1/sessions/search answers over many stored messages.

One server on the embedded store. ``--sessions`` sessions of ``--messages`` messages each are
imported (the import path writes the full-text index in the same transaction as the rows),
their text drawn from a fixed vocabulary with Zipf-like word frequencies, so some words are
in most messages and some in a few. Then each query of a mix (a rare word, a middling word, a
common word, two words together, a word no message has) is asked ``--repeat`` times, one at a
time, and the latency of the whole HTTP round trip is recorded. Target: p50 under 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from contextlib import AsyncExitStack
from typing import Any

from bench.client import Api
from bench.procs import remove_data, sessiond
from bench.report import Report, progress

__all__ = ["add_arguments", "run"]

_VOCABULARY = 5000
_DATE = "2026-01-01T00:00:00.000000Z"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sessions", type=int, default=1000, help="sessions to import")
    p.add_argument("--messages", type=int, default=100, help="messages per session")
    p.add_argument("--words", type=int, default=30, help="words per message")
    p.add_argument("--repeat", type=int, default=50, help="times each query is asked")
    p.add_argument("--concurrency", type=int, default=4, help="imports in flight")


def _word(i: int) -> str:
    return f"w{i:04d}"


def _document(rng: random.Random, n: int, messages: int, words: int, weights: list[float]) -> dict[str, Any]:
    nodes = []
    parent = None
    for j in range(messages):
        text = " ".join(_word(w) for w in rng.choices(range(_VOCABULARY), weights, k=words))
        mid = f"msg_b{n}_{j}"
        nodes.append({
            "id": mid, "parent_id": parent, "role": "user" if j % 2 == 0 else "assistant",
            "content": text, "created_at": _DATE,
        })
        parent = mid
    return {
        "format": "sessiond.session", "version": 1,
        "session": {"id": f"ses_bench{n}", "created_at": _DATE, "title": f"bench session {n}"},
        "messages": nodes, "active_leaf_id": parent,
    }


async def run(args: argparse.Namespace, report: Report) -> None:
    rng = random.Random(args.seed)
    weights = [1 / (rank + 1) for rank in range(_VOCABULARY)]  # Zipf: word i is 1/(i+1) as common
    total = args.sessions * args.messages
    async with AsyncExitStack() as stack:
        child = sessiond(args.out, tokens_per_second=0, reply_tokens=10, config=args.config,
                         env={"SESSIOND_SERVER_MAX_BODY_BYTES": str(64 << 20)}, name="sessiond-search")
        await child.start()
        stack.push_async_callback(child.stop)
        stack.callback(remove_data, child)
        api = Api(child.url, limit=args.concurrency)
        stack.push_async_callback(api.aclose)

        gate = asyncio.Semaphore(args.concurrency)
        started = time.perf_counter()
        with progress() as prog:
            task = prog.add_task("import", total=args.sessions, info="")

            async def one(n: int) -> None:
                doc = _document(rng, n, args.messages, args.words, weights)
                async with gate, api.http.post(f"{api.base}/v1/sessions/import", json=doc) as resp:
                    if resp.status != 201:
                        raise RuntimeError(f"import: {resp.status} {await resp.text()}")
                prog.advance(task)

            await asyncio.gather(*(one(n) for n in range(args.sessions)))
        report.notes.append(f"imported {total:,} messages in {time.perf_counter() - started:.1f} s")

        queries = {
            "rare word": _word(_VOCABULARY - 7),
            "middling word": _word(200),
            "common word": _word(3),
            "two words": f"{_word(3)} {_word(40)}",
            "no match": "zzzz",
        }
        for key, heading in (("query", "query"), ("q", "q"), ("sessions", "sessions found (page)"),
                             ("p50", "p50 ms"), ("p99", "p99 ms"), ("max", "max ms")):
            report.column(key, heading)
        p50s = []
        for label, q in queries.items():
            times = []
            found = 0
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                async with api.http.get(f"{api.base}/v1/sessions/search", params={"q": q, "limit": "20"}) as resp:
                    body = await resp.json()
                    if resp.status != 200:
                        raise RuntimeError(f"search: {resp.status} {body}")
                times.append((time.perf_counter() - t0) * 1000)
                found = len(body["items"])
            times.sort()
            p50 = statistics.median(times)
            p50s.append(p50)
            report.rows.append({
                "query": label, "q": q, "sessions": found, "p50": round(p50, 1),
                "p99": round(times[min(len(times) - 1, int(len(times) * 0.99))], 1), "max": round(times[-1], 1),
            })
        worst = max(p50s)
        report.check(f"search of {total:,} messages p50 < 50 ms", worst < 50, f"worst p50 {worst:.1f} ms")
