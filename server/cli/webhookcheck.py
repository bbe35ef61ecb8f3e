"""The doctor's look at each webhook endpoint: its settings hold, its host accepts a connection,
and its deliveries of the last day did not fail.

Nothing is sent to a receiver (a probe opens a TCP connection and closes it), and the store is
only read: SQLite opened read-only, PostgreSQL with one query.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import Any

from yarl import URL

from actors.core.webhooks import EndpointHealth, WebhookEndpoint
from actors.store import outbox
from server.config import Config, ConfigError
from server.preflight import FAIL, OK, WARN, Check
from server.webhooks import endpoints_of

__all__ = ["RECENT_SECONDS", "check_webhooks"]

RECENT_SECONDS = 86_400.0
"""How far back the doctor looks at deliveries."""


def _sqlite_health(config: Config, since: float) -> list[EndpointHealth] | None:
    path = (config.data_dir / config.store.sqlite_file).resolve()
    if not path.exists():
        return []
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return outbox.health_of(db.execute(outbox.HEALTH, (since,)).fetchall())
        finally:
            db.close()
    except sqlite3.Error:
        return None  # no outbox yet (an older schema), or the store check said what is wrong


async def _postgres_health(config: Config, since: float) -> list[EndpointHealth] | None:
    import asyncpg  # type: ignore[import-untyped]

    try:
        conn = await asyncio.wait_for(asyncpg.connect(config.store.postgres_dsn, timeout=5), 8)
    except Exception:
        return None  # the postgres check says why
    try:
        rows = await conn.fetch(outbox.pg(outbox.HEALTH), since)
    except asyncpg.UndefinedTableError:
        return []
    finally:
        await conn.close()
    return outbox.health_of(rows)


async def _probe(endpoint: WebhookEndpoint) -> str | None:
    """Why ``endpoint``'s host does not accept a connection, or None if it does."""
    url = URL(endpoint.url)
    host, port = url.host or "", url.port or (443 if url.scheme == "https" else 80)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
    except (OSError, TimeoutError) as exc:
        return f"{host}:{port} does not accept a connection ({exc or type(exc).__name__})"
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return None


def _ago(at: float | None) -> str:
    if at is None:
        return ""
    minutes = max(0, int((time.time() - at) / 60))
    return f", {minutes} min ago" if minutes < 120 else f", {minutes // 60} h ago"


async def check_webhooks(config: Config) -> list[Check]:
    try:
        endpoints = endpoints_of(config)
    except ConfigError as exc:
        return [Check(FAIL, "webhooks", str(exc))]
    if not endpoints:
        return [Check(OK, "webhooks", "no endpoints configured")]
    since = time.time() - RECENT_SECONDS
    health: list[EndpointHealth] | None
    if config.store.kind == "postgres":
        health = await _postgres_health(config, since)
    else:
        health = _sqlite_health(config, since)
    by_name: dict[str, Any] = {h.endpoint: h for h in health or []}
    probes = await asyncio.gather(*(_probe(e) for e in endpoints))
    checks: list[Check] = []
    for endpoint, unreachable in zip(endpoints, probes, strict=True):
        where = f"[webhooks.endpoints.{endpoint.name}] {endpoint.url}"
        h = by_name.get(endpoint.name)
        if unreachable is not None:
            checks.append(Check(FAIL, "webhook", f"{where}: {unreachable}"))
        elif h is not None and h.failed:
            checks.append(Check(
                FAIL, "webhook",
                f"{where}: {h.failed} delivery(ies) failed for good in the last 24 h"
                f" (last error: {h.last_error}{_ago(h.last_at)}); GET /v1/webhooks/deliveries?status=failed",
            ))
        elif h is not None and h.retrying:
            checks.append(Check(
                WARN, "webhook",
                f"{where}: {h.retrying} delivery(ies) being retried (last error: {h.last_error}{_ago(h.last_at)})",
            ))
        else:
            seen = "" if health is not None else " (its deliveries could not be read)"
            checks.append(Check(OK, "webhook", f"{where} accepts connections, no failed deliveries{seen}"))
    return checks
