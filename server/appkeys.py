"""Typed application state: the key of every service make_app (server/app.py) puts in the app.

The keys live apart from the services and from the ``setup_*`` functions that fill them, so any
module of the edge can read a service without importing the code that builds it; this module
imports only the services' own modules, none of which imports it back.
"""

from __future__ import annotations

from aiohttp import web

from actors.agent.agents import Agents
from actors.agent.documents.library import DocumentLibrary
from actors.agent.router import Router
from actors.agent.tools import ToolBox
from actors.registry import Registry
from actors.store.base import Store
from actors.sweeper import Sweeper
from actors.webhooks.deliverer import Deliverer
from server.admission import Admission
from server.auth.guests import Guests
from server.auth.keys import KeyRing
from server.auth.ratelimit import Limiter
from server.auth.tokens import TokenService
from server.config import Config
from server.errors import OutageLog
from server.metrics import Metrics

__all__ = [
    "ADMISSION",
    "AGENTS",
    "CONFIG",
    "DELIVERER",
    "GUESTS",
    "KEYRING",
    "LIBRARY",
    "LIMITER",
    "METRICS",
    "OPENAPI",
    "OUTAGES",
    "REGISTRY",
    "ROUTER",
    "STORE",
    "SWEEPER",
    "TOKENS",
    "TOOLBOX",
]

CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", Store)  # type: ignore[type-abstract]
REGISTRY = web.AppKey("registry", Registry)
SWEEPER = web.AppKey("sweeper", Sweeper)  # retention (actors/sweeper.py)
# Authentication and rate limits (server/auth/setup.py).
KEYRING = web.AppKey("keyring", KeyRing)
TOKENS = web.AppKey("tokens", TokenService)
GUESTS = web.AppKey("guests", Guests)  # type: ignore[type-abstract]
LIMITER = web.AppKey("limiter", Limiter)  # type: ignore[type-abstract]
# The agent side (server/agents.py).
AGENTS = web.AppKey("agents", Agents)
TOOLBOX = web.AppKey("toolbox", ToolBox)
LIBRARY = web.AppKey("library", DocumentLibrary)
ROUTER = web.AppKey("router", Router)
# Webhooks (server/webhooks.py): only where endpoints are configured.
DELIVERER = web.AppKey("deliverer", Deliverer)
# Load and observation.
ADMISSION = web.AppKey("admission", Admission)
METRICS = web.AppKey("metrics", Metrics)
# When each unreachable dependency was last logged (server/middleware/problem.py).
OUTAGES = web.AppKey("outages", OutageLog)
# GET /openapi.json, encoded once from ROUTES when the app is made.
OPENAPI = web.AppKey("openapi", bytes)
