"""The Store protocol: durable state behind the actors, written by group commit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from actors.core.records import (
    AgentRecord,
    ApiKeyRecord,
    DocumentRecord,
    GuestRecord,
    LoadedSession,
    Op,
    PutCheckpoint,
    PutMessage,
    PutSession,
    RefreshOutcome,
    RefreshTokenRecord,
    SessionQuery,
    SessionRecord,
    StoredEvent,
    TokenFamilyRecord,
)
from actors.core.tree import Usage

__all__ = ["Store"]


class Store(Protocol):
    """What the registry and the actors need from a database."""

    async def open(self) -> None: ...

    async def aclose(self) -> None: ...

    async def commit(self, ops: Sequence[Op]) -> None:
        """Write ``ops`` durably; returns only after the transaction holding them committed.

        Concurrent callers share transactions (group commit); ops of one call keep their order
        and never straddle two transactions.
        """

    async def insert_session(self, session: PutSession, rows: Sequence[PutMessage | PutCheckpoint]) -> bool:
        """Write a new session and its rows in one insert-only transaction of its own (outside
        group commit); False, writing nothing, if a session has that id already."""

    async def load_session(self, session_id: str, *, events: int) -> LoadedSession | None: ...

    async def get_session(self, session_id: str) -> SessionRecord | None: ...

    async def list_sessions(self, query: SessionQuery) -> list[SessionRecord]: ...

    async def load_events(self, session_id: str, after: int, limit: int) -> list[StoredEvent]: ...

    async def ping(self) -> None: ...

    async def put_api_key(self, key: ApiKeyRecord) -> None: ...

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None: ...

    async def list_api_keys(self) -> list[ApiKeyRecord]: ...

    async def revoke_api_key(self, key_id: str, when: str) -> bool: ...

    # -- agents, documents, usage per end user ---------------------------------------------

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

    async def end_user_usage(self, end_user_id: str) -> tuple[int, Usage]:
        """(sessions, summed token usage) over the end user's existing sessions."""

    # -- session tokens and guests ---------------------------------------------------------

    async def put_token_family(self, family: TokenFamilyRecord, token: RefreshTokenRecord) -> None:
        """Record a new grant and its first refresh token."""

    async def get_token_family(self, family_id: str) -> TokenFamilyRecord | None: ...

    async def rotate_refresh_token(
        self, old_hash: str, new: RefreshTokenRecord, now: float, when: str
    ) -> RefreshOutcome:
        """Atomically: mark ``old_hash`` used and store ``new`` in its family (``rotated``); or,
        if it was used already, revoke the whole family (``reused``)."""

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
