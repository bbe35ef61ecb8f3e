"""The Python client of the sessiond HTTP API: typed calls and event streams that resume.

    async with Client("http://127.0.0.1:8080", api_key="sk_...") as c:
        session = await c.create_session(title="notes")
        c.use_session(session.id)
        answer = await c.execute("Summarise our plan")      # the assistant's message
        async for delta in c.stream_text("And in one line?"):
            print(delta, end="", flush=True)

Every call returns the msgspec type the server encodes (``server.schema``); a problem answer
raises ``ApiError``. Stream iterators reconnect by themselves with ``Last-Event-ID`` and
check that event ids strictly increase, so a dropped connection loses and repeats nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import msgspec

from actors.core.events import MessageDelta
from server.client.auth import ApiKeyAuth, Auth, BearerAuth
from server.client.errors import ApiError, StreamProtocolError, api_error
from server.client.events import EventStream, ServerEvent
from server.schema.messages import (
    CancelOut,
    CheckpointList,
    EditBody,
    MessageList,
    MessageOut,
    NavigateBody,
    NavigateOut,
    RegenerateBody,
    RestoreBody,
    RestoreOut,
    SendMessageBody,
    SendResult,
    TreeOut,
)
from server.schema.ops import ReadyOut, StatusOut
from server.schema.search import SearchList
from server.schema.sessions import CreateSessionBody, PatchSessionBody, SessionList, SessionOut
from server.schema.shares import CreateShareBody, ShareCopyBody, ShareCreated, SharedConversation, ShareList
from server.schema.tools import ClientToolBody, DenyBody, ToolCallOut, ToolResultBody

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

T = TypeVar("T")
UNSET = msgspec.UNSET

_encoder = msgspec.json.Encoder()
_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}


def _decode(raw: bytes, type_: Any) -> Any:
    decoder = _decoders.get(type_)
    if decoder is None:
        decoder = _decoders[type_] = msgspec.json.Decoder(type_)
    return decoder.decode(raw)


class Client:
    """A sessiond API client; use it as ``async with Client(url, api_key=...) as c``."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8080",
        *,
        api_key: str | None = None,
        auth: Auth | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 300.0,
        read_timeout: float = 60.0,
        max_reconnects: int = 5,
        reconnect_delay_ms: int = 0,
        max_reconnect_delay_ms: int = 5000,
        max_event_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.url = url.rstrip("/")
        if auth is None and api_key is not None:
            auth = ApiKeyAuth(api_key)
        self.auth = auth
        self._session = session
        self._own_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        # A stream is silent at most one heartbeat interval (15 s by default) when healthy.
        self._stream_timeout = aiohttp.ClientTimeout(total=None, sock_read=read_timeout)
        self.max_reconnects = max_reconnects
        self.reconnect_delay_ms = reconnect_delay_ms
        self.max_reconnect_delay_ms = max_reconnect_delay_ms
        self.max_event_bytes = max_event_bytes
        self.session_id: str | None = None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._session is not None and self._own_session:
            await self._session.close()
        self._session = None

    # -- plumbing --------------------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def _send(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
        anonymous: bool = False,
    ) -> aiohttp.ClientResponse:
        """The raw response of one request (the caller releases it); a problem raises ApiError.
        ``anonymous``: without the client's credentials (a share link needs none)."""
        all_headers: dict[str, str] = {}
        if self.auth is not None and not anonymous:
            all_headers.update(await self.auth.headers())
        if headers:
            all_headers.update(headers)
        data: bytes | None = None
        if body is not None:
            data = _encoder.encode(body)
            all_headers["Content-Type"] = "application/json"
        resp = await self._http().request(
            method, self.url + path, data=data, params=params, headers=all_headers,
            timeout=self._stream_timeout if stream else self._timeout,
        )
        if resp.status >= 400:
            raw = await resp.read()
            resp.release()
            raise api_error(resp, raw)
        return resp

    async def request(
        self, method: str, path: str, type_: type[T], *, body: Any = None,
        params: Mapping[str, str] | None = None, headers: Mapping[str, str] | None = None,
        anonymous: bool = False,
    ) -> T:
        """Any call, decoded as ``type_`` (``type(None)`` for no body): for routes newer than this client."""
        resp = await self._send(method, path, body=body, params=params, headers=headers, anonymous=anonymous)
        try:
            raw = await resp.read()
        finally:
            resp.release()
        if type_ is type(None):
            return None  # type: ignore[return-value]
        return _decode(raw, type_)  # type: ignore[no-any-return]

    def _sid(self, session: str | None) -> str:
        sid = session or self.session_id
        if sid is None:
            raise ValueError("no session: pass session=... or call use_session(id) first")
        return sid

    @staticmethod
    def _if_match(version: int | None) -> dict[str, str] | None:
        return None if version is None else {"If-Match": f'"{version}"'}

    # -- current session -------------------------------------------------------------------

    async def open_events(self, session_id: str, last_event_id: int | None) -> aiohttp.ClientResponse:
        """The raw response of the session's stream after ``last_event_id`` (an EventStream's source)."""
        headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
        return await self._send("GET", f"/v1/sessions/{session_id}/stream", headers=headers, stream=True)

    def use_session(self, session_id: str) -> None:
        """Make ``session_id`` the session of every call that is not given one."""
        self.session_id = session_id

    async def execute(self, prompt: str, *, session: str | None = None) -> MessageOut:
        """Send ``prompt`` and wait for the answer: the assistant's message."""
        return (await self.send(prompt, session=session)).message

    def stream(self, prompt: str, *, session: str | None = None) -> EventStream:
        """Send ``prompt``; iterate over the events of its task (resumes by itself)."""
        return self.send_stream(prompt, session=session)

    async def stream_text(self, prompt: str, *, session: str | None = None) -> AsyncIterator[str]:
        """Send ``prompt``; iterate over the text of the answer as it is made."""
        async with self.stream(prompt, session=session) as events:
            async for ev in events:
                if isinstance(ev.event, MessageDelta):
                    yield ev.event.delta

    # -- sessions --------------------------------------------------------------------------

    async def create_session(self, **fields: Any) -> SessionOut:
        """``POST /v1/sessions``; ``fields`` are those of ``CreateSessionBody``."""
        return await self.request("POST", "/v1/sessions", SessionOut, body=CreateSessionBody(**fields))

    async def list_sessions(
        self,
        *,
        namespace: str | None = None,
        end_user_id: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
        cursor: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> SessionList:
        params = {
            k: str(v)
            for k, v in (
                ("namespace", namespace), ("end_user_id", end_user_id), ("limit", limit),
                ("offset", offset), ("cursor", cursor),
            )
            if v is not None
        }
        for key, value in (metadata or {}).items():
            params[f"metadata.{key}"] = value
        return await self.request("GET", "/v1/sessions", SessionList, params=params)

    async def iter_sessions(self, **filters: Any) -> AsyncIterator[SessionOut]:
        """Every session matching ``filters`` (those of ``list_sessions``), page after page."""
        cursor: str | None = None
        while True:
            page = await self.list_sessions(**filters, cursor=cursor)
            for item in page.items:
                yield item
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def get_session(self, *, session: str | None = None) -> SessionOut:
        return await self.request("GET", f"/v1/sessions/{self._sid(session)}", SessionOut)

    async def patch_session(
        self, *, session: str | None = None, if_version: int | None = None, **fields: Any
    ) -> SessionOut:
        """``PATCH``: ``title``, ``metadata`` (merged; None deletes a key), ``context``, ``tools``."""
        return await self.request(
            "PATCH", f"/v1/sessions/{self._sid(session)}", SessionOut,
            body=PatchSessionBody(**fields), headers=self._if_match(if_version),
        )

    async def get_metadata(self, *, session: str | None = None) -> dict[str, Any]:
        return await self.request("GET", f"/v1/sessions/{self._sid(session)}/metadata", dict[str, Any])

    async def delete_session(self, *, session: str | None = None) -> None:
        await self.request("DELETE", f"/v1/sessions/{self._sid(session)}", type(None))

    async def prepare(self, *, session: str | None = None) -> StatusOut:
        return await self.request("POST", f"/v1/sessions/{self._sid(session)}/prepare", StatusOut)

    async def export(self, *, session: str | None = None) -> dict[str, Any]:
        """The whole session as one JSON document (``GET .../export``)."""
        return await self.request("GET", f"/v1/sessions/{self._sid(session)}/export", dict[str, Any])

    async def search(
        self,
        q: str,
        *,
        sort: str | None = None,
        namespace: str | None = None,
        end_user_id: str | None = None,
        created_after: str | None = None,
        created_before: str | None = None,
        active_after: str | None = None,
        active_before: str | None = None,
        metadata: Mapping[str, str] | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> SearchList:
        """``GET /v1/sessions/search``: sessions whose title or messages (any branch) hold every
        word of ``q``, best first (``sort``: relevance, last_active or created). Snippets mark
        the matching words with ``<mark>...</mark>``; the rest is the message's text as is."""
        params = {"q": q}
        for name, value in (
            ("sort", sort), ("namespace", namespace), ("end_user_id", end_user_id),
            ("created_after", created_after), ("created_before", created_before),
            ("active_after", active_after), ("active_before", active_before), ("limit", limit), ("offset", offset),
        ):
            if value is not None:
                params[name] = str(value)
        for key, value in (metadata or {}).items():
            params[f"metadata.{key}"] = value
        return await self.request("GET", "/v1/sessions/search", SearchList, params=params)

    # -- share links -----------------------------------------------------------------------

    async def create_share(
        self, *, session: str | None = None, message_id: str | None = None,
        expires_in: int | None = None, expires_at: str | None = None,
    ) -> ShareCreated:
        """A read-only link to the conversation up to ``message_id`` (default: as it stands now).
        Its ``token`` and ``url`` are in this answer only."""
        body = CreateShareBody(message_id=message_id, expires_in=expires_in, expires_at=expires_at)
        return await self.request("POST", f"/v1/sessions/{self._sid(session)}/shares", ShareCreated, body=body)

    async def list_shares(self, *, session: str | None = None) -> ShareList:
        """The session's live links (never their tokens)."""
        return await self.request("GET", f"/v1/sessions/{self._sid(session)}/shares", ShareList)

    async def delete_share(self, share_id: str, *, session: str | None = None) -> None:
        """Revoke a link: from now on its token answers 404."""
        await self.request("DELETE", f"/v1/sessions/{self._sid(session)}/shares/{share_id}", type(None))

    async def get_share(self, token: str, *, html: bool = False) -> SharedConversation:
        """What a share link shows; sent without this client's credentials, as anyone would."""
        params = {"format": "html"} if html else None
        return await self.request(
            "GET", f"/v1/shares/{quote(token, safe='')}", SharedConversation, params=params, anonymous=True
        )

    async def copy_share(self, token: str, *, title: str | None = None, namespace: str = "default") -> SessionOut:
        """Continue a shared conversation as a session of this client's own (an API key)."""
        return await self.request(
            "POST", f"/v1/shares/{quote(token, safe='')}/fork", SessionOut,
            body=ShareCopyBody(title=title, namespace=namespace),
        )

    # -- messages --------------------------------------------------------------------------

    async def send(
        self, content: str, *, session: str | None = None, parent_id: str | None = None,
        queue: bool = False, if_version: int | None = None,
    ) -> SendResult:
        """Send a message and wait until its task ends."""
        return await self.request(
            "POST", f"/v1/sessions/{self._sid(session)}/messages", SendResult,
            body=SendMessageBody(content=content, parent_id=parent_id),
            params={"queue": "true"} if queue else None, headers=self._if_match(if_version),
        )

    def send_stream(
        self, content: str, *, session: str | None = None, parent_id: str | None = None,
        queue: bool = False, if_version: int | None = None, client_tools: list[ClientToolBody] | None = None,
    ) -> EventStream:
        """Send a message; iterate over its task's events until the task ends. ``client_tools``:
        tools this frontend runs for the task (their calls wait for ``submit_tool_result``)."""
        sid = self._sid(session)
        return self._task_stream(
            sid, f"/v1/sessions/{sid}/messages",
            SendMessageBody(content=content, stream=True, parent_id=parent_id, client_tools=client_tools or []),
            params={"queue": "true"} if queue else None, if_version=if_version,
        )

    async def messages(self, *, session: str | None = None, limit: int = 100, offset: int = 0) -> MessageList:
        """The active path, oldest first."""
        return await self.request(
            "GET", f"/v1/sessions/{self._sid(session)}/messages", MessageList,
            params={"limit": str(limit), "offset": str(offset)},
        )

    async def tree(self, *, session: str | None = None) -> TreeOut:
        return await self.request("GET", f"/v1/sessions/{self._sid(session)}/tree", TreeOut)

    async def edit(
        self, message_id: str, content: str, *, session: str | None = None, if_version: int | None = None
    ) -> SendResult:
        """A new version of user message ``message_id``, answered."""
        return await self.request(
            "POST", f"/v1/sessions/{self._sid(session)}/messages/{message_id}/edit", SendResult,
            body=EditBody(content=content), headers=self._if_match(if_version),
        )

    def edit_stream(
        self, message_id: str, content: str, *, session: str | None = None, if_version: int | None = None
    ) -> EventStream:
        sid = self._sid(session)
        return self._task_stream(
            sid, f"/v1/sessions/{sid}/messages/{message_id}/edit", EditBody(content=content, stream=True),
            if_version=if_version,
        )

    async def regenerate(
        self, message_id: str, *, session: str | None = None, if_version: int | None = None
    ) -> SendResult:
        """A new answer in place of assistant message ``message_id`` (a sibling)."""
        return await self.request(
            "POST", f"/v1/sessions/{self._sid(session)}/messages/{message_id}/regenerate", SendResult,
            body=RegenerateBody(), headers=self._if_match(if_version),
        )

    def regenerate_stream(
        self, message_id: str, *, session: str | None = None, if_version: int | None = None
    ) -> EventStream:
        sid = self._sid(session)
        return self._task_stream(
            sid, f"/v1/sessions/{sid}/messages/{message_id}/regenerate", RegenerateBody(stream=True),
            if_version=if_version,
        )

    async def navigate(
        self, message_id: str, *, session: str | None = None, if_version: int | None = None
    ) -> list[MessageOut]:
        """Switch to the branch of ``message_id``; the new active path."""
        out = await self.request(
            "POST", f"/v1/sessions/{self._sid(session)}/navigate", NavigateOut,
            body=NavigateBody(message_id=message_id), headers=self._if_match(if_version),
        )
        return out.items

    async def cancel(self, *, session: str | None = None) -> CancelOut:
        """Stop the running task; its partial answer is kept, marked ``cancelled``."""
        return await self.request("POST", f"/v1/sessions/{self._sid(session)}/cancel", CancelOut)

    async def approve(self, call_id: str, *, session: str | None = None) -> ToolCallOut:
        """Approve a tool call that waits for approval (``tool.approval_requested``)."""
        path = f"/v1/sessions/{self._sid(session)}/tool-calls/{call_id}/approve"
        return await self.request("POST", path, ToolCallOut)

    async def deny(self, call_id: str, *, reason: str | None = None, session: str | None = None) -> ToolCallOut:
        """Deny a tool call that waits for approval; ``reason`` is given to the model."""
        path = f"/v1/sessions/{self._sid(session)}/tool-calls/{call_id}/deny"
        return await self.request("POST", path, ToolCallOut, body=DenyBody(reason))

    async def submit_tool_result(
        self, call_id: str, output: str, *, is_error: bool = False, session: str | None = None
    ) -> ToolCallOut:
        """The result of a client tool call (``tool.call`` with ``client: true``)."""
        path = f"/v1/sessions/{self._sid(session)}/tool-calls/{call_id}/result"
        return await self.request("POST", path, ToolCallOut, body=ToolResultBody(output, is_error))

    async def checkpoints(self, *, session: str | None = None) -> CheckpointList:
        return await self.request("GET", f"/v1/sessions/{self._sid(session)}/checkpoints", CheckpointList)

    async def restore(
        self, checkpoint_id: str, *, hint: str | None = None, session: str | None = None,
        if_version: int | None = None,
    ) -> SendResult | RestoreOut:
        """Make the checkpoint's message active; with ``hint``, answer again from there."""
        out = await self.request(
            "POST", f"/v1/sessions/{self._sid(session)}/checkpoints/{checkpoint_id}/restore", dict[str, Any],
            body=RestoreBody(hint=hint), headers=self._if_match(if_version),
        )
        if "task_id" in out:
            return msgspec.convert(out, SendResult)
        return msgspec.convert(out, RestoreOut)

    def restore_stream(
        self, checkpoint_id: str, hint: str, *, session: str | None = None, if_version: int | None = None
    ) -> EventStream:
        sid = self._sid(session)
        return self._task_stream(
            sid, f"/v1/sessions/{sid}/checkpoints/{checkpoint_id}/restore", RestoreBody(hint=hint, stream=True),
            if_version=if_version,
        )

    # -- streams ---------------------------------------------------------------------------

    def events(self, *, session: str | None = None, last_event_id: int | None = None) -> EventStream:
        """The session's events after ``last_event_id`` (or from the current task), then live."""
        return EventStream(self, self._sid(session), last_event_id=last_event_id)

    def _task_stream(
        self, sid: str, path: str, body: Any, *, params: Mapping[str, str] | None = None,
        if_version: int | None = None,
    ) -> EventStream:
        async def opener() -> aiohttp.ClientResponse:
            return await self._send(
                "POST", path, body=body, params=params, headers=self._if_match(if_version), stream=True
            )

        return EventStream(self, sid, follow_task=True, opener=opener)

    # -- operations ------------------------------------------------------------------------

    async def health(self) -> StatusOut:
        return await self.request("GET", "/healthz", StatusOut)

    async def ready(self) -> ReadyOut:
        resp = await self._http().get(self.url + "/readyz", timeout=self._timeout)
        async with resp:
            return _decode(await resp.read(), ReadyOut)  # type: ignore[no-any-return]

    async def openapi(self) -> dict[str, Any]:
        return await self.request("GET", "/openapi.json", dict[str, Any])

    async def metrics(self) -> str:
        resp = await self._send("GET", "/metrics")
        async with resp:
            return await resp.text()


