"""fanout: one session, S subscribers; delivery lag of every event to every subscriber.

No server clock is needed. Two measures, both from the client's monotonic clock (all
subscribers live in this one process, so their receipt times are comparable):

* spread: an event's receipt time at a subscriber minus its earliest receipt time at any
  subscriber, i.e. how much later than the first subscriber each one got it;
* lag: for message.delta events, receipt time minus the token's place in the model's
  schedule (token i at start + i/rate), taking as start the earliest receipt of any token;
  it includes the first subscriber's own delay, so it is the delay the slowest reader sees.
"""

from __future__ import annotations

import argparse
import asyncio
from contextlib import AsyncExitStack

import aiohttp

from bench.client import Api, iter_ids, now
from bench.metrics import Timeline, ms, percentile
from bench.procs import maybe_profile, remove_data, sessiond
from bench.report import Report, progress
from bench.sampler import MB, Sampler
from bench.scenarios.stream import NO_ADMISSION

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--levels", default="100,1000,5000", help="subscribers per step (comma list)")
    p.add_argument("--messages", type=int, default=3, help="messages sent to the session per step")
    p.add_argument("--tps", type=float, default=10.0, help="model tokens/s")
    p.add_argument("--reply-tokens", type=int, default=20)
    p.add_argument("--connect-concurrency", type=int, default=50, help="subscriptions being opened at once")
    p.add_argument("--timeout", type=float, default=120.0, help="most seconds per step")
    p.set_defaults(nofile=12_000)


