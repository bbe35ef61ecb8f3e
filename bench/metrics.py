"""Percentiles and a time series of throughput, latency and server memory."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["Timeline", "ms", "percentile", "summary"]


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of ``values`` (q in 0..100); None for no values."""
    if not values:
        return None
    data = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(data)))
    return data[min(rank, len(data)) - 1]


def summary(values: Sequence[float]) -> dict[str, float | int | None]:
    """Count, p50, p90, p99 and max, in the unit of ``values``."""
    if not values:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None}
    data = sorted(values)

    def at(q: float) -> float:
        return data[min(max(1, math.ceil(q / 100 * len(data))), len(data)) - 1]

    return {"n": len(data), "p50": at(50), "p90": at(90), "p99": at(99), "max": data[-1]}


def fit_line(points: Sequence[tuple[float, float]]) -> tuple[float, float] | None:
    """Least squares ``y = a + b * x`` over ``points``: (a, b), or None with fewer than two xs."""
    if len({x for x, _ in points}) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    b = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
    return my - b * mx, b


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


class _Bucket:
    __slots__ = ("events", "samples")

    def __init__(self) -> None:
        self.events = 0
        self.samples: dict[str, list[float]] = {}


class Timeline:
    """Events and latency samples bucketed by time since ``t0``, plus gauges (RSS, CPU)."""

    def __init__(self, label: str, t0: float, bucket: float = 1.0, *, group: str = "", series: str = "") -> None:
        self.label = label
        self.group = group or label  # the plot's column
        self.series = series or label  # the line's name within its column
        self.t0 = t0
        self.bucket = bucket
        self._buckets: dict[int, _Bucket] = {}
        self.gauges: list[dict[str, float]] = []

    def _at(self, t: float) -> _Bucket:
        i = int((t - self.t0) / self.bucket)
        b = self._buckets.get(i)
        if b is None:
            b = self._buckets[i] = _Bucket()
        return b

    def events(self, t: float, n: int) -> None:
        self._at(t).events += n

    def sample(self, name: str, t: float, value: float) -> None:
        self._at(t).samples.setdefault(name, []).append(value)

    def samples(self, name: str, t: float, values: list[float]) -> None:
        self._at(t).samples.setdefault(name, []).extend(values)

    def collect(self, name: str, start: float, end: float) -> tuple[int, list[float]]:
        """Events and ``name`` samples of the buckets in [start, end) seconds since t0."""
        events = 0
        values: list[float] = []
        for i, b in self._buckets.items():
            if start <= i * self.bucket < end:
                events += b.events
                values.extend(b.samples.get(name, ()))
        return events, values

    def gauge(self, t: float, **values: float) -> None:
        self.gauges.append({"t": round(t - self.t0, 3), **values})

    def rows(self) -> list[dict[str, Any]]:
        """One row per bucket: t (s), events/s, and p50/p99 of every sample kind, in ms."""
        out: list[dict[str, Any]] = []
        if not self._buckets:
            return out
        for i in range(0, max(self._buckets) + 1):
            b = self._buckets.get(i) or _Bucket()
            row: dict[str, Any] = {"t": round(i * self.bucket, 3), "events_per_s": b.events / self.bucket}
            for name, values in b.samples.items():
                row[f"{name}_p50_ms"] = ms(percentile(values, 50))
                row[f"{name}_p99_ms"] = ms(percentile(values, 99))
                row[f"{name}_n"] = len(values)
            out.append(row)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label, "group": self.group, "series": self.series, "bucket_s": self.bucket,
            "rows": self.rows(), "gauges": self.gauges,
        }


class SavedTimeline(Timeline):
    """A timeline read back from a report's JSON (for re-plotting)."""

    def __init__(self, data: dict[str, Any]) -> None:
        super().__init__(data["label"], 0.0, data.get("bucket_s", 1.0), group=data.get("group", ""),
                         series=data.get("series", ""))
        self._rows: list[dict[str, Any]] = data["rows"]
        self.gauges = data["gauges"]

    def rows(self) -> list[dict[str, Any]]:
        return self._rows
