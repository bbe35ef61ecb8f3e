"""Token usage per end user."""

from __future__ import annotations

import msgspec

from actors.core.tree import Usage

__all__ = ["EndUserUsage"]


class EndUserUsage(msgspec.Struct):
    end_user_id: str
    sessions: int
    usage: Usage
