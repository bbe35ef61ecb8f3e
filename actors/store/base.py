"""The store protocols beside the sessions': the edge's and the agent side's tables.

The session part (``SessionStore``) is a port of the core, in actors/ports.py. Both stores
(SQLite and PostgreSQL) implement all of them in one database; ``Store`` is that whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from actors.core.tree import Usage
from actors.core.webhooks import Delivery, DeliveryQuery, DeliveryStatus, EndpointHealth
from actors.ports import SessionStore
from actors.store.tables import (
    AgentRecord,
    ApiKeyRecord,
    DocumentRecord,
    GuestRecord,
    RefreshLimit,
    RefreshOutcome,
    RefreshTokenRecord,
    ShareRecord,
    TokenFamilyRecord,
)

__all__ = ["AuthStore", "CatalogStore", "OutboxStore", "SessionStore", "ShareStore", "Store"]


class AuthStore(Protocol):
    """The edge's tables: API keys, session token families and refresh tokens, guests."""

    async def put_api_key(self, key: ApiKeyRecord) -> None: ...

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None: ...

    async def list_api_keys(self) -> list[ApiKeyRecord]: ...

    async def revoke_api_key(self, key_id: str, when: str) -> bool: ...

    async def put_token_family(self, family: TokenFamilyRecord, token: RefreshTokenRecord) -> None:
        """Record a new grant and its first refresh token."""

    async def get_token_family(self, family_id: str) -> TokenFamilyRecord | None: ...

    async def rotate_refresh_token(
        self, old_hash: str, new: RefreshTokenRecord, now: float, when: str, *, limit: RefreshLimit | None = None
    ) -> RefreshOutcome:
        """Atomically: mark ``old_hash`` used and store ``new`` in its family (``rotated``); or,
        if it was used already, revoke the whole family (``reused``). A family that made
        ``limit.at_most`` tokens since ``limit.since`` does not rotate: ``rate_limited``,
        ``old_hash`` still unused."""

    async def revoke_session_tokens(self, session_id: str) -> int:
        """Forget every token family of the session; returns how many there were."""

    async def find_guest(
        self, namespace: str, ip: str | None, fingerprint: str | None, now: float
    ) -> GuestRecord | None:
        """The live guest with that fingerprint, else with that IP (both given as digests)."""

    async def find_or_create_guest(
        self, namespace: str, ip: str, fingerprint: str | None, new: GuestRecord, now: float
    ) -> tuple[GuestRecord, bool]:
        """Like ``find_guest``, linking the IP and fingerprint to it; ``new`` if none matched."""

    async def get_guest(self, guest_id: str, now: float) -> GuestRecord | None: ...


class ShareStore(Protocol):
    """Read-only share links of sessions, each known by the hash of its token."""

    async def put_share(self, share: ShareRecord, *, limit: int, now: float) -> bool:
        """Record ``share``; False (nothing written) if its session has ``limit`` live links."""

    async def share_by_hash(self, token_hash: str, now: float) -> ShareRecord | None:
        """The live (unexpired) link with that token hash."""

    async def list_shares(self, session_id: str, now: float) -> list[ShareRecord]:
        """The session's live links, oldest first."""

    async def delete_share(self, session_id: str, share_id: str) -> bool:
        """Revoke one link of the session; False if it has no such link."""


class CatalogStore(Protocol):
    """The agent side's tables: agents, documents, and usage summed per end user."""

    async def put_agent(self, agent: AgentRecord) -> None:
        """Insert or replace an agent made through the API."""

    async def get_agent(self, agent_id: str) -> AgentRecord | None: ...

    async def list_agents(self) -> list[AgentRecord]: ...

    async def delete_agent(self, agent_id: str) -> bool: ...

    async def put_document(self, doc: DocumentRecord, text: str) -> None:
        """Record an uploaded document and its extracted text."""

    async def get_document(self, document_id: str) -> DocumentRecord | None: ...

    async def list_documents(self, end_user_id: str | None, *, limit: int, offset: int) -> list[DocumentRecord]:
        """Newest first; for an end user, that user's documents and the shared ones."""

    async def document_texts(self, document_ids: Sequence[str]) -> list[tuple[DocumentRecord, str]]:
        """The documents among ``document_ids`` that exist, in that order, with their text."""

    async def delete_document(self, document_id: str) -> bool: ...

    async def count_documents_with_hash(self, sha256: str) -> int:
        """How many documents share one stored file."""

    async def document_linked_elsewhere(self, document_id: str, session_id: str) -> bool:
        """Whether a session other than ``session_id`` links the document."""

    async def end_user_usage(self, end_user_id: str) -> tuple[int, Usage]:
        """(sessions, summed token usage) over the end user's existing sessions."""


class OutboxStore(Protocol):
    """The webhook outbox (actors/store/outbox.py): rows are added by the group commit
    (``PutDelivery``), claimed by a deliverer under a lease, and given their outcome."""

    async def claim_deliveries(self, owner: str, now: float, lease_seconds: float, limit: int) -> list[Delivery]:
        """Lease up to ``limit`` pending rows due at ``now`` to ``owner`` (none another holds)."""

    async def finish_delivery(
        self,
        delivery_id: str,
        owner: str,
        *,
        status: DeliveryStatus,
        attempts: int,
        next_attempt_at: float | None,
        last_error: str | None,
        last_status: int | None,
        delivered_at: float | None,
    ) -> bool:
        """Record an attempt's outcome and end the lease; False if ``owner`` lost the lease."""

    async def release_deliveries(self, owner: str | None) -> int:
        """End the leases of ``owner`` (None: every lease), so those rows are due again now."""

    async def list_deliveries(self, query: DeliveryQuery) -> list[Delivery]:
        """Newest first, without their bodies; one more than ``query.limit`` if more follow."""

    async def prune_deliveries(self, before: float) -> int:
        """Forget delivered and failed rows created before ``before``."""

    async def delivery_health(self, since: float) -> list[EndpointHealth]:
        """Per endpoint, the deliveries created since ``since`` that failed or are retrying."""


class Store(SessionStore, AuthStore, ShareStore, CatalogStore, OutboxStore, Protocol):
    """One database behind everything: what the server composes and the CLI opens."""
