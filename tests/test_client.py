"""The Python client against the real server: typed calls, the current session, streams that resume."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from actors.core.events import (
    MessageCompleted,
    MessageDelta,
    TaskCompleted,
    TaskStarted,
    ToolApprovalRequested,
    ToolCall,
)
from server.app import make_app
from server.client import ApiError, ApiKeyAuth, BearerAuth, Client, ServerEvent, StreamProtocolError
from server.schema.messages import RestoreOut, SendResult
from server.schema.sessions import SessionOut
from server.schema.tools import ClientToolBody
from tests.conftest import TEST_KEY, make_config

ClientMaker = Callable[..., Awaitable[Client]]


@pytest.fixture
async def api(aiohttp_server: Any, tmp_path: Path) -> AsyncIterator[ClientMaker]:
    """A real server on 127.0.0.1:0 and a Client for it."""
    made: list[Client] = []

    async def factory(**sections: dict[str, Any]) -> Client:
        server = await aiohttp_server(make_app(make_config(tmp_path / "data", **sections)))
        c = Client(str(server.make_url("")), api_key=TEST_KEY)
        made.append(c)
        return c

    yield factory
    for c in made:
        await c.aclose()


class _Proxy:
    """A TCP relay between client and server whose client-side connections the test can cut."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.client_sides: list[asyncio.StreamWriter] = []
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.client_sides.append(writer)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                w.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        """Drop every client-side connection at once, as a network failure would."""
        for w in self.client_sides:
            w.transport.abort()
        self.client_sides.clear()

    async def aclose(self) -> None:
        self.cut()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


async def test_typed_calls_cover_the_session_life(api: ClientMaker) -> None:
    c = await api()
    s = await c.create_session(title="plan", metadata={"team": "a"})
    assert isinstance(s, SessionOut) and s.title == "plan"
    c.use_session(s.id)
    result = await c.send("hello")
    assert isinstance(result, SendResult) and result.status == "completed"
    assert result.message.role == "assistant" and result.message.content.startswith("Simulated")
    assert (await c.get_session()).message_count == 2
    patched = await c.patch_session(title="plan 2", metadata={"team": None, "x": "1"}, if_version=s.version + 2)
    assert patched.title == "plan 2"
    assert await c.get_metadata() == {"x": "1"}
    assert (await c.prepare()).status == "running"
    page = await c.messages()
    assert [m.role for m in page.items] == ["user", "assistant"]
    again = await c.regenerate(result.message.id)
    assert again.message.sibling_count == 2
    path = await c.navigate(result.message.id)
    assert path[-1].id == result.message.id
    edited = await c.edit(page.items[0].id, "hello, edited")
    tree = await c.tree()
    assert len(tree.nodes) == 5 and tree.active_leaf_id == edited.message.id  # u, a, a2, u2, a3
    cps = await c.checkpoints()
    assert len(cps.items) == 3
    moved = await c.restore(cps.items[0].id)
    assert isinstance(moved, RestoreOut) and moved.active_leaf_id == result.message.id
    hinted = await c.restore(cps.items[0].id, hint="shorter")
    assert isinstance(hinted, SendResult) and hinted.status == "completed"
    exported = await c.export()
    assert exported["session"]["id"] == s.id
    listed = [x.id async for x in c.iter_sessions(limit=1)]
    assert listed == [s.id]
    with pytest.raises(ApiError) as err:
        await c.patch_session(title="stale", if_version=1)
    assert err.value.status == 412
    await c.delete_session()
    with pytest.raises(ApiError) as err:
        await c.get_session()
    assert err.value.status == 404 and err.value.code == "not_found"
    assert (await c.health()).status == "ok"
    assert (await c.ready()).status == "ready"
    assert "sessiond_events_total" in await c.metrics()


