"""stream: C concurrent sessions against sessiond and the reference server, with the ratio."""

from __future__ import annotations

import argparse
import statistics
from contextlib import AsyncExitStack
from typing import Any

from bench.client import Api, now, warm_up
from bench.load import LoadSpec, drive, lag_note, result_row
from bench.metrics import Timeline
from bench.procs import Child, maybe_profile, reference, remove_data, sessiond
from bench.report import Report, cost_fits, progress
from bench.sampler import MB, Sampler

__all__ = ["add_arguments", "run", "run_load"]

# Admission is this scenario's subject only in `overload`: here the server takes all it gets.
NO_ADMISSION = {"SESSIOND_ADMISSION_MAX_RUNNING_TASKS": "1000000", "SESSIOND_ADMISSION_MAX_OPEN_STREAMS": "1000000"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--levels", default="1,10,100,1000", help="concurrent sessions per step (comma list)")
    p.add_argument("--messages", type=int, default=1000, help="most messages per session (M)")
    p.add_argument("--duration", type=float, default=8.0, help="seconds of sending per step, after ramp-up")
    p.add_argument("--ramp", type=float, default=1.0, help="seconds over which the clients start")
    p.add_argument("--tps", type=float, default=0.0, help="model tokens/s per reply (0 = unpaced)")
    p.add_argument("--reply-tokens", default="100",
                   help="tokens per reply (comma list: each length in turn, the servers started again for it)")
    p.add_argument("--targets", default="sessiond,reference", help="servers to drive: sessiond, reference")
    p.add_argument("--repeat", type=int, default=1, help="run each step this many times (servers alternate)")
    p.add_argument("--keep-admission", action="store_true", help="keep config.toml's [admission] limits")
    p.add_argument("--lag-target-ms", type=float, default=50.0,
                   help="paced runs: a step holds if its p99 delivery lag is below this, with no errors")
    p.add_argument("--until-miss", action="store_true",
                   help="paced runs: stop raising C once every target has missed the lag target at a step")


async def run_load(
    child: Child, label: str, spec: LoadSpec, report: Report, prog: Any, group: str = "", series: str = "",
    **row: Any,
) -> dict[str, Any]:
    """Drive ``spec`` against ``child``; add a row and a timeline to ``report``."""
    api = Api(child.url)
    tl = Timeline(label, 0.0, group=group, series=series)
    total = spec.ramp + spec.duration
    task = prog.add_task(label, total=total, info="")

    def tick(s: Sampler) -> None:
        elapsed = now() - tl.t0
        rows = tl.rows()
        recent = rows[-2]["events_per_s"] if len(rows) >= 2 else 0.0
        prog.update(
            task,
            completed=min(elapsed, total),
            info=f"{recent:>9,.0f} ev/s  rss {s.last_rss / MB:,.0f} MB",
        )

    tl.t0 = now()
    commits: dict[str, float | None] = {}
    try:
        async with AsyncExitStack() as stack:
            if child.name == "sessiond":
                path = await maybe_profile(stack, report.params, child, label, report.started)
                if path is not None:
                    report.notes.append(f"profile of {label}: {path}")
            before = await api.metric_values(*_COMMIT_METRICS) if child.name == "sessiond" else {}
            sampler = await stack.enter_async_context(Sampler(child, tl, tick))
            res = await drive(api, spec, tl)
            if before:
                commits = _commit_figures(before, await api.metric_values(*_COMMIT_METRICS), tl)
    finally:
        await api.aclose()
    prog.update(task, completed=total)
    out = result_row(
        res,
        **row,
        rss_mb=round(sampler.max_rss / MB, 1),
        server_cpu=round(sampler.server_cpu * 100),
        client_cpu=round(sampler.client_cpu * 100),
        client_lag_ms=round(sampler.client_lag_max * 1000),
        cpu_us_per_event=round(sampler.server_cpu_seconds / res.events * 1e6, 2) if res.events else None,
        cpu_us_per_message=round(sampler.server_cpu_seconds / res.messages * 1e6) if res.messages else None,
        loop_us_per_message=round(sampler.server_loop_seconds / res.messages * 1e6) if res.messages else None,
        events_per_message=round(res.events / res.messages, 2) if res.messages else None,
    )
    out.update(commits)
    out["refused"] = res.refused
    out["refused_p99_ms"] = None
    if res.refused_latency:
        from bench.metrics import ms, percentile

        out["refused_p50_ms"] = ms(percentile(res.refused_latency, 50))
        out["refused_p99_ms"] = ms(percentile(res.refused_latency, 99))
    out["admitted_clients"] = res.admitted_clients
    out["unfinished"] = res.unfinished
    report.rows.append(out)
    report.timelines.append(tl)
    return out


# sessiond's own accounting of its group commits, read before and after a step.
_COMMIT_METRICS = (
    "sessiond_store_commit_seconds_count", "sessiond_store_commit_seconds_sum", "sessiond_store_commit_ops_total",
)


def _commit_figures(before: dict[str, float], after: dict[str, float], tl: Timeline) -> dict[str, float | None]:
    """Group commits per second over the step, ops per commit and the mean commit's ms."""
    count, seconds, ops = (after.get(k, 0.0) - before.get(k, 0.0) for k in _COMMIT_METRICS)
    wall = max(now() - tl.t0, 1e-9)
    return {
        "commits_per_s": round(count / wall, 1),
        "ops_per_commit": round(ops / count, 1) if count else None,
        "commit_ms": round(seconds / count * 1000, 2) if count else None,
    }


# Issue 15's targets for C=100 unpaced, sessiond/reference events/s, by tokens per reply: the
# shorter the reply, the more a message's fixed cost weighs.
def _ratio_target(reply_tokens: int) -> float:
    return 0.7 if reply_tokens < 100 else 1.0 if reply_tokens < 200 else 1.1


async def run(args: argparse.Namespace, report: Report) -> None:
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    lengths = _lengths(args)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    columns: list[tuple[str, str]] = [("target", "server"), ("clients", "C")]
    if len(lengths) > 1:
        columns.append(("reply_tokens", "tokens"))
    columns += [
        ("messages", "msgs"), ("events_per_s", "events/s"), ("ratio", "vs ref"), ("ttft_p50_ms", "TTFT p50 ms"),
        ("ttft_p99_ms", "TTFT p99 ms"), ("full_p50_ms", "reply p50 ms"), ("full_p99_ms", "reply p99 ms"),
    ]
    if args.tps > 0:
        columns += [("lag_p50_ms", "lag p50 ms"), ("lag_p99_ms", "lag p99 ms")]
        report.notes.append(lag_note())
    columns += [
        ("errors", "errors"), ("rss_mb", "RSS MB"), ("server_cpu", "srv CPU%"), ("cpu_us_per_event", "srv µs/event"),
        ("cpu_us_per_message", "srv µs/msg"), ("loop_us_per_message", "loop µs/msg"), ("client_cpu", "cli CPU%"),
        ("client_lag_ms", "cli late ms"), ("commits_per_s", "commits/s"), ("ops_per_commit", "ops/commit"),
        ("commit_ms", "commit ms"),
    ]
    for key, heading in columns:
        report.column(key, heading)
    env = {} if args.keep_admission else NO_ADMISSION
    ratios: dict[tuple[int, int], list[float]] = {}
    with progress() as prog:
        for tokens in lengths:
            held = await _run_length(args, report, prog, env, targets, levels, tokens, ratios)
            if args.tps > 0:
                _capacity(args, report, held, tokens)
    for (tokens, c), values in ratios.items():
        mid = statistics.median(values)
        runs = ", ".join(f"{v:.0%}" for v in values)
        report.notes.append(
            f"C={c}, {tokens}-token replies: sessiond/reference events/s, median of {len(values)}: {mid:.0%} ({runs})"
        )
        if c == 100 and args.tps == 0:
            goal = _ratio_target(tokens)
            report.check(f"C=100 unpaced, {tokens}-token replies, sessiond/reference events/s >= {goal:g}",
                         mid >= goal, f"median {mid:.3f}")
    if len(lengths) > 1:
        # What a message costs whatever its length, and what each event adds.
        report.cost, notes = cost_fits(report.rows)
        report.notes += notes


def _lengths(args: argparse.Namespace) -> list[int]:
    """The reply lengths of ``--reply-tokens``, in the order given."""
    return [int(x) for x in str(args.reply_tokens).split(",") if x.strip()]


async def _run_length(
    args: argparse.Namespace, report: Report, prog: Any, env: dict[str, str], targets: list[str], levels: list[int],
    tokens: int, ratios: dict[tuple[int, int], list[float]],
) -> dict[str, dict[int, list[dict[str, Any]]]]:
    """Every level at ``tokens`` per reply, on servers started for it; the rows of each step."""
    several = len(_lengths(args)) > 1
    async with AsyncExitStack() as stack:
        children: dict[str, Child] = {}
        if "sessiond" in targets:
            children["sessiond"] = sessiond(
                args.out, tokens_per_second=args.tps, reply_tokens=tokens, config=args.config, env=env
            )
        if "reference" in targets:
            children["reference"] = reference(args.out, tokens_per_second=args.tps, reply_tokens=tokens)
        for child in children.values():
            await child.start()
            stack.push_async_callback(child.stop)
            stack.callback(remove_data, child)
            await warm_up(child.url, child.name)
        held: dict[str, dict[int, list[dict[str, Any]]]] = {name: {} for name in children}
        for c in levels:
            if args.tps > 0 and args.until_miss and all(
                by_c and _missed(by_c[max(by_c)], args.lag_target_ms) for by_c in held.values()
            ):
                break  # every server missed at the last step: higher C only takes longer
            for rep in range(args.repeat):
                spec = LoadSpec(
                    clients=c, messages=args.messages, duration=args.duration, ramp=args.ramp if c > 1 else 0,
                    rate=args.tps,
                )
                rows = {}
                step = f"C={c}" + (f" {tokens} tok" if several else "")
                for name, child in children.items():
                    tag = f"{name} {step}" + (f" #{rep + 1}" if args.repeat > 1 else "")
                    rows[name] = await run_load(child, tag, spec, report, prog, group=step,
                                                series=name + tag[len(f"{name} {step}"):],
                                                target=name, clients=c, reply_tokens=tokens)
                    held[name].setdefault(c, []).append(rows[name])
                if "sessiond" in rows and "reference" in rows and rows["reference"]["events_per_s"]:
                    ratio = rows["sessiond"]["events_per_s"] / rows["reference"]["events_per_s"]
                    rows["sessiond"]["ratio"] = f"{ratio:.0%}"
                    ratios.setdefault((tokens, c), []).append(ratio)
                if args.tps == 50 and c >= 500 and "sessiond" in rows:
                    lag = rows["sessiond"]["lag_p99_ms"]
                    ok = lag is not None and lag < 50 and rows["sessiond"]["errors"] == 0
                    report.check(f"C={c} at 50 tok/s: p99 lag < 50 ms, no errors", ok,
                                 f"p99 {lag} ms, {rows['sessiond']['errors']} errors")
    return held


def _missed(rows: list[dict[str, Any]], target_ms: float) -> bool:
    """Whether the runs of one step missed the lag target: median p99 lag, or any error."""
    lags = [r["lag_p99_ms"] for r in rows]
    if any(lag is None for lag in lags) or any(r["errors"] for r in rows):
        return True
    return bool(statistics.median(lags) >= target_ms)


def _capacity(
    args: argparse.Namespace, report: Report, held: dict[str, dict[int, list[dict[str, Any]]]], tokens: int
) -> None:
    """The largest C each server held (every step up to it below the lag target), side by side."""
    best: dict[str, int] = {}
    for name, by_c in held.items():
        top = 0
        for c in sorted(by_c):
            if _missed(by_c[c], args.lag_target_ms):
                break
            top = c
        best[name] = top
        ttft = [r["ttft_p99_ms"] for r in by_c.get(top, []) if r["ttft_p99_ms"] is not None]
        at = f", TTFT p99 there {statistics.median(ttft):.0f} ms" if ttft else ""
        report.notes.append(
            f"{name}: largest C with p99 lag < {args.lag_target_ms:g} ms and no errors at {args.tps:g} tokens/s, "
            f"{tokens}-token replies: {top or 'none of the steps'}{at}"
        )
    several = len(_lengths(args)) > 1
    report.capacity.update({(f"{name}, {tokens} tokens" if several else name): by_c for name, by_c in held.items()})
    report.capacity_target_ms = args.lag_target_ms
    if "sessiond" in best and "reference" in best and best["reference"]:
        ratio = best["sessiond"] / best["reference"]
        report.check(f"paced capacity, {tokens}-token replies, sessiond/reference >= 1.0", ratio >= 1.0,
                     f"{best['sessiond']} / {best['reference']} = {ratio:.2f}")
