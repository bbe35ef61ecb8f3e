"""setup_auth(app, config, store): keys, session tokens, guests and rate limits, wired in."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from yarl import URL

from actors.store.base import Store
from server.appkeys import GUESTS, KEYRING, LIMITER, TOKENS
from server.auth.guests import Guests, RedisGuests, StoreGuests, Witnesses
from server.auth.keys import KeyRing
from server.auth.ratelimit import Limiter, MemoryLimiter, RedisLimiter
from server.auth.tokens import TokenService, load_secret
from server.config import Config, ConfigError

__all__ = ["setup_auth"]


def setup_auth(app: web.Application, config: Config, store: Store) -> None:
    """Put the KeyRing, TokenService, Guests and Limiter in ``app`` (and their life cycle)."""
    secret = load_secret(config.tokens, config.data_dir)
    keyring = app[KEYRING] = KeyRing(store, config.auth.api_keys)
    tokens = app[TOKENS] = TokenService(store, config.tokens, secret)
    keyring.on_revoke.append(lambda _key_id: tokens.forget_grants())
    witnesses = Witnesses(secret)
    backend = config.limits.backend
    limiter: Limiter
    guests: Guests
    if backend == "memory":
        limiter = MemoryLimiter()
        guests = StoreGuests(store, witnesses, config.guests.ttl_seconds)
        redis = None
    elif backend == "redis":
        import redis.asyncio as aioredis

        from actors.cluster.node import retry_once

        redis = aioredis.from_url(config.redis.url, **retry_once())
        # Under [cluster] prefix, like every other key: deployments sharing a Redis stay apart.
        prefix = config.cluster.prefix
        limiter = RedisLimiter(redis, prefix=f"{prefix}:limits:")
        guests = RedisGuests(redis, witnesses, config.guests.ttl_seconds, prefix=f"{prefix}:guest:")
    else:
        raise ConfigError(f'limits.backend {backend!r} is not supported (use "memory" or "redis")')
    app[LIMITER] = limiter
    app[GUESTS] = guests

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        if redis is not None:
            try:
                await redis.ping()
            except Exception as exc:
                await redis.aclose()
                where = URL(config.redis.url).with_user(None)  # no password in messages
                raise ConfigError(f"limits.backend is redis but {where} does not answer: {exc}") from exc
        await limiter.open()
        try:
            yield
        finally:
            await limiter.aclose()
            if redis is not None:
                await redis.aclose()

    app.cleanup_ctx.append(lifecycle)
