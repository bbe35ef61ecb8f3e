"""Webhook deliveries as GET /v1/webhooks/deliveries lists them."""

from __future__ import annotations

import time

import msgspec

from actors.core.webhooks import Delivery, DeliveryStatus

__all__ = ["DeliveryList", "DeliveryOut", "delivery_out"]


def _rfc3339(unix: float | None) -> str | None:
    if unix is None:
        return None
    whole = int(unix)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((unix - whole) * 1_000_000):06d}Z"


class DeliveryOut(msgspec.Struct):
    id: str  # the webhook-id header of every attempt
    endpoint: str
    event_type: str
    session_id: str
    status: DeliveryStatus
    attempts: int
    created_at: str
    next_attempt_at: str | None  # while pending: when the next attempt is due
    last_error: str | None  # why the last attempt failed (the start of the receiver's answer)
    last_status: int | None  # the HTTP status of the last answer, if one came
    delivered_at: str | None


class DeliveryList(msgspec.Struct):
    items: list[DeliveryOut]
    next_cursor: str | None  # for the next page (?cursor=), None on the last one


def delivery_out(d: Delivery) -> DeliveryOut:
    return DeliveryOut(
        id=d.id,
        endpoint=d.endpoint,
        event_type=d.event_type,
        session_id=d.session_id,
        status=d.status,
        attempts=d.attempts,
        created_at=_rfc3339(d.created_at) or "",
        next_attempt_at=_rfc3339(d.next_attempt_at) if d.status == "pending" else None,
        last_error=d.last_error,
        last_status=d.last_status,
        delivered_at=_rfc3339(d.delivered_at),
    )
