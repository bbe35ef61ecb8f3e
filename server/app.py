"""make_app(config): wires store, registry, auth and routes. No globals."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from aiohttp import web

from actors.cluster.node import Cluster
from actors.ports import Provider
from actors.registry import Registry
from actors.session.actor import ActorSettings
from actors.store.postgres import PostgresStore
from actors.store.sqlite import SqliteStore
from server.admission import ADMISSION, Admission, admission_middleware
from server.agents import setup_agents
from server.appkeys import CONFIG, REGISTRY, STORE
from server.auth.setup import setup_auth
from server.config import Config, ConfigError
from server.errors import problem_middleware
from server.logs import request_id_middleware
from server.metrics import METRICS, Metrics, metrics_middleware
from server.middleware.auth import auth_middleware
from server.protocols import add_protocol_routes
from server.table import add_routes

__all__ = ["make_app", "make_store"]


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
        on_commit=on_commit,
    )


def make_cluster(config: Config) -> Cluster | None:
    """Cluster mode (Redis fan-out, leases, forwarding) when ``fanout.kind = "redis"``."""
    if config.fanout.kind == "local":
        return None
    if config.fanout.kind != "redis":
        raise ConfigError(f"fanout.kind {config.fanout.kind!r} is not supported (use \"local\" or \"redis\")")
    return Cluster(config.redis.url, config.cluster)


def make_app(config: Config) -> web.Application:
    app = web.Application(
        middlewares=[
            request_id_middleware, metrics_middleware, problem_middleware, auth_middleware, admission_middleware
        ],
        client_max_size=config.server.max_body_bytes,
    )
    app[CONFIG] = config
    app[ADMISSION] = Admission(config.admission)
    metrics = Metrics(app) if config.metrics.enabled else None
    if metrics is not None:
        app[METRICS] = metrics
    store = make_store(config, metrics.observe_commit if metrics else None)
    app[STORE] = store
    # Agents, model routes, tools and documents.
    provider: Provider = setup_agents(app, config, store, measure=metrics.measure if metrics else None)
    s = config.sessions
    registry = Registry(
        store,
        provider,
        settings=ActorSettings(
            mailbox_size=s.mailbox_size,
            event_retention=s.event_retention,
            seq_block=s.seq_block,
            max_queued=s.max_queued,
            replay_events=s.replay_events,
        ),
        idle_seconds=s.idle_seconds,
        cluster=make_cluster(config),
    )
    app[REGISTRY] = registry
    setup_auth(app, config, store)  # API keys, session tokens, guests, rate limits

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await store.open()
        await registry.start()
        yield
        await registry.drain()  # normally done in on_shutdown already; harmless twice
        await store.aclose()

    async def on_shutdown(app: web.Application) -> None:
        # Interrupt running tasks (streams see task.interrupted), flush, close the streams.
        await registry.drain()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(on_shutdown)
    add_routes(app)
    add_protocol_routes(app)  # AI SDK, OpenAI Responses, AG-UI adapters
    return app
