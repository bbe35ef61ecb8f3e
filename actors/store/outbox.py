"""The webhook outbox's statements, shared by both stores (SQLite's ``?`` placeholders; ``pg()``
numbers them for PostgreSQL), and the row decoding.

Rows are inserted by the group commit with the events they announce (``INSERT_DELIVERY``). A
deliverer claims due rows by setting a lease (its owner and an expiry) in one statement; in
PostgreSQL the rows are picked ``FOR UPDATE SKIP LOCKED``, so two nodes claiming at once never
take the same row, and a node that dies leaves rows that another claims once the lease expires.
Every outcome is written only if the lease is still the writer's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from actors.core.webhooks import Delivery, DeliveryQuery, EndpointHealth

__all__ = [
    "CLAIM",
    "CLAIM_PG",
    "DUE_ANY",
    "FINISH",
    "HEALTH",
    "INSERT_DELIVERY",
    "PRUNE",
    "RELEASE_ALL",
    "RELEASE_OWNER",
    "delivery_of",
    "health_of",
    "list_sql",
    "pg",
]

INSERT_DELIVERY = (
    "INSERT INTO webhook_deliveries (id, endpoint, session_id, event_type, body, created_at, next_attempt_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING"
)
_COLUMNS = (
    "id, endpoint, session_id, event_type, created_at, status, attempts, next_attempt_at,"
    " last_error, last_status, delivered_at"
)
_DUE = (
    "SELECT id FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= ? AND lease_until <= ?"
    " ORDER BY next_attempt_at LIMIT ?"
)
_CLAIM = (
    "UPDATE webhook_deliveries SET lease_owner = ?, lease_until = ? WHERE id IN ({due})"
    f" RETURNING {_COLUMNS}, body"
)
DUE_ANY = (
    "SELECT 1 FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= ? AND lease_until <= ? LIMIT 1"
)
"""Whether any row is due (parameters: now, now): a read, before a claim takes the write lock."""
CLAIM = _CLAIM.format(due=_DUE)
"""Parameters: owner, lease_until, now, now, limit."""
CLAIM_PG = _CLAIM.format(due=_DUE + " FOR UPDATE SKIP LOCKED")
FINISH = (
    "UPDATE webhook_deliveries SET status = ?, attempts = ?, next_attempt_at = ?, last_error = ?,"
    " last_status = ?, delivered_at = ?, lease_owner = NULL, lease_until = 0"
    " WHERE id = ? AND lease_owner = ?"
)
RELEASE_ALL = "UPDATE webhook_deliveries SET lease_owner = NULL, lease_until = 0 WHERE lease_owner IS NOT NULL"
RELEASE_OWNER = RELEASE_ALL + " AND lease_owner = ?"
PRUNE = "DELETE FROM webhook_deliveries WHERE status <> 'pending' AND created_at < ?"
HEALTH = (
    "SELECT endpoint, status, last_error, created_at FROM webhook_deliveries"
    " WHERE created_at >= ? AND (status = 'failed' OR (status = 'pending' AND attempts > 0))"
    " ORDER BY created_at DESC LIMIT 10000"
)

_PLACEHOLDER = re.compile(r"\?")


def pg(sql: str) -> str:
    """``sql`` with PostgreSQL's numbered placeholders ($1, $2, ...)."""
    counter = iter(range(1, 1000))
    return _PLACEHOLDER.sub(lambda _m: f"${next(counter)}", sql)


def list_sql(query: DeliveryQuery) -> tuple[str, list[Any]]:
    """The listing statement (newest first; one row more than the page, to tell if more follow)."""
    where: list[str] = []
    params: list[Any] = []
    if query.status is not None:
        where.append("status = ?")
        params.append(query.status)
    if query.endpoint is not None:
        where.append("endpoint = ?")
        params.append(query.endpoint)
    if query.after is not None:
        where.append("(created_at < ? OR (created_at = ? AND id < ?))")
        params += [query.after[0], query.after[0], query.after[1]]
    sql = f"SELECT {_COLUMNS} FROM webhook_deliveries"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
    params.append(query.limit + 1)
    return sql, params


def delivery_of(row: Sequence[Any]) -> Delivery:
    """A row of ``_COLUMNS`` (and, when claimed, the body after them)."""
    return Delivery(
        id=row[0],
        endpoint=row[1],
        session_id=row[2],
        event_type=row[3],
        created_at=float(row[4]),
        status=row[5],
        attempts=int(row[6]),
        next_attempt_at=row[7],
        last_error=row[8],
        last_status=row[9],
        delivered_at=row[10],
        body=bytes(row[11]) if len(row) > 11 else b"",
    )


def health_of(rows: Sequence[Sequence[Any]]) -> list[EndpointHealth]:
    """Rows of ``HEALTH`` (newest first), summed per endpoint."""
    out: dict[str, EndpointHealth] = {}
    for endpoint, status, last_error, created_at in rows:
        h = out.get(endpoint)
        if h is None:
            h = out[endpoint] = EndpointHealth(endpoint=endpoint, failed=0, retrying=0,
                                                last_error=last_error, last_at=float(created_at))
        if status == "failed":
            h.failed += 1
        else:
            h.retrying += 1
    return sorted(out.values(), key=lambda h: h.endpoint)
