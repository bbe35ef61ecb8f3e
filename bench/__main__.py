"""``python -m bench SCENARIO [options]``: run a scenario, print its table, save JSON and a plot."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from bench.procs import ROOT, machine_info, raise_nofile
from bench.report import Report, console
from bench.scenarios import NAMES

_HELP = {
    "stream": "C concurrent sessions, sessiond vs the bare aiohttp reference server",
    "fanout": "one session, S subscribers: delivery lag from the first receipt",
    "idle": "N sessions and N idle SSE streams: RSS per stream, per live actor, per passivated session",
    "reconnect": "clients drop at random points and resume by Last-Event-ID: lost and duplicated events",
    "crash": "SIGKILL under load, restart: acknowledged messages lost, recovery time",
    "soak": "a fixed message rate for a bounded time: RSS and latency drift",
    "overload": "twice the capacity with admission control: admitted latency, refusal speed",
    "search": "full-text search over many imported messages: latency of GET /v1/sessions/search",
    "cluster": "the same load on 1 node and on N nodes in cluster mode (PostgreSQL + Redis): events/s, lag",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description="sessiond's load-testing bench.")
    sub = parser.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")
    for name in NAMES:
        p = sub.add_parser(name, help=_HELP[name], description=_HELP[name])
        p.add_argument("--out", type=Path, default=ROOT / "bench" / "out", help="where JSON, plots and logs go")
        default_cfg = ROOT / "config.toml"
        p.add_argument(
            "--config", type=Path, default=default_cfg if default_cfg.is_file() else None,
            help="config.toml for the sessiond under test (default: the repository's)",
        )
        p.add_argument("--seed", type=int, default=1, help="seed for the random choices (drops, kill time)")
        p.add_argument(
            "--profile", choices=("flamegraph", "speedscope", "raw"),
            help="sample the sessiond server with py-spy during each step (files next to the JSON)",
        )
        importlib.import_module(f"bench.scenarios.{name}").add_arguments(p)
    return parser


async def _main(args: argparse.Namespace) -> int:
    module = importlib.import_module(f"bench.scenarios.{args.scenario}")
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    report = Report(args.scenario, params, machine_info())
    try:
        await module.run(args, report)
    finally:
        if report.rows:
            report.print()
            json_path, png = report.save(args.out)
            console.print(f"JSON: {json_path}")
            if png is not None:
                console.print(f"plot: {png}")
    return 1 if report.failed else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    raise_nofile(getattr(args, "nofile", 0) or 4096)
    try:
        import uvloop

        return uvloop.run(_main(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
