"""CORS: a frontend on another origin can use sessiond when ``[server] cors_origins`` names it,
and only then: preflights answered before auth, the headers on every answer, streams included."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from server.app import make_app
from server.config import ConfigError
from tests.conftest import HEADERS, TEST_KEY, make_config
from tests.sse import read_until
from tests.web_browser import chromium

APP = "http://app.example:5173"
REQUESTED = "authorization, content-type, if-match, last-event-id, idempotency-key, x-api-key"


async def _server(aiohttp_client: Any, tmp_path: Path, origins: list[str]) -> TestClient[Any, Any]:
    cfg = make_config(tmp_path / "data", server={"data_dir": str(tmp_path / "data"), "cors_origins": origins})
    return await aiohttp_client(make_app(cfg))  # type: ignore[no-any-return]


def _preflight(method: str = "POST", origin: str = APP) -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": REQUESTED}


async def test_no_cors_unless_configured(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await _server(aiohttp_client, tmp_path, [])
    resp = await client.options("/v1/sessions", headers=_preflight())
    assert resp.status == 401  # as before: no origin is trusted
    assert "Access-Control-Allow-Origin" not in resp.headers
    resp = await client.get("/v1/sessions", headers={**HEADERS, "Origin": APP})
    assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers


async def test_a_preflight_from_an_allowed_origin_is_answered_before_auth(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await _server(aiohttp_client, tmp_path, [APP])
    resp = await client.options("/v1/sessions/ses_x/messages", headers=_preflight())
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == APP
    allowed = {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
    assert set(REQUESTED.split(", ")) <= allowed
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    assert "Origin" in resp.headers.getall("Vary")
    # Another origin gets nothing that would let its page read an answer.
    other = await client.options("/v1/sessions", headers=_preflight(origin="http://evil.example"))
    assert other.status == 401 and "Access-Control-Allow-Origin" not in other.headers
    assert "Origin" in other.headers.getall("Vary")


async def test_every_answer_carries_the_headers_streams_and_errors_too(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await _server(aiohttp_client, tmp_path, [APP, "https://chat.example"])
    origin = {"Origin": APP}
    created = await client.post("/v1/sessions", json={}, headers={**HEADERS, **origin})
    assert created.status == 201
    assert created.headers["Access-Control-Allow-Origin"] == APP
    exposed = {h.strip() for h in created.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"ETag", "Retry-After"} <= exposed
    sid = (await created.json())["id"]
    refused = await client.get("/v1/sessions", headers={"X-API-Key": "sk_wrong_wrong", **origin})
    assert refused.status == 401 and refused.headers["Access-Control-Allow-Origin"] == APP
    token = (await (await client.post(f"/v1/sessions/{sid}/tokens", headers=HEADERS)).json())["access_token"]
    streamed = await client.post(
        f"/v1/sessions/{sid}/messages", json={"content": "hi", "stream": True},
        headers={"Authorization": f"Bearer {token}", "Origin": "https://chat.example"},
    )
    assert streamed.headers["Access-Control-Allow-Origin"] == "https://chat.example"
    await read_until(streamed, "task.completed")
    stream = await client.get(f"/v1/sessions/{sid}/stream?token={token}&last_event_id=0", headers=origin)
    assert stream.status == 200 and stream.headers["Access-Control-Allow-Origin"] == APP
    stream.close()


@pytest.mark.parametrize("bad", ["*", "http://app.example/", "http://app.example/path", "app.example"])
def test_an_origin_must_be_exact(tmp_path: Path, bad: str) -> None:
    if bad == "http://app.example/":
        make_app(make_config(tmp_path / "data", server={"cors_origins": [bad]}))  # a trailing slash is forgiven
        return
    with pytest.raises(ConfigError, match="is not an origin"):
        make_app(make_config(tmp_path / "data", server={"cors_origins": [bad]}))


# -- in Chromium, from a page on another port ----------------------------------------------

PAGE = """<!doctype html><meta charset=utf-8><title>elsewhere</title><script>
async function run(base, key) {
  const h = {"X-API-Key": key, "Content-Type": "application/json"};
  const s = await (await fetch(base + "/v1/sessions", {method: "POST", headers: h, body: "{}"})).json();
  const t = await (await fetch(base + `/v1/sessions/${s.id}/tokens`, {method: "POST", headers: h})).json();
  const seen = [];
  const done = new Promise((resolve, reject) => {
    const es = new EventSource(base + `/v1/sessions/${s.id}/stream?token=${t.access_token}`);
    es.addEventListener("message.delta", e => seen.push(JSON.parse(e.data).delta));
    es.addEventListener("task.completed", () => { es.close(); resolve(); });
    es.onerror = () => { if (es.readyState === EventSource.CLOSED) reject(new Error("stream blocked")); };
  });
  const sent = await fetch(base + `/v1/sessions/${s.id}/messages`, {
    method: "POST", body: JSON.stringify({content: "from another origin"}),
    headers: {"Authorization": "Bearer " + t.access_token, "Content-Type": "application/json"}});
  await done;
  const got = await fetch(base + `/v1/sessions/${s.id}`, {headers: {"X-API-Key": key}});
  return {status: sent.status, etag: got.headers.get("ETag"), text: seen.join("")};
}
</script>"""


@pytest_asyncio.fixture
async def frontend() -> AsyncIterator[str]:
    async def page(_r: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


@pytest.mark.slow
async def test_a_page_on_another_origin_converses_in_chromium(tmp_path: Path, frontend: str) -> None:
    async def start(origins: list[str]) -> TestServer:
        cfg = make_config(tmp_path / "data", server={"cors_origins": origins}, simulated={"tokens_per_second": 200})
        server = TestServer(make_app(cfg), host="127.0.0.1")
        await server.start_server()
        return server

    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(frontend + "/")
        allowed = await start([frontend])
        try:
            base = str(allowed.make_url("")).rstrip("/")
            got = await page.evaluate("([b, k]) => run(b, k)", [base, TEST_KEY])
            assert got["status"] == 200
            assert got["text"].startswith("Simulated")
            assert got["etag"], "ETag is exposed to the page"
        finally:
            await allowed.close()
        closed = await start([])
        try:
            base = str(closed.make_url("")).rstrip("/")
            error = await page.evaluate("([b, k]) => run(b, k).then(() => 'ok', e => String(e))", [base, TEST_KEY])
            assert "Failed to fetch" in error, "without cors_origins the browser blocks the page"
        finally:
            await closed.close()