async def test_execute_and_stream_use_the_current_session(api: ClientMaker) -> None:
    c = await api()
    c.use_session((await c.create_session()).id)
    answer = await c.execute("first")
    assert answer.role == "assistant" and answer.status == "completed"
    text = "".join([d async for d in c.stream_text("second")])
    history = await c.messages()
    assert history.items[-1].content == text
    events = [ev async for ev in c.stream("third")]
    assert isinstance(events[0].event, TaskStarted)
    assert isinstance(events[-1].event, TaskCompleted)
    completed = next(e.event for e in events if isinstance(e.event, MessageCompleted))
    assert completed.message.content == "".join(e.event.delta for e in events if isinstance(e.event, MessageDelta))
    assert len(history.items) == 4
    with pytest.raises(ValueError, match="use_session"):
        await Client(c.url, api_key=TEST_KEY).execute("no session")


async def test_approve_deny_and_client_tool_results(api: ClientMaker) -> None:
    c = await api(tools={"approval": {"calculator": "always"}})
    c.use_session((await c.create_session(tools=["calculator"])).id)
    decided: list[str] = []
    async for ev in c.send_stream('/tool calculator {"expression": "3 * 3"}'):
        if isinstance(ev.event, ToolApprovalRequested):
            decided.append((await c.approve(ev.event.call_id)).status)
    assert decided == ["approved"] and (await c.messages()).items[-1].content == "calculator: 9"

    async for ev in c.send_stream('/tool calculator {"expression": "1"}'):
        if isinstance(ev.event, ToolApprovalRequested):
            decided.append((await c.deny(ev.event.call_id, reason="no maths")).status)
    assert decided[-1] == "denied" and "no maths" in (await c.messages()).items[-1].content

    tool = ClientToolBody(name="ask_user", description="Ask the user a question")
    async for ev in c.send_stream("/tool ask_user {}", client_tools=[tool]):
        if isinstance(ev.event, ToolCall) and ev.event.client:
            decided.append((await c.submit_tool_result(ev.event.call_id, "yes")).status)
    assert decided[-1] == "submitted" and (await c.messages()).items[-1].content == "ask_user: yes"


async def test_search_and_share_links(api: ClientMaker) -> None:
    c = await api()
    mine = await c.create_session(title="garden")
    c.use_session(mine.id)
    await c.execute("which tomatoes grow best in shade")
    await c.create_session(title="other")

    found = await c.search("tomatoes shade")
    assert [r.session.id for r in found.items] == [mine.id]
    assert "<mark>tomatoes</mark>" in found.items[0].snippets[0].text
    assert (await c.search("tomatoes", metadata={"team": "none"})).items == []

    link = await c.create_share(expires_in=3600)
    assert link.token.startswith("sh_") and link.url.endswith(link.token) and link.expires_at is not None
    shown = await c.get_share(link.token, html=True)
    assert shown.title == "garden" and [m.role for m in shown.messages] == ["user", "assistant"]
    assert shown.messages[0].content == "which tomatoes grow best in shade" and shown.messages[1].content_html
    # Anyone may open it: a client without any credential too.
    async with Client(c.url) as stranger:
        assert (await stranger.get_share(link.token)).messages == (await c.get_share(link.token)).messages
    copy = await c.copy_share(link.token, title="my garden")
    assert copy.title == "my garden" and copy.message_count == 2 and copy.id != mine.id

    assert [s.id for s in (await c.list_shares()).items] == [link.id]
    await c.delete_share(link.id)
    assert (await c.list_shares()).items == []
    with pytest.raises(ApiError) as gone:
        await c.get_share(link.token)
    assert gone.value.status == 404 and gone.value.code == "not_found"


async def test_wrong_key_is_a_clear_error(api: ClientMaker) -> None:
    c = await api()
    bad = Client(c.url, auth=ApiKeyAuth("sk_nope_nope"))
    with pytest.raises(ApiError) as err:
        await bad.create_session()
    await bad.aclose()
    assert err.value.status == 401 and err.value.code == "unauthorized"
    bearer = Client(c.url, auth=BearerAuth("not-a-token"))
    with pytest.raises(ApiError) as err:
        await bearer.create_session()
    await bearer.aclose()
    assert err.value.status == 401


