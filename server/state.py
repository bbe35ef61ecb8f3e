"""Typed application state: the keys under which make_app keeps its collaborators."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from actors.registry import Registry
from actors.store.base import Store
from server.config import Config

if TYPE_CHECKING:
    from server.auth.keys import KeyRing

__all__ = ["CONFIG", "STORE", "REGISTRY", "KEYRING"]

CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", Store)  # type: ignore[type-abstract]
REGISTRY = web.AppKey("registry", Registry)
KEYRING = web.AppKey("keyring", "KeyRing")
