"""What a bench run leaves: a live progress bar, a table, a JSON file and a plot."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.metrics import Timeline

__all__ = ["Report", "console", "progress"]

# Wide enough for the tables when the output is a file or a pipe (rich assumes 80 there).
console = Console(width=None if sys.stdout.isatty() else 180)


def progress() -> Progress:
    """The live bar: one line per step, with the step's running figures in ``info``."""
    return Progress(
        TextColumn("[bold]{task.description:<28}"),
        BarColumn(bar_width=28),
        TextColumn("{task.percentage:>5.1f}%"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        refresh_per_second=4,
    )


class Report:
    """The rows of one scenario run, written as a table, ``<name>-<time>.json`` and ``.png``."""

    def __init__(self, scenario: str, params: dict[str, Any], machine: dict[str, Any]) -> None:
        self.scenario = scenario
        self.params = params
        self.machine = machine
        self.columns: list[tuple[str, str]] = []  # (key, heading)
        self.rows: list[dict[str, Any]] = []
        self.timelines: list[Timeline] = []
        self.notes: list[str] = []
        self.checks: list[tuple[str, bool, str]] = []  # (target, met, measured)
        self.hard: set[str] = set()  # correctness targets: missing one fails the run
        self.started = time.strftime("%Y%m%d-%H%M%S")
        # Paced sweeps: server -> C -> the rows of that step's runs, and the lag target.
        self.capacity: dict[str, dict[int, list[dict[str, Any]]]] = {}
        self.capacity_target_ms = 0.0
        # Runs at several reply lengths: (server, C) -> the fitted (µs per message, µs per event).
        self.cost: dict[tuple[str, int], tuple[float, float]] = {}

    def column(self, key: str, heading: str) -> None:
        self.columns.append((key, heading))

    def check(self, target: str, met: bool, measured: str, *, hard: bool = False) -> None:
        self.checks.append((target, met, measured))
        if hard:
            self.hard.add(target)

    @property
    def failed(self) -> bool:
        """A correctness target was missed (speed targets are reported, met or missed)."""
        return any(not met and target in self.hard for target, met, _ in self.checks)

    # -- output --------------------------------------------------------------------------

    def table(self) -> Table:
        table = Table(title=f"sessiond bench: {self.scenario}", show_lines=False)
        for _, heading in self.columns:
            table.add_column(heading, justify="right")
        for row in self.rows:
            table.add_row(*(_fmt(row.get(key)) for key, _ in self.columns))
        return table

    def print(self) -> None:
        console.print(self.table())
        for target, met, measured in self.checks:
            mark = "[green]met[/]" if met else "[red]missed[/]"
            console.print(f"  target {target}: {mark} ({measured})")
        for note in self.notes:
            console.print(f"  {note}")

    def save(self, out_dir: Path) -> tuple[Path, Path | None]:
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = out_dir / f"{self.scenario}-{self.started}"
        data = {
            "scenario": self.scenario,
            "started": self.started,
            "machine": self.machine,
            "params": self.params,
            "columns": self.columns,
            "rows": self.rows,
            "checks": [{"target": t, "met": m, "measured": v} for t, m, v in self.checks],
            "notes": self.notes,
            "timelines": [tl.to_json() for tl in self.timelines],
        }
        json_path = stem.with_suffix(".json")
        json_path.write_text(json.dumps(data, indent=1, default=str))
        png = plot(self.timelines, stem.with_suffix(".png"), f"sessiond bench: {self.scenario}")
        if self.capacity:
            done = plot_capacity(self.capacity, self.capacity_target_ms, Path(f"{stem}-capacity.png"),
                                 f"sessiond bench: {self.scenario}, paced: p99 lag and TTFT by C")
            if done is not None:
                console.print(f"capacity plot: {done}")
        if self.cost:
            done = plot_cost(self.rows, self.cost, Path(f"{stem}-cost.png"),
                             f"sessiond bench: {self.scenario}, server CPU per message by its length")
            if done is not None:
                console.print(f"cost plot: {done}")
        return json_path, png


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def plot(timelines: Sequence[Timeline], path: Path, title: str) -> Path | None:
    """Throughput, p99 latency and server RSS over time: one column per step group, one line per server."""
    if not timelines:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        console.print("[yellow]matplotlib is not installed (pip install -e '.[bench]'): no plot[/]")
        return None
    groups: dict[str, list[Timeline]] = {}
    for tl in timelines:
        groups.setdefault(tl.group, []).append(tl)
    cols = len(groups)
    fig, axes = plt.subplots(3, cols, figsize=(max(4.0 * cols, 7.0), 8), squeeze=False, sharex="col")
    colors: dict[str, str] = {}
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for c, (group, tls) in enumerate(groups.items()):
        ax_ev, ax_lat, ax_rss = axes[0][c], axes[1][c], axes[2][c]
        ax_ev.set_title(group, fontsize=10)
        for tl in tls:
            color = colors.setdefault(tl.series, palette[len(colors) % len(palette)])
            rows = tl.rows()
            if rows:
                ax_ev.plot([r["t"] for r in rows], [r["events_per_s"] for r in rows], color=color, label=tl.series)
                kinds = [k for k in ("lag", "ttft", "refused", "resume") if any(r.get(f"{k}_p99_ms") for r in rows)]
                for kind, style in zip(kinds[:2], ("-", "--"), strict=False):
                    pts = [(r["t"], r[f"{kind}_p99_ms"]) for r in rows if r.get(f"{kind}_p99_ms") is not None]
                    ax_lat.plot([p[0] for p in pts], [p[1] for p in pts], style, color=color,
                                label=f"{tl.series} {kind} p99")
            if tl.gauges:
                ax_rss.plot([g["t"] for g in tl.gauges], [g.get("rss_mb", 0) for g in tl.gauges], color=color,
                            label=tl.series)
        ax_lat.set_yscale("symlog", linthresh=10)
        ax_rss.set_xlabel("seconds")
        for ax in (ax_ev, ax_lat, ax_rss):
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=8)
        handles, _ = ax_lat.get_legend_handles_labels()
        if handles:
            ax_lat.legend(fontsize=7)
    axes[0][0].set_ylabel("events/s received")
    axes[1][0].set_ylabel("p99 latency, ms")
    axes[2][0].set_ylabel("server RSS, MB")
    handles, _ = axes[0][0].get_legend_handles_labels()
    if handles:
        axes[0][0].legend(fontsize=7)
    return _save(fig, title, path)


