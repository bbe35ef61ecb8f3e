"""The Store protocol: durable state behind the actors, written by group commit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from actors.records import ApiKeyRecord, LoadedSession, Op, SessionQuery, SessionRecord, StoredEvent

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

    async def load_session(self, session_id: str, *, events: int) -> LoadedSession | None: ...

    async def get_session(self, session_id: str) -> SessionRecord | None: ...

    async def list_sessions(self, query: SessionQuery) -> list[SessionRecord]: ...

    async def load_events(self, session_id: str, after: int, limit: int) -> list[StoredEvent]: ...

    async def ping(self) -> None: ...

    async def put_api_key(self, key: ApiKeyRecord) -> None: ...

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None: ...

    async def list_api_keys(self) -> list[ApiKeyRecord]: ...

    async def revoke_api_key(self, key_id: str, when: str) -> bool: ...
