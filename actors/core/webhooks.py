"""Webhooks, the pure part: endpoints, which events each wants, the payloads, the outbox rows.

An endpoint (configured by the operator) names the event types it wants and, optionally, the
namespaces and agents whose sessions it hears of. When a session commits an event an endpoint
wants, the same commit writes one ``PutDelivery`` row per endpoint (the durable outbox); a
deliverer (actors/webhooks/) then POSTs it, signed per the Standard Webhooks scheme, until it is
delivered or gives up. No asyncio, no I/O in here.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import msgspec

from actors.core.events import Event, MessageCompleted, TaskCancelled, TaskCompleted, TaskFailed, ToolApprovalRequested
from actors.core.ids import new_id, utcnow
from actors.core.records import PutDelivery, SessionRecord

__all__ = [
    "DELIVERY_STATUSES",
    "WEBHOOK_EVENTS",
    "Delivery",
    "DeliveryQuery",
    "DeliveryStatus",
    "EndpointHealth",
    "Outbox",
    "WebhookEndpoint",
    "WebhookPayload",
    "backoff_seconds",
]

WEBHOOK_EVENTS = ("task.completed", "task.failed", "task.cancelled", "tool.approval_requested", "session.deleted")
"""The event types an endpoint may ask for (all of them when it names none)."""

DeliveryStatus = Literal["pending", "delivered", "failed"]
DELIVERY_STATUSES: tuple[DeliveryStatus, ...] = ("pending", "delivered", "failed")

_TASK_ENDS = (TaskCompleted, TaskFailed, TaskCancelled)


class WebhookEndpoint(msgspec.Struct, frozen=True):
    """One receiver: where to POST, the key to sign with, and what it wants to hear of."""

    name: str
    url: str
    secret: bytes  # the raw key (a ``whsec_<base64>`` secret, decoded)
    events: frozenset[str] = frozenset(WEBHOOK_EVENTS)
    namespaces: frozenset[str] = frozenset()  # empty: every namespace
    agents: frozenset[str] = frozenset()  # empty: every agent (and sessions without one)

    def wants(self, event_type: str, record: SessionRecord) -> bool:
        if event_type not in self.events:
            return False
        if self.namespaces and record.namespace not in self.namespaces:
            return False
        return not self.agents or (record.agent_id or "default") in self.agents


class WebhookPayload(msgspec.Struct, frozen=True):
    """The body of every webhook POST (the Standard Webhooks shape: type, timestamp, data)."""

    type: str
    timestamp: str  # when the event happened (RFC 3339); the attempt's time is in a header
    data: dict[str, Any]


class Delivery(msgspec.Struct, kw_only=True):
    """One outbox row: one event for one endpoint, and how its delivery is going."""

    id: str  # the webhook-id header: the same on every attempt, for de-duplication
    endpoint: str
    session_id: str
    event_type: str
    created_at: float  # unix time
    status: DeliveryStatus = "pending"
    attempts: int = 0
    next_attempt_at: float | None = None  # None once delivered or failed
    last_error: str | None = None
    last_status: int | None = None  # the HTTP status of the last answer, if there was one
    delivered_at: float | None = None
    body: bytes = b""  # the payload (read when claimed for delivery, not when listed)


class DeliveryQuery(msgspec.Struct, kw_only=True):
    status: DeliveryStatus | None = None
    endpoint: str | None = None
    limit: int = 50
    after: tuple[float, str] | None = None  # (created_at, id) of the last item of the previous page


class EndpointHealth(msgspec.Struct, kw_only=True):
    """An endpoint's recent failures, for ``sessiond doctor``."""

    endpoint: str
    failed: int  # deliveries given up on
    retrying: int  # pending deliveries that failed at least once
    last_error: str | None = None
    last_at: float | None = None


_payload = msgspec.json.Encoder()


def _task_data(event: Event, events: Sequence[Event]) -> dict[str, Any]:
    task_id: str = getattr(event, "task_id")  # noqa: B009 - each of these events has one
    data: dict[str, Any] = {"task_id": task_id}
    for other in events:
        if isinstance(other, MessageCompleted) and other.task_id == task_id:
            data["message_id"] = other.message.id
            data["usage"] = msgspec.to_builtins(other.usage)
            data["model"] = other.model
    if isinstance(event, TaskFailed):
        data["error"] = event.error
    return data


def _data(record: SessionRecord, **fields: Any) -> dict[str, Any]:
    return {
        "session_id": record.id,
        "namespace": record.namespace,
        "agent_id": record.agent_id,
        "end_user_id": record.end_user_id,
        **fields,
    }


class Outbox:
    """The configured endpoints, turning a session's committed events into outbox rows.

    ``wake`` is called once rows were committed, so a deliverer in this process sends them at
    once instead of at its next poll.
    """

    def __init__(self, endpoints: Sequence[WebhookEndpoint], wake: Callable[[], None] | None = None) -> None:
        self.endpoints = tuple(endpoints)
        self.wake = wake or (lambda: None)
        self._types = frozenset(t for e in self.endpoints for t in e.events)

    def __bool__(self) -> bool:
        return bool(self.endpoints)

    def _rows(self, record: SessionRecord, event_type: str, data: dict[str, Any]) -> list[PutDelivery]:
        targets = [e for e in self.endpoints if e.wants(event_type, record)]
        if not targets:
            return []
        body = _payload.encode(WebhookPayload(event_type, utcnow(), data))
        now = time.time()
        return [PutDelivery(new_id("whk"), e.name, record.id, event_type, body, now) for e in targets]

    def for_events(self, record: SessionRecord, events: Sequence[Event], seqs: Sequence[int]) -> list[PutDelivery]:
        """The rows for ``events`` (numbered ``seqs``), to be committed with them."""
        rows: list[PutDelivery] = []
        for event, seq in zip(events, seqs, strict=True):
            if isinstance(event, _TASK_ENDS):
                kind = "task.completed" if isinstance(event, TaskCompleted) else (
                    "task.failed" if isinstance(event, TaskFailed) else "task.cancelled")
                if kind in self._types:
                    rows += self._rows(record, kind, _data(record, event_id=seq, **_task_data(event, events)))
            elif isinstance(event, ToolApprovalRequested) and "tool.approval_requested" in self._types:
                fields = {
                    "event_id": seq,
                    "task_id": event.task_id,
                    "call_id": event.call_id,
                    "name": event.name,
                    "arguments": event.arguments,
                    "expires_at": event.expires_at,
                }
                rows += self._rows(record, "tool.approval_requested", _data(record, **fields))
        return rows

    def for_deletion(self, record: SessionRecord) -> list[PutDelivery]:
        """The rows announcing that ``record``'s session is deleted (committed with the delete)."""
        if "session.deleted" not in self._types:
            return []
        return self._rows(record, "session.deleted", _data(record))


def backoff_seconds(attempts: int, base: float, cap: float, rand: Callable[[], float] = random.random) -> float:
    """How long to wait after the ``attempts``-th failed attempt: ``base * 2**(attempts-1)``, at
    most ``cap``, times a random factor in [0.5, 1) (so receivers that failed together do not get
    every retry at the same instant)."""
    delay: float = min(cap, base * 2.0 ** max(0, min(attempts - 1, 40)))
    return delay * (0.5 + rand() / 2)
