"""Operations: liveness and readiness (also the answer of a session warmed by prepare)."""

from __future__ import annotations

import msgspec

__all__ = ["ReadyOut", "StatusOut"]


class StatusOut(msgspec.Struct):
    """``{"status": ...}``: liveness, and a session warmed by prepare."""

    status: str

class ReadyOut(msgspec.Struct):
    status: str  # ready | not_ready
    checks: dict[str, str]
