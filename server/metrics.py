"""Prometheus metrics: one CollectorRegistry per app, read by GET /metrics.

Counters the actors keep (``actors.core.records.Stats``) and gauges of the live actors are read
when scraped (``Metrics.watch(registry)``); the rest is recorded as it happens:

- every request, by route template and status, and each 429 by the limit that refused it
  (server/middleware/metrics.py);
- model calls, timed and counted by the router it observes (``first_chunk``, ``call_ended``:
  actors/agent/router.py ``CallObserver``);
- ``Metrics.observe_commit``: the store's group commits;
- ``Metrics.observe_webhook``: each webhook delivery attempt, by endpoint and outcome.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from actors.registry import Registry
from actors.sweeper import RetentionStats

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_SLOW = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class _ActorCollector(Collector):
    """Reads the registry's counters and its live actors at scrape time."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        registry = self._registry
        stats = registry.stats
        actors = registry.actors()
        depths = [a.mailbox_depth for a in actors]
        for name, doc, value in (
            ("events", "Events the sessions emitted (rate() of it is events per second).", stats.events),
            ("activations", "Sessions brought to life (from the store, or at the first use after their creation).",
             stats.activations),
            ("passivations", "Idle sessions snapshotted and dropped from memory.", stats.passivations),
            ("evictions", "Quiet sessions passivated before idle_seconds because more than [sessions] max_live "
             "were live, or their replay logs held more than [sessions] replay_memory_bytes.", stats.evictions),
            ("replay_shed_bytes", "Bytes of busy sessions' replay logs dropped (oldest first) because the live "
             "sessions' logs held more than [sessions] replay_memory_bytes.", stats.replay_shed),
            ("crashes", "Session actors that crashed and were restarted from the store.", stats.crashes),
            ("tasks_started", "Model tasks started.", stats.tasks_started),
        ):
            yield CounterMetricFamily(f"sessiond_{name}", doc, value=value)
        for name, doc, value in (
            ("actors_active", "Session actors live in memory.", len(actors)),
            ("replay_bytes", "Bytes of event frames the live sessions keep for replay, together.",
             registry.replay_bytes()),
            ("tasks_running", "Model tasks running now.", stats.tasks_running),
            ("streams_open", "Event streams (SSE) open now.", sum(a.hub.subscribers for a in actors)),
            (
                "streams_direct",
                "Open event streams caught up and written by their session directly (not behind or congested).",
                sum(a.hub.followers for a in actors),
            ),
            ("mailbox_depth_sum", "Commands waiting in all session mailboxes.", sum(depths)),
            ("mailbox_depth_max", "Commands waiting in the fullest session mailbox.", max(depths, default=0)),
        ):
            yield GaugeMetricFamily(f"sessiond_{name}", doc, value=value)


