"""The core of sessiond: session actors, their registry and their store. No HTTP in here."""

from __future__ import annotations

from actors.errors import SessiondError
from actors.events import EventLog
from actors.fanout import Hub, Subscription
from actors.records import SessionRecord, Stats
from actors.registry import Registry
from actors.session import ActorSettings, SessionActor
from actors.tree import MessageTree, Node, Usage

__all__ = [
    "ActorSettings",
    "EventLog",
    "Hub",
    "MessageTree",
    "Node",
    "Registry",
    "SessionActor",
    "SessionRecord",
    "SessiondError",
    "Stats",
    "Subscription",
    "Usage",
]
