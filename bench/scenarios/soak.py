"""soak: a fixed message rate for a bounded time; does memory or latency drift?

C clients each send one message every C/rate seconds (so ``--rate`` messages per second in
all), with a paced model, for ``--duration`` seconds. The table has one row per window:
RSS at its end, messages, time to first token and delivery lag. The drift is the last
window against the first full one.
"""

from __future__ import annotations

import argparse
from contextlib import AsyncExitStack

from bench.client import Api, now
from bench.load import LoadSpec, drive, lag_note
from bench.metrics import Timeline, ms, percentile
from bench.procs import maybe_profile, remove_data, sessiond
from bench.report import Report, progress
from bench.sampler import MB, Sampler
from bench.scenarios.stream import NO_ADMISSION

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=float, default=600.0, help="seconds (default 10 minutes)")
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--rate", type=float, default=50.0, help="messages per second, all clients together")
    p.add_argument("--tps", type=float, default=50.0, help="model tokens/s")
    p.add_argument("--reply-tokens", type=int, default=50)
    p.add_argument("--window", type=float, default=0.0, help="seconds per table row (default: duration / 10)")


async def run(args: argparse.Namespace, report: Report) -> None:
    for key, heading in (
        ("window", "window s"), ("messages", "msgs"), ("events_per_s", "events/s"), ("ttft_p50_ms", "TTFT p50 ms"),
        ("ttft_p99_ms", "TTFT p99 ms"), ("lag_p50_ms", "lag p50 ms"), ("lag_p99_ms", "lag p99 ms"),
        ("rss_mb", "RSS MB"), ("server_cpu", "srv CPU%"),
    ):
        report.column(key, heading)
    report.notes.append(lag_note())
    # Idle sessions are never passivated during the run: the clients keep them busy.
    interval = args.clients / args.rate
    spec = LoadSpec(clients=args.clients, messages=1 << 30, duration=args.duration, ramp=min(interval, 5.0),
                    rate=args.tps, interval=interval)
    async with AsyncExitStack() as stack:
        child = sessiond(args.out, tokens_per_second=args.tps, reply_tokens=args.reply_tokens, config=args.config,
                         env=NO_ADMISSION)
        await child.start()
        stack.push_async_callback(child.stop)
        stack.callback(remove_data, child)
        api = Api(child.url)
        stack.push_async_callback(api.aclose)
        tl = Timeline(f"soak {args.rate:g} msg/s", now())
        report.timelines.append(tl)
        with progress() as prog:
            task = prog.add_task("soak", total=spec.ramp + spec.duration, info="")

            def tick(s: Sampler) -> None:
                prog.update(task, completed=min(now() - tl.t0, spec.ramp + spec.duration),
                            info=f"rss {s.last_rss / MB:,.1f} MB")

            await maybe_profile(stack, report.params, child, "soak", report.started)
            async with Sampler(child, tl, tick, interval=1.0) as sm:
                res = await drive(api, spec, tl)
    window = args.window or max((spec.ramp + spec.duration) / 10, 1.0)
    end = spec.ramp + spec.duration
    start = 0.0
    while start < end - 1e-9:
        stop = min(start + window, end)
        events, ttft = tl.collect("ttft", start, stop)
        _, lag = tl.collect("lag", start, stop)
        rss = [g["rss_mb"] for g in tl.gauges if start <= g["t"] < stop and g.get("rss_mb")]
        cpu = [g["server_cpu"] for g in tl.gauges if start <= g["t"] < stop and "server_cpu" in g]
        report.rows.append({
            "window": f"{start:.0f}-{stop:.0f}", "messages": len(ttft), "events_per_s": round(events / (stop - start)),
            "ttft_p50_ms": ms(percentile(ttft, 50)), "ttft_p99_ms": ms(percentile(ttft, 99)),
            "lag_p50_ms": ms(percentile(lag, 50)), "lag_p99_ms": ms(percentile(lag, 99)),
            "rss_mb": rss[-1] if rss else None, "server_cpu": round(sum(cpu) / len(cpu)) if cpu else None,
        })
        start = stop
    full = [r for r in report.rows if r["messages"]]
    if len(full) >= 3:
        first, last = full[1], full[-1]  # the first window holds the ramp-up
        report.notes.append(
            f"drift, window {first['window']} -> {last['window']}: RSS {first['rss_mb']} -> {last['rss_mb']} MB, "
            f"TTFT p99 {first['ttft_p99_ms']} -> {last['ttft_p99_ms']} ms, lag p99 {first['lag_p99_ms']} -> "
            f"{last['lag_p99_ms']} ms"
        )
    report.notes.append(f"messages {res.messages:,}, errors {res.error_text()}, peak RSS {sm.max_rss / MB:.1f} MB")
