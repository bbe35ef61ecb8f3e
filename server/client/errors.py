"""What the Python client raises: a problem answer of the server, or a stream that broke its rules."""

from __future__ import annotations

import aiohttp
import msgspec

from server.errors import Problem

__all__ = ["ApiError", "StreamProtocolError", "api_error"]

_problem = msgspec.json.Decoder(Problem)


class ApiError(Exception):
    """The server answered with a problem (RFC 9457): ``status``, ``code``, ``detail``."""

    def __init__(self, status: int, code: str, title: str, detail: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.retry_after = retry_after


class StreamProtocolError(Exception):
    """The server broke the stream contract (an event id that does not increase)."""


def api_error(resp: aiohttp.ClientResponse, raw: bytes) -> ApiError:
    """The ApiError of a problem answer (or of any non-2xx answer that is not problem+json)."""
    retry = resp.headers.get("Retry-After")
    retry_after = float(retry) if retry and retry.replace(".", "", 1).isdigit() else None
    try:
        p = _problem.decode(raw)
        return ApiError(resp.status, p.code, p.title, p.detail, retry_after)
    except msgspec.DecodeError:
        text = raw.decode(errors="replace")[:500]
        return ApiError(resp.status, "http_error", resp.reason or "", text, retry_after)
