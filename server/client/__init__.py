"""The Python client (``from server.client import Client``) and the terminal chat.

Only the HTTP edge's schema and the pure core are imported here: a client needs no server.
"""

from __future__ import annotations

from server.client.client import (
    UNSET,
    ApiError,
    ApiKeyAuth,
    Auth,
    BearerAuth,
    Client,
    EventStream,
    ServerEvent,
    StreamProtocolError,
)

__all__ = [
    "UNSET",
    "ApiError",
    "ApiKeyAuth",
    "Auth",
    "BearerAuth",
    "Client",
    "EventStream",
    "ServerEvent",
    "StreamProtocolError",
]
