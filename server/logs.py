"""Logs: JSON lines (or text on a terminal), one per request with its request id; secrets never written."""

from __future__ import annotations

import logging
import re
import sys
import time

import msgspec
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from server.middleware.request_id import REQUEST_ID

__all__ = ["AccessLogger", "redact", "setup_logging"]

_enc = msgspec.json.Encoder()
_SECRET_QUERY = re.compile(r"(?i)((?:token|access_token|refresh_token|api_key|key|secret)=)[^&]*")


def redact(query: str) -> str:
    """A query string with token and key values blanked."""
    return _SECRET_QUERY.sub(r"\1[redacted]", query)


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
                    "path": request.path + ("?" + redact(query) if query else ""),
                    "status": response.status,
                    "seconds": round(time, 6),
                    "remote": request.remote,
                }
            },
        )
