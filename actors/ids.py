"""Prefixed opaque ids and RFC 3339 timestamps."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

__all__ = ["new_id", "utcnow"]


def new_id(prefix: str) -> str:
    """A random id such as ``ses_3f9a...`` (96 bits of randomness)."""
    return f"{prefix}_{secrets.token_hex(12)}"


def utcnow() -> str:
    """Now as an RFC 3339 UTC string with microseconds (sortable as text)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