class _RetentionCollector(Collector):
    """The retention sweeper's counters, read at scrape time."""

    def __init__(self, stats: RetentionStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self._stats
        for name, doc, value in (
            ("sweeps", "Retention sweeps this node made.", s.sweeps),
            ("sweeps_skipped", "Retention sweeps left to the node holding the sweeper lock (cluster).", s.skipped),
            ("deleted", "Sessions retention deleted (temporary ones included).", s.deleted),
            ("trimmed", "Sessions retention trimmed to their newest messages (keep_latest).", s.trimmed),
            ("messages_trimmed", "Messages removed by keep_latest retention.", s.messages_trimmed),
            ("busy", "Due sessions left for the next sweep: a task ran or waited, or a stream was open.", s.busy),
            ("errors", "Retention sweeps or clean-ups that failed.", s.errors),
        ):
            yield CounterMetricFamily(f"sessiond_retention_{name}", doc, value=value)


class Metrics:
    """The metrics of one app, in a registry of their own (no process-wide state)."""

    def __init__(self, *, process: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # metric.labels(*values), made once: prometheus_client checks the values, builds a key
        # and takes a lock on every call, and some are made on every request and model call.
        # Bounded as the labels' values are: routes by their template, methods by name (the
        # middleware's), providers, endpoints and limits by the configuration.
        self.child = functools.lru_cache(maxsize=None)(self._child)
        r = self.registry
        if process:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        self.http_requests = Counter(
            "sessiond_http_requests", "HTTP requests answered, by route template and status.",
            ["method", "route", "status"], registry=r,
        )
        self.http_seconds = Histogram(
            "sessiond_http_request_seconds",
            "Time to answer a request (for streams: how long the stream stayed open).",
            ["method", "route"], buckets=_FAST, registry=r,
        )
        self.commit_seconds = Histogram(
            "sessiond_store_commit_seconds", "Latency of one store group commit.", buckets=_FAST, registry=r
        )
        self.commit_ops = Counter("sessiond_store_commit_ops", "Write operations committed to the store.", registry=r)
        self.provider_seconds = Histogram(
            "sessiond_provider_seconds", "Duration of a model call, by provider and outcome (ok|error|cancelled).",
            ["provider", "outcome"], buckets=_SLOW, registry=r,
        )
        self.provider_first_chunk = Histogram(
            "sessiond_provider_first_chunk_seconds", "Time from a model call to its first chunk.",
            ["provider"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0), registry=r,
        )
        self.provider_errors = Counter(
            "sessiond_provider_errors", "Model calls that failed, by provider and error type.",
            ["provider", "error"], registry=r,
        )
        self.webhook_attempts = Counter(
            "sessiond_webhook_attempts",
            "Webhook delivery attempts, by endpoint and outcome (delivered | retry | failed: given up).",
            ["endpoint", "outcome"], registry=r,
        )
        self.webhook_seconds = Histogram(
            "sessiond_webhook_attempt_seconds", "Duration of one webhook delivery attempt, by endpoint.",
            ["endpoint"], buckets=_SLOW, registry=r,
        )
        self.rate_limit_rejections = Counter(
            "sessiond_rate_limit_rejections", "Requests refused by a rate limit (429), by limit.",
            ["limit"], registry=r,
        )

    @staticmethod
    def _child(metric: Counter | Histogram, *values: str) -> Any:
        return metric.labels(*values)

    # -- hooks -----------------------------------------------------------------------------

    def observe_commit(self, seconds: float, ops: int) -> None:
        """The store's ``on_commit`` callback."""
        self.commit_seconds.observe(seconds)
        self.commit_ops.inc(ops)

    def observe_provider(
        self, provider: str, seconds: float, error: str | None = None, *, cancelled: bool = False
    ) -> None:
        outcome = "cancelled" if cancelled else "error" if error else "ok"
        self.child(self.provider_seconds, provider, outcome).observe(seconds)
        if error:
            self.provider_errors.labels(provider, error).inc()

    def observe_webhook(self, endpoint: str, outcome: str, seconds: float) -> None:
        """The webhook deliverer's ``on_attempt`` callback."""
        self.webhook_attempts.labels(endpoint, outcome).inc()
        self.webhook_seconds.labels(endpoint).observe(seconds)

    def watch(self, registry: Registry) -> None:
        """Read ``registry``'s counters and live actors at every scrape."""
        self.registry.register(_ActorCollector(registry))

    def watch_retention(self, stats: RetentionStats) -> None:
        """Read the retention sweeper's counters at every scrape."""
        self.registry.register(_RetentionCollector(stats))

    def rate_limited(self, limit: str) -> None:
        """One request refused by ``limit`` (e.g. ``"guest_messages_per_hour"``)."""
        self.rate_limit_rejections.labels(limit).inc()

    def first_chunk(self, provider: str, seconds: float) -> None:
        """A model call's first chunk came ``seconds`` after the call (the router's observer)."""
        self.child(self.provider_first_chunk, provider).observe(seconds)

    def call_ended(self, provider: str, seconds: float, error: str | None, *, cancelled: bool) -> None:
        """A model call ended (the router's observer)."""
        self.observe_provider(provider, seconds, error, cancelled=cancelled)

    def render(self) -> bytes:
        return generate_latest(self.registry)