def plot_capacity(
    capacity: dict[str, dict[int, list[dict[str, Any]]]], target_ms: float, path: Path, title: str
) -> Path | None:
    """p99 delivery lag and TTFT p99 against C, one line per server, the lag target drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    import statistics

    fig, (ax_lag, ax_ttft) = plt.subplots(1, 2, figsize=(11, 4))
    for name, by_c in capacity.items():
        cs = sorted(by_c)
        for ax, key in ((ax_lag, "lag_p99_ms"), (ax_ttft, "ttft_p99_ms")):
            pts = [(c, statistics.median(v)) for c in cs if (v := [r[key] for r in by_c[c] if r[key] is not None])]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=name)
    ax_lag.axhline(target_ms, color="grey", linestyle="--", label=f"target {target_ms:g} ms")
    for ax, label in ((ax_lag, "p99 delivery lag, ms"), (ax_ttft, "TTFT p99, ms")):
        ax.set_xlabel("C (concurrent streams)")
        ax.set_ylabel(label)
        ax.set_yscale("symlog", linthresh=10)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, title, path)


def _save(fig: Any, title: str, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)
    return path


def cost_fits(rows: Sequence[dict[str, Any]]) -> tuple[dict[tuple[str, int], tuple[float, float]], list[str]]:
    """A message's server CPU against its events, fitted per server and C over runs at two or
    more reply lengths: what a message costs whatever its length (the intercept) and what each
    event adds (the slope). The fits ((server, C) -> (µs, µs per event)) and a note for each,
    the event loop's thread alone too where the server has threads beside it."""
    from bench.metrics import fit_line

    fits: dict[tuple[str, int], tuple[float, float]] = {}
    notes: list[str] = []
    for name, c in sorted({(r["target"], r["clients"]) for r in rows if "reply_tokens" in r}):
        mine = _runs_of(rows, name, c)
        if len({r["reply_tokens"] for r in mine}) < 2:
            continue
        keys = [("cpu_us_per_message", "server")]
        if _threaded(mine):
            keys.append(("loop_us_per_message", "event loop"))
        for key, what in keys:
            line = fit_line([(r["events_per_message"], r[key]) for r in mine])
            if line is None:
                continue
            fixed, per_event = line
            if key == "cpu_us_per_message":
                fits[(name, c)] = line
            notes.append(
                f"{name} C={c}, {what} CPU per message: {fixed:,.0f} µs + {per_event:.2f} µs per event"
                f" (least squares over {len(mine)} runs)"
            )
    return fits, notes


