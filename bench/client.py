"""The load generator's HTTP and SSE side: cheap enough to drive thousands of streams.

Reading a task stream does not decode JSON: it finds complete frames (``\\n\\n``) in each
chunk, counts them and looks for the event names it needs, so the client spends its CPU on
the socket, not on parsing. Only the reconnect scenario parses every frame's id.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from bench.procs import BENCH_KEY

__all__ = ["TERMINALS", "Api", "Frame", "TaskRead", "iter_frames", "now", "read_task", "warm_up"]

now = time.perf_counter

TERMINALS = (b"event: task.completed", b"event: task.failed", b"event: task.cancelled", b"event: task.interrupted")
_DELTA = b"event: message.delta"
_EVENT = b"\nevent: "


def _check_local(url: str) -> None:
    host = urlsplit(url).hostname or ""
    if not (host == "localhost" or host.startswith("127.") or host == "::1"):
        raise SystemExit(f"the bench only targets this machine (127.0.0.1), not {host}")


class Api:
    """One client session towards one server, with the bench's API key on every request."""

    def __init__(self, base_url: str, *, limit: int = 0) -> None:
        _check_local(base_url)
        self.base = base_url.rstrip("/")
        self.http = aiohttp.ClientSession(
            headers={"X-API-Key": BENCH_KEY},
            connector=aiohttp.TCPConnector(limit=limit, force_close=False),
            timeout=aiohttp.ClientTimeout(total=None, connect=60, sock_connect=60, sock_read=120),
        )

    async def aclose(self) -> None:
        await self.http.close()

    async def create_session(self) -> str:
        async with self.http.post(f"{self.base}/v1/sessions", json={}) as resp:
            if resp.status != 201:
                raise RuntimeError(f"create session: {resp.status} {await resp.text()}")
            data: dict[str, Any] = await resp.json()
            return str(data["id"])

    def send(self, session_id: str, content: str, *, stream: bool = True) -> Any:
        """``async with api.send(...) as resp``: the POST that starts a task."""
        return self.http.post(
            f"{self.base}/v1/sessions/{session_id}/messages", json={"content": content, "stream": stream}
        )

    def stream(self, session_id: str, last_event_id: int | None = None) -> Any:
        headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
        return self.http.get(f"{self.base}/v1/sessions/{session_id}/stream", headers=headers)

    async def metric_values(self, *names: str) -> dict[str, float]:
        """The value of each of ``names`` in the server's ``GET /metrics`` (its first sample,
        labelled or not). A name the server does not export is left out, and all of them when
        it has no metrics (off, or not sessiond) or cannot be reached."""
        try:
            async with self.http.get(f"{self.base}/metrics") as resp:
                if resp.status != 200:
                    return {}
                text = await resp.text()
        except aiohttp.ClientError:
            return {}
        wanted = set(names)
        values: dict[str, float] = {}
        for line in text.splitlines():
            sample, _, value = line.rpartition(" ")
            name = sample.partition("{")[0]
            if name in wanted and name not in values:
                values[name] = float(value)
        return values

    async def get_json(self, path: str) -> Any:
        async with self.http.get(f"{self.base}{path}") as resp:
            if resp.status != 200:
                raise RuntimeError(f"GET {path}: {resp.status} {await resp.text()}")
            return await resp.json()


class TaskRead:
    """What one task stream delivered, timed by the client's monotonic clock."""

    __slots__ = ("end", "events", "first_delta", "lag_points", "terminal")

    def __init__(self) -> None:
        self.events = 0
        self.first_delta: float | None = None
        self.end: float | None = None
        self.terminal = b""
        # For paced streams: receipt time minus the token's place in the schedule; the
        # smallest value of a stream is its zero-lag baseline (see bench/scenarios/stream.py).
        self.lag_points: list[float] = []


async def read_task(
    resp: aiohttp.ClientResponse, *, rate: float = 0.0, on_events: Any = None
) -> TaskRead:
    """Read a task's SSE stream to its terminal event (or the end of the response)."""
    out = TaskRead()
    tail = b""
    deltas = 0
    step = 1.0 / rate if rate > 0 else 0.0
    async for chunk in resp.content.iter_any():
        t = now()
        data = tail + chunk if tail else chunk
        end = data.rfind(b"\n\n")
        if end < 0:
            tail = data
            continue
        complete = data[: end + 2]
        tail = data[end + 2 :]
        n = complete.count(_EVENT) + complete.startswith(b"event: ")
        if not n:
            continue
        out.events += n
        if on_events is not None:
            on_events(t, n)
        d = complete.count(_DELTA)
        if d:
            if out.first_delta is None:
                out.first_delta = t
            if step:
                points = out.lag_points
                for _ in range(d):
                    deltas += 1
                    points.append(t - deltas * step)
        if b"event: task." in complete:
            for term in TERMINALS:
                if term in complete:
                    out.terminal = term[7:]
                    out.end = t
                    # Read the response to its end, as an HTTP client does: one let go before
                    # its last chunk cannot be reused, and the next request opens a connection.
                    await resp.content.read()
                    return out
    out.end = now()
    return out


async def warm_up(url: str, name: str) -> None:
    """One message to a server just started, read to its end, before anything is measured: what
    a first message does once per process (sessiond loads its tokenizer, both servers import
    and build what they build lazily) is then not counted in a step's rows."""
    api = Api(url)
    try:
        sid = await api.create_session()
        async with api.send(sid, "warm-up") as resp:
            if resp.status != 200:
                raise RuntimeError(f"{name}: warm-up message: {resp.status} {await resp.text()}")
            read = await read_task(resp)
        if read.terminal != b"task.completed":
            raise RuntimeError(f"{name}: warm-up message ended with {read.terminal!r}")
    finally:
        await api.aclose()


_ID_TYPE = re.compile(rb"^id: (\d+)\nevent: ([^\n]*)$", re.M)


async def iter_ids(resp: aiohttp.ClientResponse) -> AsyncIterator[list[tuple[int, bytes]]]:
    """(id, event type) of every complete event frame, one list per received chunk.

    One regular-expression pass per chunk and no JSON: the cheapest way to follow thousands of
    streams from one process.
    """
    tail = b""
    async for chunk in resp.content.iter_any():
        data = tail + chunk if tail else chunk
        end = data.rfind(b"\n\n")
        if end < 0:
            tail = data
            continue
        tail = data[end + 2 :]
        found = _ID_TYPE.findall(data, 0, end + 1)
        if found:
            yield [(int(i), t) for i, t in found]


class Frame:
    __slots__ = ("data", "id", "type")

    def __init__(self, id_: int | None, type_: str, data: bytes) -> None:
        self.id = id_
        self.type = type_
        self.data = data


async def iter_frames(resp: aiohttp.ClientResponse) -> AsyncIterator[list[Frame]]:
    """Every complete event frame, parsed, one list per received chunk."""
    tail = b""
    async for chunk in resp.content.iter_any():
        data = tail + chunk if tail else chunk
        end = data.rfind(b"\n\n")
        if end < 0:
            tail = data
            continue
        tail = data[end + 2 :]
        frames: list[Frame] = []
        for block in data[:end].split(b"\n\n"):
            id_: int | None = None
            type_ = ""
            payload = b""
            for line in block.split(b"\n"):
                if line.startswith(b"id: "):
                    id_ = int(line[4:])
                elif line.startswith(b"event: "):
                    type_ = line[7:].decode()
                elif line.startswith(b"data: "):
                    payload = line[6:]
            if type_:
                frames.append(Frame(id_, type_, payload))
        if frames:
            yield frames

