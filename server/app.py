"""make_app(config): the one composition root. It builds every service, keeps each under its key
(server/appkeys.py), calls each ``setup_*`` in order, and adds the routes of server/table.py.
No globals."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from aiohttp import web

from actors.cluster.node import Cluster
from actors.core.records import SessionRecord
from actors.core.retention import RetentionRules
from actors.ports import Provider
from actors.registry import Registry
from actors.session.actor import ActorSettings
from actors.store.postgres import PostgresStore
from actors.store.sqlite import SqliteStore
from actors.sweeper import Sweeper, SweeperSettings
from server import sse
from server.admission import Admission
from server.agents import setup_agents
from server.appkeys import ADMISSION, CONFIG, DELIVERER, METRICS, OPENAPI, OUTAGES, REGISTRY, STORE, SWEEPER
from server.auth.setup import setup_auth
from server.config import Config, ConfigError
from server.deletion import forget_session
from server.errors import OutageLog
from server.logs import redact_parser_errors
from server.metrics import Metrics
from server.middleware.auth import auth_middleware
from server.middleware.cors import setup_cors
from server.middleware.metrics import metrics_middleware
from server.middleware.problem import problem_middleware
from server.middleware.request_id import request_id_middleware
from server.openapi import spec_bytes
from server.preflight import prepare_data_dir
from server.table import ROUTES, add_routes
from server.webhooks import make_deliverer

__all__ = ["make_app", "make_cluster", "make_store", "make_sweeper"]


def make_store(config: Config, on_commit: Callable[[float, int], None] | None = None) -> SqliteStore | PostgresStore:
    if config.store.kind == "postgres":
        return PostgresStore(
            config.store.postgres_dsn,
            max_batch=config.store.max_batch,
            pool_size=config.store.postgres_pool_size,
            on_commit=on_commit,
        )
    if config.store.kind != "sqlite":
        raise ConfigError(f"store.kind {config.store.kind!r} is not supported (use \"sqlite\" or \"postgres\")")
    return SqliteStore(
        config.data_dir / config.store.sqlite_file,
        synchronous=config.store.synchronous,
        max_batch=config.store.max_batch,
        checkpoint_seconds=config.store.checkpoint_seconds,
        wal_size_limit=config.store.wal_size_limit_bytes,
        on_commit=on_commit,
    )


def make_cluster(config: Config) -> Cluster | None:
    """Cluster mode (Redis fan-out, leases, forwarding) when ``fanout.kind = "redis"``."""
    if config.fanout.kind == "local":
        return None
    if config.fanout.kind != "redis":
        raise ConfigError(f"fanout.kind {config.fanout.kind!r} is not supported (use \"local\" or \"redis\")")
    return Cluster(config.redis.url, config.cluster, frame=sse.frame)


def make_sweeper(app: web.Application, config: Config, registry: Registry) -> Sweeper:
    """The retention sweeper ([retention]), run by the registry; in a cluster, one node at a time."""
    r = config.retention
    rules = RetentionRules(namespaces=r.namespaces, agents=r.agents, temporary_ttl_seconds=r.temporary_ttl_seconds)
    lock = None
    if registry.cluster is not None:
        # Held while this node lives and sweeps: it lapses three sweeps (at least one lease)
        # after the last, so a dead sweeper's role passes on.
        ttl_ms = max(int(r.sweep_seconds * 3000), registry.cluster.settings.lease_ms)
        lock = registry.cluster.lock("retention", ttl_ms)

    async def on_deleted(record: SessionRecord) -> None:
        await forget_session(app, record)

    return Sweeper(
        registry.get, registry.store, SweeperSettings(interval=r.sweep_seconds, batch=r.batch, rules=rules),
        on_deleted=on_deleted, lock=lock,
    )


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    # aiohttp would send "Python/3.x aiohttp/3.y": versions tell an attacker what to try.
    response.headers["Server"] = "sessiond"


def make_app(config: Config) -> web.Application:
    app = web.Application(
        # Outermost first. Admission is no middleware: it needs the decoded body (server/tasks.py).
        middlewares=[request_id_middleware, metrics_middleware, problem_middleware, auth_middleware],
        client_max_size=config.server.max_body_bytes,
        handler_args={
            # aiohttp closes a connection idle this long, from its start too: one that never
            # finishes its headers (slowloris) is closed at this deadline however it trickles.
            "keepalive_timeout": config.server.header_timeout_seconds,
            # After an early answer (408, 413), the rest of a body is read for at most this long.
            "lingering_time": 2.0,
        },
    )
    app[CONFIG] = config
    app.on_response_prepare.append(_server_header)
    redact_parser_errors()  # an over-long header line would put a key into the error log
    prepare_data_dir(config)  # 0700, and the database 0600, before the secret or the store writes there
    app[ADMISSION] = Admission(config.admission)
    app[OUTAGES] = OutageLog()
    metrics = Metrics() if config.metrics.enabled else None
    if metrics is not None:
        app[METRICS] = metrics
    store = make_store(config, metrics.observe_commit if metrics else None)
    app[STORE] = store
    # Agents, model routes, tools and documents.
    provider: Provider = setup_agents(app, config, store, observer=metrics)
    s = config.sessions
    cluster = make_cluster(config)
    # Webhooks: the actors write each event's deliveries in its commit; the deliverer sends them.
    deliverer = make_deliverer(config, store, node_id=cluster.node_id if cluster else None, metrics=metrics)
    if deliverer is not None:
        app[DELIVERER] = deliverer
    registry = Registry(
        store,
        provider,
        settings=ActorSettings(
            mailbox_size=s.mailbox_size,
            event_retention=s.event_retention,
            event_retention_bytes=s.event_retention_bytes,
            seq_block=s.seq_block,
            max_queued=s.max_queued,
            replay_events=s.replay_events,
            wait_timeout=config.tools.approval_timeout_seconds,
            fold_seconds=s.fold_seconds,
        ),
        idle_seconds=s.idle_seconds,
        max_live=s.max_live,
        replay_memory_bytes=s.replay_memory_bytes,
        frame=sse.frame,  # events go out as SSE, framed once each in the session's log
        cluster=cluster,
        outbox=deliverer.outbox() if deliverer is not None else None,
    )
    app[REGISTRY] = registry
    if cluster is not None:
        admission = app[ADMISSION]
        registry.admit_task = lambda: admission.check_task(registry.stats.tasks_running)
    app[SWEEPER] = sweeper = make_sweeper(app, config, registry)
    registry.supervise(sweeper.run, name="retention-sweeper")
    if metrics is not None:
        metrics.watch(registry)
        metrics.watch_retention(sweeper.stats)
    setup_auth(app, config, store)  # API keys, session tokens, guests, rate limits

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await store.open()
        if deliverer is not None:
            await deliverer.start()
        await registry.start()
        yield
        await registry.drain()  # normally done in on_shutdown already; harmless twice
        if deliverer is not None:
            await deliverer.aclose()
        await store.aclose()

    async def on_shutdown(app: web.Application) -> None:
        # Interrupt running tasks (streams see task.interrupted), flush, close the streams.
        await registry.drain()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(on_shutdown)
    add_routes(app, ROUTES)
    app[OPENAPI] = spec_bytes(ROUTES)
    setup_cors(app, config.server.cors_origins)  # a frontend on another origin: [server] cors_origins
    return app
