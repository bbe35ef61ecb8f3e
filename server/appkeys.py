"""Typed application state: the keys under which make_app keeps its collaborators."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from actors.registry import Registry
from actors.store.base import Store
from server.config import Config

if TYPE_CHECKING:
    from server.auth.guests import Guests
    from server.auth.keys import KeyRing
    from server.auth.ratelimit import Limiter
    from server.auth.tokens import TokenService

__all__ = ["CONFIG", "GUESTS", "KEYRING", "LIMITER", "OPENAPI", "REGISTRY", "STORE", "TOKENS"]

CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", Store)  # type: ignore[type-abstract]
REGISTRY = web.AppKey("registry", Registry)
# Typed by annotation: their modules import this one, so they cannot be imported here.
KEYRING: web.AppKey[KeyRing] = web.AppKey("keyring")
TOKENS: web.AppKey[TokenService] = web.AppKey("tokens")
GUESTS: web.AppKey[Guests] = web.AppKey("guests")
LIMITER: web.AppKey[Limiter] = web.AppKey("limiter")
# GET /openapi.json, encoded once from ROUTES when the app is made.
OPENAPI = web.AppKey("openapi", bytes)
