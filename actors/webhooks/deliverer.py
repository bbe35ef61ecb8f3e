"""Deliverer: POSTs the webhook outbox's due rows to their endpoints, signed, with retries.

One per node. It claims due rows under a lease (so in a cluster exactly one node delivers a
row at a time), sends each as a Standard Webhooks request (``webhook-id``, ``webhook-timestamp``,
``webhook-signature``), and records the outcome: delivered on a 2xx; otherwise another attempt
after an exponential backoff with jitter, until ``max_attempts`` attempts or ``max_age_seconds``,
then failed. Endpoints are the operator's, yet treated as hostile: redirects are not followed,
at most ``max_response_bytes`` of an answer are read, every attempt has a deadline, and at most
``concurrency`` attempts run at once. A crash loses nothing: a row is only marked delivered
after its receiver said so, so it is sent at least once, always under the same id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated

import aiohttp
import msgspec
from standardwebhooks import Webhook

from actors.core.bounds import AtLeastOne, Positive
from actors.core.webhooks import Delivery, Outbox, WebhookEndpoint, backoff_seconds
from actors.store.base import OutboxStore
from actors.tasks import Spawner

__all__ = ["Deliverer", "DeliverySettings", "signed_headers"]

log = logging.getLogger("sessiond.webhooks")

_ERROR_CHARS = 500  # of an error kept in the row (and shown by GET /v1/webhooks/deliveries)
_PRUNE_EVERY = 300.0  # seconds between forgetting old delivered and failed rows


class DeliverySettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How deliveries are made: the numbers of ``[webhooks]`` in config.toml, which says what
    each means (server/config.py's section adds the endpoints). They are bounded, so that
    the config loader refuses what the deliverer cannot run with: a timeout or a poll of 0 (no
    deadline, or a poll without pause), no attempt at all, more attempts at once than a node
    should open."""

    timeout_seconds: Positive = 10.0
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 8
    max_attempts: AtLeastOne = 8
    max_age_seconds: Positive = 86_400.0
    backoff_seconds: Positive = 1.0
    max_backoff_seconds: Positive = 3600.0
    poll_seconds: Positive = 1.0
    lease_seconds: Positive = 60.0
    max_response_bytes: Annotated[int, msgspec.Meta(ge=0, le=1_048_576)] = 4096
    retention_seconds: Positive = 604_800.0

    def __post_init__(self) -> None:
        # A claim that can run out while its attempt still waits for the receiver lets another
        # node (or this one's next poll, after a restart) send the row again meanwhile: every
        # slow receiver would get each event twice. (msgspec turns this ValueError into a
        # ValidationError, which the config loader reports with the section.)
        if self.lease_seconds <= self.timeout_seconds:
            raise ValueError(
                f"lease_seconds ({self.lease_seconds:g}) must be longer than timeout_seconds"
                f" ({self.timeout_seconds:g}): a claim must outlast the attempt it is for"
            )


