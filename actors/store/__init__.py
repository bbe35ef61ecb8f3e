"""Durable stores: the Store protocol and its SQLite implementation (the default)."""

from __future__ import annotations

from actors.store.base import Store
from actors.store.sqlite import SqliteStore

__all__ = ["SqliteStore", "Store"]
