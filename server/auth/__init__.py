"""Who may call: API keys (and, later, session tokens and guests)."""

from __future__ import annotations

from server.auth.keys import KeyRing, create_key
from server.auth.middleware import auth_middleware, principal_of
from server.auth.principal import Principal, authorize_session

__all__ = ["KeyRing", "Principal", "auth_middleware", "authorize_session", "create_key", "principal_of"]
