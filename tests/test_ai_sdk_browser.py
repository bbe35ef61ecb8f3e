"""@ai-sdk/react's useChat with ``resume: true`` in Debian's Chromium against a real sessiond:
reload mid-answer and the answer goes on, nothing lost or doubled.

The page (tests/js/usechat/app.jsx) is bundled with esbuild from the packages of tests/js, and
served with sessiond's routes behind one origin, as a frontend's own server would serve it.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.node import JS_DIR, base_url, require_node
from tests.web_browser import chromium, servers

pytestmark = pytest.mark.slow

_PAGE = b"""<!doctype html><html><head><meta charset="utf-8"><title>useChat</title></head>
<body><div id="root"></div><script src="/app.js"></script></body></html>"""

# What the browser may send on to sessiond, and what comes back.
_UP = ("authorization", "content-type", "accept", "last-event-id")
_DOWN = ("content-type", "cache-control", "x-accel-buffering", "x-vercel-ai-ui-message-stream")


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    require_node()
    out = tmp_path / "app.js"
    subprocess.run(
        [str(JS_DIR / "node_modules" / ".bin" / "esbuild"), "usechat/app.jsx", "--bundle", f"--outfile={out}",
         "--jsx=automatic", "--define:process.env.NODE_ENV=\"production\"", "--log-level=warning"],
        cwd=JS_DIR, check=True, capture_output=True,
    )
    return out


@asynccontextmanager
async def frontend(bundle: Path, backend: str, seen: list[tuple[str, str, int]]) -> AsyncIterator[str]:
    """The page and its script, and /v1 passed through to sessiond, streams unbuffered;
    ``seen`` gets (method, path, status) of every call passed on."""
    http = aiohttp.ClientSession()

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=_PAGE, content_type="text/html")

    async def script(request: web.Request) -> web.FileResponse:
        return web.FileResponse(bundle)

    async def proxy(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() in _UP}
        async with http.request(request.method, backend + request.path_qs, headers=headers,
                                data=await request.read()) as up:
            seen.append((request.method, request.path, up.status))
            resp = web.StreamResponse(status=up.status,
                                      headers={k: v for k, v in up.headers.items() if k.lower() in _DOWN})
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            return resp

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/app.js", script)
    app.router.add_route("*", "/v1/{tail:.*}", proxy)
    server = TestServer(app)
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()
        await http.close()


_ASSISTANT = "#messages li[data-role=assistant]"


async def test_use_chat_resumes_after_a_reload_mid_answer(bundle: Path, tmp_path: Path) -> None:
    async with servers(tmp_path / "data") as start, chromium() as browser:
        sessiond = await start(simulated={"tokens_per_second": 40, "reply_tokens": 120})
        s = await (await sessiond.post("/v1/sessions", json={"with_token": True})).json()
        seen: list[tuple[str, str, int]] = []
        async with frontend(bundle, base_url(sessiond), seen) as url:
            context = await browser.new_context()
            page = await context.new_page()
            await page.goto(f"{url}/#session={s['id']}&token={s['access_token']}")
            await page.fill("#input", "tell me everything")
            await page.click("#send")
            # Some of the answer is on the screen, most of it is still to come.
            await page.wait_for_function(
                f"() => (document.querySelector('{_ASSISTANT}')?.textContent || '').split(' ').length >= 10")
            before = await page.text_content(_ASSISTANT) or ""
            assert len(before.split()) < 120
            await page.reload()
            # useChat({resume: true}) reconnects on mount and the answer goes on to its end.
            await page.wait_for_function(
                f"() => (document.querySelector('{_ASSISTANT}')?.textContent || '').split(' ').length >= 120"
                " && document.querySelector('main')?.dataset.status === 'ready'", timeout=30_000)
            shown: list[Any] = await page.eval_on_selector_all(
                "#messages li", "els => els.map(e => [e.dataset.role, e.dataset.id, e.textContent])")
            stored = (await (await sessiond.get(f"/v1/sessions/{s['id']}/messages")).json())["items"]
            # The rest came by resuming the running task (not by reloading a finished answer).
            assert ("GET", f"/v1/ai-sdk/chat/{s['id']}/stream", 200) in seen
            # One user message, one answer: sessiond's ids, sessiond's text, whole.
            assert [(r, i) for r, i, _ in shown] == [(m["role"], m["id"]) for m in stored]
            assert shown[1][2] == stored[1]["content"]
            assert len(shown[1][2].split()) == 120 and shown[1][2].startswith(before)
            await context.close()
