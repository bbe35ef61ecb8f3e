"""The client's credentials: each gives the headers that authenticate one request."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

__all__ = ["ApiKeyAuth", "Auth", "BearerAuth"]


class Auth(Protocol):
    """Gives the headers that authenticate one request; asked again before every request."""

    async def headers(self) -> Mapping[str, str]: ...


class ApiKeyAuth:
    """``X-API-Key``, optionally acting for one end user (``X-End-User-ID``)."""

    def __init__(self, key: str, *, end_user_id: str | None = None) -> None:
        self._headers = {"X-API-Key": key}
        if end_user_id is not None:
            self._headers["X-End-User-ID"] = end_user_id

    async def headers(self) -> Mapping[str, str]:
        return self._headers


class BearerAuth:
    """``Authorization: Bearer <token>``; ``token`` may be a coroutine function (e.g. refreshing)."""

    def __init__(self, token: str | Callable[[], Awaitable[str]]) -> None:
        self._token = token

    async def headers(self) -> Mapping[str, str]:
        token = self._token if isinstance(self._token, str) else await self._token()
        return {"Authorization": f"Bearer {token}"}