async def _level(api: Api, s: int, args: argparse.Namespace, report: Report, prog: object, child: object) -> None:
    label = f"S={s}"
    tl = Timeline(label, now())
    sid = await api.create_session()
    ready = 0
    all_ready = asyncio.Event()
    gate = asyncio.Semaphore(args.connect_concurrency)
    # receipts[event id] = list of receipt times, one per subscriber
    receipts: dict[int, list[float]] = {}
    types: dict[int, str] = {}
    errors: dict[str, int] = {}
    finished = 0
    task = prog.add_task(f"fanout {label}", total=s + args.messages, info="")  # type: ignore[attr-defined]

    settled = 0

    def settle() -> None:
        nonlocal settled
        settled += 1
        if settled == s:
            all_ready.set()

    async def subscriber() -> None:
        nonlocal ready, finished
        resp = None
        try:
            # A burst of subscriptions can fill the session's mailbox: the server answers 503
            # with Retry-After, and the subscriber tries again (at most 30 times).
            for _attempt in range(30):
                async with gate:
                    resp = await api.stream(sid)
                if resp.status != 503:
                    break
                retry = float(resp.headers.get("Retry-After", "1"))
                resp.release()
                await asyncio.sleep(retry)
            assert resp is not None
            if resp.status != 200:
                errors[str(resp.status)] = errors.get(str(resp.status), 0) + 1
                settle()
                return
            ready += 1
            settle()
            ends = 0
            async for frames in iter_ids(resp):
                t = now()
                tl.events(t, len(frames))
                for id_, type_ in frames:
                    got = receipts.get(id_)
                    if got is None:
                        receipts[id_] = [t]
                        types[id_] = type_.decode()
                    else:
                        got.append(t)
                    if type_ == b"task.completed":
                        ends += 1
                if ends >= args.messages:
                    break
            finished += 1
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            if resp is None or resp.status != 200:
                settle()
        finally:
            if resp is not None:
                resp.close()

    def tick(sm: Sampler) -> None:
        prog.update(  # type: ignore[attr-defined]
            task, completed=ready + finished * args.messages / max(s, 1),
            info=f"subscribed {ready:,}/{s:,}  done {finished:,}  rss {sm.last_rss / MB:,.0f} MB",
        )

    t_connect = now()
    connect_s = 0.0
    async with AsyncExitStack() as stack:
        path = await maybe_profile(stack, report.params, child, f"fanout {label}", report.started)  # type: ignore[arg-type]
        if path is not None:
            report.notes.append(f"profile of {label}: {path}")
        sm = await stack.enter_async_context(Sampler(child, tl, tick))  # type: ignore[arg-type]
        subs = [asyncio.ensure_future(subscriber()) for _ in range(s)]
        try:
            async with asyncio.timeout(args.timeout):
                await all_ready.wait()
                connect_s = now() - t_connect
                for n in range(args.messages):
                    async with api.send(sid, f"fan-out message {n}", stream=False) as resp:
                        await resp.read()
                        if resp.status != 200:
                            errors[f"send {resp.status}"] = errors.get(f"send {resp.status}", 0) + 1
                await asyncio.gather(*subs)
        except TimeoutError:
            errors["step timeout"] = errors.get("step timeout", 0) + 1
        finally:
            for sub in subs:
                sub.cancel()
            await asyncio.gather(*subs, return_exceptions=True)
    spread: list[float] = []
    lag: list[float] = []
    step = 1.0 / args.tps if args.tps > 0 else 0.0
    delta_ids = sorted(i for i, ty in types.items() if ty == "message.delta")
    # Token index within its reply, for the schedule: deltas between two task.started events.
    starts = sorted(i for i, ty in types.items() if ty == "task.started")
    for times in receipts.values():
        first = min(times)
        spread.extend(t - first for t in times)
    if step:
        for k, start in enumerate(starts):
            end = starts[k + 1] if k + 1 < len(starts) else 1 << 62
            ids = [i for i in delta_ids if start < i < end]
            if not ids:
                continue
            base = min(min(receipts[i]) - (j + 1) * step for j, i in enumerate(ids))
            for j, i in enumerate(ids):
                planned = base + (j + 1) * step
                lag.extend(t - planned for t in receipts[i])
                tl.samples("lag", max(receipts[i]), [t - planned for t in receipts[i]])
    deliveries = sum(len(v) for v in receipts.values())
    report.rows.append(
        {
            "subscribers": s,
            "subscribed": ready,
            "connect_s": round(connect_s, 2) if ready == s else None,
            "deliveries": deliveries,
            "spread_p50_ms": ms(percentile(spread, 50)),
            "spread_p99_ms": ms(percentile(spread, 99)),
            "spread_max_ms": ms(max(spread) if spread else None),
            "lag_p50_ms": ms(percentile(lag, 50)),
            "lag_p99_ms": ms(percentile(lag, 99)),
            "errors": sum(errors.values()),
            "error_kinds": ", ".join(f"{k}: {v}" for k, v in errors.items()) or "0",
            "rss_mb": round(sm.max_rss / MB, 1),
            "server_cpu": round(sm.server_cpu * 100),
            "client_cpu": round(sm.client_cpu * 100),
            "client_lag_ms": round(sm.client_lag_max * 1000),
        }
    )
    report.timelines.append(tl)


async def run(args: argparse.Namespace, report: Report) -> None:
    for key, heading in (
        ("subscribers", "S"), ("subscribed", "subscribed"), ("connect_s", "connect s"), ("deliveries", "deliveries"),
        ("spread_p50_ms", "spread p50 ms"), ("spread_p99_ms", "spread p99 ms"), ("spread_max_ms", "spread max ms"),
        ("lag_p50_ms", "lag p50 ms"), ("lag_p99_ms", "lag p99 ms"), ("errors", "errors"), ("rss_mb", "RSS MB"),
        ("server_cpu", "srv CPU%"), ("client_cpu", "cli CPU%"), ("client_lag_ms", "cli late ms"),
    ):
        report.column(key, heading)
    report.notes.append("spread: receipt at each subscriber minus the first subscriber's receipt of that event")
    report.notes.append("lag: receipt of each token minus its place in the model's schedule (earliest receipt = 0)")
    async with AsyncExitStack() as stack:
        child = sessiond(args.out, tokens_per_second=args.tps, reply_tokens=args.reply_tokens, config=args.config,
                         env=NO_ADMISSION)
        await child.start()
        stack.push_async_callback(child.stop)
        stack.callback(remove_data, child)
        api = Api(child.url)
        stack.push_async_callback(api.aclose)
        with progress() as prog:
            for s in (int(x) for x in args.levels.split(",") if x.strip()):
                await _level(api, s, args, report, prog, child)