def _runs_of(rows: Sequence[dict[str, Any]], name: str, c: int) -> list[dict[str, Any]]:
    """The runs of server ``name`` at C=``c`` that measured their CPU per message."""
    return [r for r in rows if r["target"] == name and r["clients"] == c and r.get("cpu_us_per_message")]


def _threaded(rows: Sequence[dict[str, Any]]) -> bool:
    """Whether a server spent CPU beyond its event loop's thread (sessiond's store threads)."""
    return any(r["loop_us_per_message"] < 0.98 * r["cpu_us_per_message"] for r in rows)


def plot_cost(
    rows: Sequence[dict[str, Any]], fits: dict[tuple[str, int], tuple[float, float]], path: Path, title: str
) -> Path | None:
    """Server CPU per message (and the event loop's share of it) against events per message, a
    point per run, and each server's fitted line: its intercept is what a message costs whatever
    its length."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    xmax = max((r["events_per_message"] or 0) for r in rows) * 1.05
    for i, ((name, c), (fixed, per_event)) in enumerate(fits.items()):
        label = f"{name} C={c}"
        mine = _runs_of(rows, name, c)
        color = f"C{i}"
        ax.plot([r["events_per_message"] for r in mine], [r["cpu_us_per_message"] for r in mine], "o", color=color,
                label=f"{label}: {fixed:,.0f} µs + {per_event:.2f} µs/event")
        if _threaded(mine):
            ax.plot([r["events_per_message"] for r in mine], [r["loop_us_per_message"] for r in mine], "x",
                    color=color, label=f"{label}: its event loop's thread")
        ax.plot([0, xmax], [fixed, fixed + per_event * xmax], "-", color=color, alpha=0.6)
    ax.set_xlim(0, xmax)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("events per message (a reply's tokens and the frames around them)")
    ax.set_ylabel("server CPU per message, µs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, title, path)


def main() -> None:
    """``python -m bench.report FILE.json [OUT.png]``: draw a saved run's plot again (and its cost
    plot, ``OUT-cost.png``, for a run at several reply lengths)."""
    from bench.metrics import SavedTimeline

    src = Path(sys.argv[1])
    data = json.loads(src.read_text())
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else src.with_suffix(".png")
    plot([SavedTimeline(t) for t in data["timelines"]], out, f"sessiond bench: {data['scenario']}")
    print(out)
    fits, _ = cost_fits(data["rows"])
    if fits:
        cost = out.with_name(f"{out.stem}-cost.png")
        plot_cost(data["rows"], fits, cost, f"sessiond bench: {data['scenario']}, server CPU per message by its length")
        print(cost)


if __name__ == "__main__":
    main()
