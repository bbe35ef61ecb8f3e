"""What a route is: ``Route``, one frozen object per route, holding every fact about it.

The table of them is server/table.py (``ROUTES``); this module has no handlers, so handlers and
middleware can read the matched route (``route_of(request)``) without importing the table.
The router, the OpenAPI document, the token scope, admission, the metrics labels and the query
bounds all read the same ``Route``: a route is written once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from actors.core.commands import TaskCommand
from actors.core.errors import SessiondError

__all__ = [
    "ANY",
    "HTML",
    "JSON",
    "MULTIPART",
    "PROBLEM",
    "ROUTE_OF",
    "SSE",
    "TEXT",
    "ErrorShape",
    "Form",
    "Handler",
    "Param",
    "Route",
    "TaskRule",
    "integer",
    "route_of",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Media kinds a route may answer with besides typed JSON.
JSON = "application/json"
SSE = "text/event-stream"
TEXT = "text/plain"
HTML = "text/html"
ANY = "application/octet-stream"
MULTIPART = "multipart/form-data"
PROBLEM = "application/problem+json"

# Whether a request of the route starts a model task: never, always (send, edit, regenerate),
# or only when its body carries a non-blank hint (restore).
TaskRule = Literal["never", "always", "with_hint"]


@dataclass(frozen=True, slots=True)
class Param:
    """A query or header parameter, with its JSON Schema (bounds and default included)."""

    name: str
    schema: Mapping[str, Any]
    description: str = ""
    where: Literal["query", "header"] = "query"
    required: bool = False


def integer(name: str, default: int, minimum: int, maximum: int, description: str = "") -> Param:
    """An integer query parameter; ``int_query`` reads its bounds from here."""
    schema = {"type": "integer", "minimum": minimum, "maximum": maximum, "default": default}
    return Param(name, schema, description)


@dataclass(frozen=True, slots=True)
class Form:
    """A request body that is not JSON: its media type and JSON Schema."""

    media: str
    schema: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ErrorShape:
    """How a route answers 4XX when not as problem+json: a protocol's own error body (the
    OpenAI API's ``{"error": {...}}``). 5XX (overloaded, unavailable) stay problem+json."""

    media: str
    schema: Mapping[str, Any]
    render: Callable[[SessiondError], web.Response]


@dataclass(frozen=True, slots=True)
class Route:
    """One route: ``Route("GET", "/v1/x/{x_id}", handler, "Summary", reply=XOut)``.

    ``reply`` is the 2xx answer: a msgspec type (JSON), a tuple of types (any of them), a JSON
    Schema dict, a media kind (``TEXT``, ``HTML``, ``ANY``) or None (no body); ``status`` is its
    code. ``sse``: the route may answer ``text/event-stream`` (besides ``reply``, if any).
    ``token``: a session access token of the route's own session may call it. ``public``: no
    credentials at all. ``refresh``: authenticated by its refresh token, in the handler.
    ``token_in_query``: the token may come as ``?token=`` (an EventSource sets no headers).
    ``bearer_key``: an API key may come as ``Authorization: Bearer`` (a client that has only
    that, the OpenAI SDK's ``api_key``). ``events``: with ``sse``, the schema of the stream when
    it is a protocol's own rather than sessiond's events. ``errors``: 4XX in a protocol's own
    shape (None: problem+json).
    """

    method: str
    path: str
    handler: Handler
    summary: str
    body: type[Any] | Form | None = None
    reply: Any = None
    task: TaskRule = "never"
    sse: bool = False
    token: bool = False
    public: bool = False
    refresh: bool = False
    token_in_query: bool = False
    bearer_key: bool = False
    body_required: bool = False
    status: int = 200
    query: tuple[Param, ...] = ()
    tag: str | None = None
    description: str = ""
    responses: Mapping[str, Any] = field(default_factory=dict)  # other statuses: their reply
    path_schemas: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # narrower than "string"
    events: Mapping[str, Any] | None = None
    errors: ErrorShape | None = None

    def starts_task(self, command: TaskCommand[Any]) -> bool:
        """Whether this request starts a model task: the route may, and the command says it does
        (a restore only with a hint: ``RestoreCheckpoint.starts_task``)."""
        return self.task != "never" and command.starts_task

    def param(self, name: str) -> Param:
        for p in self.query:
            if p.name == name:
                return p
        raise KeyError(f"{self.method} {self.path} declares no parameter {name!r}")


ROUTE_OF = web.AppKey("route_of", dict[Handler, Route])


def route_of(request: web.Request) -> Route | None:
    """The route the request matched (None: no route, the router's 404 or 405)."""
    if request.match_info.http_exception is not None:
        return None
    return request.app[ROUTE_OF].get(request.match_info.handler)
