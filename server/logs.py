"""Logs: JSON lines (or text on a terminal), one per request with its request id; secrets never written."""

from __future__ import annotations

import logging
import re
import sys
import time

import msgspec
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError

from server.middleware.request_id import REQUEST_ID

__all__ = ["AccessLogger", "redact", "redact_parser_errors", "redact_path", "setup_logging"]

_enc = msgspec.json.Encoder()
_SECRET_QUERY = re.compile(r"(?i)((?:token|access_token|refresh_token|api_key|key|secret)=)[^&]*")


# A share link's token is its path's own segment (GET /v1/shares/{token}, .../fork).
_SECRET_PATH = re.compile(r"^(/v1/shares/)[^/]+")


def redact(query: str) -> str:
    """A query string with token and key values blanked."""
    return _SECRET_QUERY.sub(r"\1[redacted]", query)


def redact_path(path: str) -> str:
    """A request path with the secret it may carry (a share link's token) blanked."""
    return _SECRET_PATH.sub(r"\1[redacted]", path)


class _ParserErrorFilter(logging.Filter):
    """aiohttp logs a request it cannot parse with the exception, whose message quotes the start
    of the offending line: for an over-long header line, that is the sender's API key or token.
    The record keeps what happened and from where, and drops the quoted bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = f"{record.msg}: {type(exc).__name__} (status {exc.code}; the request's bytes are not logged)"
            record.exc_info = None
            record.exc_text = None
        return True


_PARSER_FILTER = _ParserErrorFilter()


def redact_parser_errors() -> None:
    """Install the filter on aiohttp's server logger (once, however many apps are made)."""
    logger = logging.getLogger("aiohttp.server")
    if _PARSER_FILTER not in logger.filters:
        logger.addFilter(_PARSER_FILTER)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            out.update(extra)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return _enc.encode(out).decode()


class _TextFormatter(logging.Formatter):
    """For people at a terminal: time, level, logger and message, then the fields as k=v."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            line += "".join(f" {k}={v}" for k, v in extra.items() if v is not None)
        return line


def setup_logging(level: str, fmt: str) -> None:
    """Log to stderr: ``fmt`` json, text, or auto (text when stderr is a terminal)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class AccessLogger(AbstractAccessLogger):
    """One JSON line per request; query strings are redacted, bodies never logged."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        query = request.query_string
        self.logger.info(
            "request",
            extra={
                "fields": {
                    "request_id": request.get(REQUEST_ID),
                    "method": request.method,
                    "path": redact_path(request.path) + ("?" + redact(query) if query else ""),
                    "status": response.status,
                    "seconds": round(time, 6),
                    "remote": request.remote,
                }
            },
        )
