"""One module per scenario: ``add_arguments(parser)`` and ``async run(args, report)``."""

from __future__ import annotations

__all__ = ["NAMES"]

NAMES = ("stream", "fanout", "idle", "reconnect", "crash", "soak", "overload", "cluster", "search")