def _check(events: list[ServerEvent], reply: str) -> None:
    ids = [e.id for e in events]
    assert ids == sorted(set(ids)), "ids strictly increase: nothing repeated"
    deltas = "".join(e.event.delta for e in events if isinstance(e.event, MessageDelta))
    assert deltas == reply, "the deltas make the whole answer: nothing lost"
    assert isinstance(events[-1].event, TaskCompleted)


async def test_stream_resumes_after_the_connection_is_cut_mid_answer(aiohttp_server: Any, tmp_path: Path) -> None:
    # Paced (300 tokens/s, 60 tokens): the answer goes on while the client is away.
    cfg = make_config(tmp_path / "data", simulated={"tokens_per_second": 300, "reply_tokens": 60})
    server = await aiohttp_server(make_app(cfg))
    proxy = _Proxy(server.port)
    port = await proxy.start()
    async with Client(f"http://127.0.0.1:{port}", api_key=TEST_KEY) as c:
        c.use_session((await c.create_session()).id)
        got: list[ServerEvent] = []
        stream = c.stream("tell me")
        async for ev in stream:
            got.append(ev)
            if sum(isinstance(e.event, MessageDelta) for e in got) == 5:
                proxy.cut()  # the network drops under the client, mid-answer
                break_at = ev.id
                break
        async for ev in stream:
            got.append(ev)
        assert stream.reconnects == 1
        assert proxy.connections >= 2
        final = (await c.messages()).items[-1]
        assert final.status == "completed" and len(final.content.split()) == 60
        _check(got, final.content)
        assert any(e.id > break_at for e in got)
    await proxy.aclose()


async def test_client_side_drop_resumes_by_id_and_follows_the_session(api: ClientMaker) -> None:
    c = await api(simulated={"tokens_per_second": 300, "reply_tokens": 40})
    c.use_session((await c.create_session()).id)
    events = c.events(last_event_id=0)
    first = asyncio.ensure_future(c.send("one"))
    got: list[ServerEvent] = []
    async for ev in events:
        got.append(ev)
        if len(got) == 4:
            events.drop_connection()  # the client hangs up by itself
        if isinstance(ev.event, TaskCompleted):
            break
    await first
    assert events.reconnects == 1
    _check(got, (await c.messages()).items[-1].content)
    # The same iterator goes on with the next task, over a new connection.
    second = asyncio.ensure_future(c.send("two"))
    more: list[ServerEvent] = []
    async for ev in events:
        more.append(ev)
        if isinstance(ev.event, TaskCompleted):
            break
    await second
    await events.aclose()
    assert more[0].id > got[-1].id
    _check(more, (await c.messages()).items[-1].content)


async def test_a_repeated_event_id_is_refused(aiohttp_server: Any) -> None:
    # A server that breaks the contract (not sessiond): the client must not pass the repeat on.
    async def bad_stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        frame = b'id: 5\nevent: task.completed\ndata: {"type":"task.completed","task_id":"t"}\n\n'
        await resp.write(frame + frame)
        return resp

    app = web.Application()
    app.router.add_get("/v1/sessions/{sid}/stream", bad_stream)
    server = await aiohttp_server(app)
    async with Client(str(server.make_url("")), api_key="k") as c:
        seen: list[int] = []
        with pytest.raises(StreamProtocolError, match="ids must increase"):
            async for ev in c.events(session="ses_x"):
                seen.append(ev.id)
    assert seen == [5]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
