"""The ports of the core: what a session actor needs from the world, and what it is to it.

Adapters implement them: the stores (actors/store), the agent runner and the simulated model
(actors/agent), the cluster's remote sessions and Redis streams (actors/cluster). The edge
(server/) talks to sessions only through ``SessionRef`` and writes ``EventStream``s.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol, TypeVar

from actors.core.commands import Command
from actors.core.model import ModelRequest, TurnItem
from actors.core.records import (
    LoadedSession,
    Op,
    PutCheckpoint,
    PutMessage,
    PutSession,
    SessionQuery,
    SessionRecord,
    StoredEvent,
)
from actors.core.retention import ExpiredRow, ExpiryQuery
from actors.core.search import SearchHit, SearchQuery
from actors.core.stream import EventStream

__all__ = ["EventSink", "EventStream", "Provider", "SessionRef", "SessionStore"]

R = TypeVar("R")


class Provider(Protocol):
    """Runs one answer: text deltas, tool calls and results, then usage and model name."""

    name: str

    def stream(self, request: ModelRequest) -> AsyncIterator[TurnItem]: ...


class SessionRef(Protocol):
    """A live session, wherever its actor runs: a local SessionActor or a cluster RemoteSession.

    The identity fields never change after creation, so they are read without the mailbox;
    everything else is asked.
    """

    @property
    def id(self) -> str: ...

    @property
    def namespace(self) -> str: ...

    @property
    def end_user_id(self) -> str | None: ...

    @property
    def record(self) -> SessionRecord:
        """The session row: its identity fields (namespace, end user, guest) are reliable;
        ask ``GetSession`` for the rest."""

    @property
    def is_alive(self) -> bool: ...

    async def ask(self, command: Command[R]) -> R:
        """Run ``command`` on the session and return its reply (or raise its SessiondError)."""


class EventSink(Protocol):
    """Told of every event a session emits, in order (the cluster's Redis fan-out is one)."""

    def __call__(self, session_id: str, seq: int, type_: str, data: bytes, end_task: str | None, prev: int) -> None:
        """``end_task``: the task a terminal event ends, else None. ``prev``: the id of the event
        this session emitted just before this one (readers that hold less than ``prev`` have a
        hole before this event, and are told ``stream.reset``)."""


class SessionStore(Protocol):
    """What the registry and the actors need from a database: sessions, their messages,
    checkpoints and events (the edge's tables are actors.store.base.AuthStore/CatalogStore)."""

    async def open(self) -> None: ...

    async def aclose(self) -> None: ...

    async def commit(self, ops: Sequence[Op]) -> None:
        """Write ``ops`` durably; returns only after the transaction holding them committed.

        Concurrent callers share transactions (group commit); ops of one call keep their order
        and never straddle two transactions. After ``aclose`` it raises StoreClosedError.
        """

    async def insert_session(self, session: PutSession, rows: Sequence[PutMessage | PutCheckpoint]) -> bool:
        """Write a new session and its rows in one insert-only transaction of its own (outside
        group commit); False, writing nothing, if a session has that id already."""

    async def claim_epoch(self, session_id: str) -> int | None:
        """Advance the session's lease epoch and return it (None: no such session). An actor
        activated after this writes under the new epoch; the store refuses what an actor
        activated before it commits from then on (``Fence``)."""

    async def load_session(self, session_id: str, *, events: int) -> LoadedSession | None: ...

    async def get_session(self, session_id: str) -> SessionRecord | None: ...

    async def list_sessions(self, query: SessionQuery) -> list[SessionRecord]: ...

    async def search_sessions(self, query: SearchQuery) -> list[SearchHit]:
        """Sessions whose title or any message (any branch) holds every word of ``query``,
        sorted as asked, a page from ``query.offset`` (one more than ``limit`` if more follow)."""

    async def expired_sessions(self, query: ExpiryQuery) -> list[ExpiredRow]:
        """Sessions whose retention rule is due at ``query.now``, at most ``query.limit``, each
        found by an index (the retention sweeper's question)."""

    async def load_events(self, session_id: str, after: int, limit: int) -> list[StoredEvent]: ...

    async def ping(self) -> None: ...