def signed_headers(endpoint: WebhookEndpoint, delivery_id: str, body: bytes, now: float) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt (signed with the official package)."""
    ts = int(now)
    signature = Webhook(endpoint.secret).sign(delivery_id, datetime.fromtimestamp(ts, UTC), body.decode())
    return {
        "webhook-id": delivery_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": signature,
        "Content-Type": "application/json",
    }


class _Outcome(msgspec.Struct):
    status: int | None = None
    error: str | None = None


class Deliverer:
    """The one webhook sender of a node (see the module docstring)."""

    def __init__(
        self,
        store: OutboxStore,
        endpoints: Sequence[WebhookEndpoint],
        settings: DeliverySettings,
        *,
        owner: str,
        release_all: bool = False,
        on_attempt: Callable[[str, str, float], None] | None = None,
    ) -> None:
        self._store = store
        self._endpoints = {e.name: e for e in endpoints}
        self.settings = settings
        self.owner = owner  # the lease holder's name: this node's id
        # SQLite: one process owns the file, so any lease found at start is a dead process's.
        self._release_all = release_all
        self._on_attempt = on_attempt  # (endpoint, outcome: delivered|retry|failed, seconds)
        self._wakeup = asyncio.Event()
        self._tasks = Spawner()
        self._inflight: set[asyncio.Task[None]] = set()
        self._http: aiohttp.ClientSession | None = None
        self._pruned_at = 0.0

    @property
    def endpoints(self) -> list[WebhookEndpoint]:
        return list(self._endpoints.values())

    def outbox(self) -> Outbox:
        """What the session actors write their webhook rows with (and wake this deliverer by)."""
        return Outbox(self.endpoints, wake=self.wake)

    def wake(self) -> None:
        """New rows were committed: look for due rows now rather than at the next poll."""
        self._wakeup.set()

    async def start(self) -> None:
        s = self.settings
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=s.timeout_seconds),
            connector=aiohttp.TCPConnector(limit=s.concurrency),
            trust_env=False,  # never through a proxy named by the environment
            headers={"User-Agent": "sessiond-webhooks"},
        )
        # Leases of a previous life of this node (or, on SQLite, of any dead process): due again.
        released = await self._store.release_deliveries(None if self._release_all else self.owner)
        if released:
            log.info("webhooks: %d delivery lease(s) of a previous run released", released)
        self._tasks.spawn(self._run(), name="webhook-deliverer")

    async def aclose(self) -> None:
        """Stop claiming, cut the attempts in flight, and give their rows back."""
        await self._tasks.aclose()
        if self._http is not None:
            await self._http.close()
            self._http = None
        try:
            await self._store.release_deliveries(self.owner)
        except Exception as exc:  # the store may be gone already: the lease then just expires
            log.warning("webhooks: leases not released at shutdown (%s); they expire", exc)

    # -- the loop --------------------------------------------------------------------------

    async def _run(self) -> None:
        s = self.settings
        failing = False
        try:
            while True:
                free = s.concurrency - len(self._inflight)
                if free <= 0:
                    await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                self._wakeup.clear()
                try:
                    claimed = await self._store.claim_deliveries(self.owner, time.time(), s.lease_seconds, free)
                    await self._prune()
                except Exception as exc:
                    if not failing:  # one line per outage, not one per poll
                        log.error("webhooks: the outbox cannot be read (%s: %s); retrying", type(exc).__name__, exc)
                        failing = True
                    claimed = []
                else:
                    if failing:
                        log.warning("webhooks: the outbox can be read again")
                        failing = False
                for delivery in claimed:
                    task = asyncio.get_running_loop().create_task(
                        self._attempt(delivery), name=f"webhook:{delivery.id}"
                    )
                    self._inflight.add(task)
                    task.add_done_callback(self._inflight.discard)
                if len(claimed) == free:
                    continue  # there may be more due: claim again as soon as a slot is free
                try:
                    await asyncio.wait_for(self._wakeup.wait(), s.poll_seconds)
                except TimeoutError:
                    pass
        finally:
            for task in list(self._inflight):
                task.cancel()
            if self._inflight:
                await asyncio.gather(*self._inflight, return_exceptions=True)

    async def _prune(self) -> None:
        now = time.time()
        if now - self._pruned_at >= _PRUNE_EVERY:
            self._pruned_at = now
            await self._store.prune_deliveries(now - self.settings.retention_seconds)

    # -- one attempt -----------------------------------------------------------------------

    async def _attempt(self, delivery: Delivery) -> None:
        started = time.time()
        endpoint = self._endpoints.get(delivery.endpoint)
        if endpoint is None:
            outcome = _Outcome(error=f"endpoint {delivery.endpoint!r} is no longer configured")
            attempts = delivery.attempts
        else:
            outcome = await self._post(endpoint, delivery, started)
            attempts = delivery.attempts + 1
        now = time.time()
        s = self.settings
        delivered = outcome.error is None
        if delivered:
            status, next_at, label = "delivered", None, "delivered"
        elif endpoint is None or attempts >= s.max_attempts or now - delivery.created_at >= s.max_age_seconds:
            status, next_at, label = "failed", None, "failed"
        else:
            next_at = now + backoff_seconds(attempts, s.backoff_seconds, s.max_backoff_seconds)
            status, label = "pending", "retry"
        if self._on_attempt is not None:
            self._on_attempt(delivery.endpoint, label, now - started)
        if label == "failed":
            log.warning("webhook %s to %s failed for good after %d attempt(s): %s",
                        delivery.id, delivery.endpoint, attempts, outcome.error)
        try:
            kept = await self._store.finish_delivery(
                delivery.id,
                self.owner,
                status=status,  # type: ignore[arg-type]
                attempts=attempts,
                next_attempt_at=next_at,
                last_error=outcome.error,
                last_status=outcome.status,
                delivered_at=now if delivered else None,
            )
        except Exception as exc:
            # Not recorded: the lease expires and the row is sent again (at least once).
            log.error("webhooks: the outcome of %s cannot be stored (%s: %s)", delivery.id, type(exc).__name__, exc)
            return
        if not kept:
            log.warning("webhooks: the lease on %s was lost before its outcome was stored", delivery.id)

    async def _post(self, endpoint: WebhookEndpoint, delivery: Delivery, now: float) -> _Outcome:
        http = self._http
        assert http is not None
        headers = signed_headers(endpoint, delivery.id, delivery.body, now)
        limit = self.settings.max_response_bytes
        try:
            async with http.post(endpoint.url, data=delivery.body, headers=headers, allow_redirects=False) as resp:
                # Bounded: at most ``limit`` bytes of whatever the receiver answers are read.
                head = await resp.content.read(limit) if limit > 0 else b""
                status = resp.status
                if 200 <= status < 300:
                    return _Outcome(status=status)
                text = head.decode("utf-8", errors="replace").strip()
                where = ""
                if 300 <= status < 400:
                    where = f" to {resp.headers.get('Location', '')!r} (redirects are not followed)"
                return _Outcome(status=status, error=f"HTTP {status}{where}: {text}"[:_ERROR_CHARS])
        except TimeoutError:
            return _Outcome(error=f"no answer within {self.settings.timeout_seconds:g}s")
        except aiohttp.ClientError as exc:
            return _Outcome(error=f"{type(exc).__name__}: {exc}"[:_ERROR_CHARS])