async def test_events_ride_out_a_server_restart(tmp_path: Path) -> None:
    """The server goes away and comes back on the same port a second or two later: the iterator
    backs off from its first refused connection instead of spending every attempt at once."""
    from tests.conftest import ServerProcess

    port = _free_port()
    data = tmp_path / "data"
    first = ServerProcess(data, args=["--port", str(port)])
    second = ServerProcess(data, args=["--port", str(port)])
    try:
        url = await asyncio.to_thread(first.start)
        async with Client(url, api_key=TEST_KEY) as c, Client(url, api_key=TEST_KEY) as sender:
            sid = (await c.create_session()).id
            sender.use_session(sid)
            await sender.send("before")
            events = c.events(session=sid, last_event_id=0)
            seen: list[ServerEvent] = []
            async for ev in events:
                seen.append(ev)
                if isinstance(ev.event, TaskCompleted):
                    break

            async def rest() -> None:
                async for ev in events:
                    seen.append(ev)
                    if isinstance(ev.event, TaskCompleted):
                        return

            # The iterator is reading when the server goes: it reconnects while nothing listens
            # (a second or two, the time a new process takes to listen) and must not give up.
            reading = asyncio.ensure_future(rest())
            await asyncio.to_thread(first.terminate)
            # A second reader starts while the server is down, before any retry: has reached it.
            before = seen[-1].id
            fresh = c.events(session=sid, last_event_id=before)
            fresh_first = asyncio.ensure_future(fresh.__anext__())
            assert await asyncio.to_thread(second.start) == url
            assert not reading.done() and not fresh_first.done(), "still trying, not raised"
            await sender.send("after")
            await reading
            assert (await fresh_first).id == next(e.id for e in seen if e.id > before)
            assert fresh.reconnects >= 1
            await fresh.aclose()
            assert events.reconnects >= 1
            ids = [e.id for e in seen]
            assert ids == sorted(set(ids)), "nothing repeated across the restart"
            assert sum(isinstance(e.event, TaskCompleted) for e in seen) == 2
    finally:
        first.stop()
        second.stop()


async def test_a_503_on_reconnect_is_waited_out_as_retry_after_says(aiohttp_server: Any, tmp_path: Path) -> None:
    """Overloaded (every stream slot taken): the reconnect is refused with 503 and Retry-After;
    the iterator waits that long and goes on, instead of raising the 503."""
    import time

    cfg = make_config(tmp_path / "data", admission={"max_open_streams": 1, "retry_after_seconds": 1})
    server = await aiohttp_server(make_app(cfg))
    url = str(server.make_url(""))
    async with Client(url, api_key=TEST_KEY) as c, Client(url, api_key=TEST_KEY) as other:
        sid = (await c.create_session()).id
        other.use_session(sid)
        await other.send("one")
        holder = other.events(last_event_id=0)  # takes the only stream slot
        await holder.__anext__()
        events = c.events(session=sid, last_event_id=0)
        started = time.monotonic()
        nxt = asyncio.ensure_future(events.__anext__())
        # Refused once (the slot is held): then the holder lets go, and the retry gets in.
        done, _ = await asyncio.wait({nxt}, timeout=0.5)
        assert not done, "the first attempt was refused, and the iterator is waiting, not raising"
        await holder.aclose()
        first = await nxt
        assert first.id == 1
        assert time.monotonic() - started >= 1.0, "it waited the Retry-After the server gave"
        assert events.reconnects == 1
        await events.aclose()


async def test_refused_connections_back_off_from_the_first(tmp_path: Path) -> None:
    """Nothing listens: each attempt waits longer than the last, from the first failure on."""
    import time

    async with Client(f"http://127.0.0.1:{_free_port()}", api_key=TEST_KEY, max_reconnects=3) as c:
        events = c.events(session="ses_nowhere", last_event_id=0)
        started = time.monotonic()
        with pytest.raises(aiohttp.ClientConnectionError):
            await events.__anext__()
        # 0.5 + 1 + 2 s of back-off between four attempts.
        assert time.monotonic() - started >= 3.4
        assert events.reconnects == 3
