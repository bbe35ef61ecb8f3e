"""Who may call: API keys, session tokens (JWT + rotating refresh tokens), guests, rate limits."""

from __future__ import annotations

from server.auth.keys import KeyRing, create_key
from server.auth.middleware import PRINCIPAL, auth_middleware, principal_of
from server.auth.principal import Principal, authorize_session, require_key
from server.auth.tokens import TokenPair, TokenService, with_tokens
from server.auth.wiring import setup_auth

__all__ = [
    "PRINCIPAL",
    "KeyRing",
    "Principal",
    "TokenPair",
    "TokenService",
    "auth_middleware",
    "authorize_session",
    "create_key",
    "principal_of",
    "require_key",
    "setup_auth",
    "with_tokens",
]
