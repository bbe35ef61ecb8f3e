"""What the HTTP model backends share: one client session each, timeouts, failure sorting.

A failure before anything was streamed is a ``ProviderUnavailableError`` (the route may try its
next model) when the provider could not be reached, timed out before its first token, or
answered 5xx or 429; any other answer >= 400 is a plain ``ProviderError`` (a request the next
model would refuse as well, such as an unknown model name or a bad key).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import aiohttp
import msgspec

from actors.agent.backends.base import ProviderError, ProviderUnavailableError

__all__ = ["AnswerProgress", "HttpUpstream", "UpstreamSettings", "describe"]


class AnswerProgress(Protocol):
    """What a backend's answer parser tells the shared streaming loop."""

    started: bool  # something of the answer itself arrived: no falling back any more
    finished: bool  # the answer is whole


_ERROR_BODY_CHARS = 500
_MAX_LINE = 1 << 20  # a streamed line (say, long tool arguments) may be large, not endless


class UpstreamSettings(msgspec.Struct, frozen=True, kw_only=True):
    base_url: str
    api_key: str | None = None
    connect_timeout: float = 5.0
    first_token_timeout: float = 30.0
    read_timeout: float = 60.0
    probe_timeout: float = 5.0


class HttpUpstream:
    """An HTTP model server: the client session, request opening and the health probe."""

    def __init__(self, name: str, settings: UpstreamSettings) -> None:
        self.name = name
        self.settings = settings
        self.base_url = settings.base_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    def headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        if self.settings.api_key:
            h["Authorization"] = f"Bearer {self.settings.api_key}"
        return h

    def session(self) -> aiohttp.ClientSession:
        # Made on first use, inside the running loop; closed by aclose() at shutdown.
        if self._session is None or self._session.closed:
            s = self.settings
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=s.connect_timeout, sock_read=s.read_timeout),
                read_bufsize=_MAX_LINE,
            )
        return self._session

    async def deltas(
        self,
        path: str,
        payload: dict[str, Any],
        feed: Callable[[bytes], list[str]],
        answer: AnswerProgress,
        complete: Callable[[], bool],
    ) -> AsyncIterator[list[str]]:
        """The text deltas of one streamed answer, ``feed`` parsing each line of the body: all
        the deltas of one network read go on as one batch.

        Until the first token a failure is ``ProviderUnavailableError`` (the route may take its
        next model); after it, ``ProviderError`` (the answer has begun: it never falls back).
        Reading stops when ``complete()`` says so or the body ends; a body that ends before the
        answer finished is an error too, never a silent truncation.
        """
        first_timeout = self.settings.first_token_timeout
        lines = _Lines()
        async with contextlib.AsyncExitStack() as stack:
            pending: list[str] = []
            try:
                async with asyncio.timeout(first_timeout):
                    resp = await stack.enter_async_context(self.open(path, payload))
                    body = resp.content
                    while not (answer.started or answer.finished):
                        data = await body.readany()
                        for line in lines.take(data):
                            pending += feed(line)
                        if not data:
                            break
            except TimeoutError as exc:
                raise ProviderUnavailableError(f"{self.name}: no first token within {first_timeout:g}s") from exc
            except (aiohttp.ClientError, OSError) as exc:
                raise ProviderUnavailableError(f"{self.name}: {describe(exc)}") from exc
            if pending:
                yield pending
            try:
                while not complete() and not lines.ended:
                    data = await body.readany()
                    batch: list[str] = []
                    for line in lines.take(data):
                        batch += feed(line)
                        if complete():
                            break
                    if batch:
                        yield batch
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise ProviderError(f"{self.name}: the stream broke off: {describe(exc)}") from exc
        if not answer.finished:
            if not answer.started:  # nothing of an answer came: the next model may take the call
                raise ProviderUnavailableError(f"{self.name}: the stream ended before any answer")
            raise ProviderError(f"{self.name}: the stream ended before the answer was complete")

    @contextlib.asynccontextmanager
    async def open(self, path: str, payload: dict[str, Any]) -> AsyncIterator[aiohttp.ClientResponse]:
        """POST ``payload``; the response once its status says it is streaming an answer."""
        body = msgspec.json.encode(payload)
        try:
            resp = await self.session().post(self.base_url + path, data=body, headers=self.headers())
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ProviderUnavailableError(f"{self.name}: cannot reach {self.base_url}: {describe(exc)}") from exc
        try:
            if resp.status >= 400:
                text = await _error_text(resp)
                message = f"{self.name}: HTTP {resp.status}: {text}"
                if resp.status >= 500 or resp.status == 429:
                    raise ProviderUnavailableError(message)
                raise ProviderError(message)
            yield resp
        finally:
            resp.release()

    async def probe(self, path: str) -> None:
        """GET ``path``: any answer below 500 means the server is up."""
        async with asyncio.timeout(self.settings.probe_timeout):
            async with self.session().get(self.base_url + path, headers=self.headers()) as resp:
                if resp.status >= 500:
                    raise ProviderUnavailableError(f"{self.name}: health probe answered HTTP {resp.status}")

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class _Lines:
    """The lines of a body read in pieces of any size: each read gives the lines it completed
    (the empty read at the end of the body gives the last one, unterminated)."""

    __slots__ = ("ended", "rest")

    def __init__(self) -> None:
        self.rest = b""
        self.ended = False

    def take(self, data: bytes) -> list[bytes]:
        if not data:
            self.ended = True
            last, self.rest = self.rest, b""
            return [last] if last else []
        parts = (self.rest + data).split(b"\n") if self.rest else data.split(b"\n")
        self.rest = parts.pop()
        if len(self.rest) > _MAX_LINE:
            raise ProviderError(f"the model sent a line longer than {_MAX_LINE} bytes")
        return parts


async def _error_text(resp: aiohttp.ClientResponse) -> str:
    try:
        async with asyncio.timeout(5):
            raw = await resp.content.read(4096)
    except (aiohttp.ClientError, TimeoutError):
        return "(no body)"
    text = raw.decode("utf-8", "replace").strip()
    try:
        obj = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return text[:_ERROR_BODY_CHARS]
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return str(err["message"])[:_ERROR_BODY_CHARS]
    if isinstance(err, str):
        return err[:_ERROR_BODY_CHARS]
    return text[:_ERROR_BODY_CHARS]


def describe(exc: BaseException) -> str:
    """A short readable reason for a failure."""
    return str(exc) or type(exc).__name__
