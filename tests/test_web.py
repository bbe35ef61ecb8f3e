"""The chat page at GET /, used the way people use it: in headless Chromium, against the real server.

The model is the simulated one, paced (30 tokens a second) so that an answer is still being
written while the page is reloaded, stopped or watched from a second tab. Every wait is one of
Playwright's auto-waiting expectations: nothing sleeps.

The tests of this module run in one event loop and share one Chromium; each test has a browser
context (storage, tabs) and servers of its own.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient
from playwright.async_api import Browser, BrowserContext, FilePayload, Locator, Page, Request, expect

from tests.conftest import ROOT, TEST_KEY, new_session
from tests.web_browser import CuttingProxy, ServerFactory, chromium, servers

ARTIFACTS = ROOT / "test-artifacts"
PACED = {"tokens_per_second": 30, "reply_tokens": 60}
# Long enough that a reload, a stop or a second tab lands in the middle of the answer.
SLOW = {"tokens_per_second": 30, "reply_tokens": 120}
# For tests about what comes after answers: still streamed, just quicker.
BRISK = {"tokens_per_second": 200, "reply_tokens": 40}
TIMEOUT_MS = 20_000

expect.set_options(timeout=TIMEOUT_MS)
pytestmark = pytest.mark.asyncio(loop_scope="module")

Client = TestClient[Any, Any]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_chromium() -> AsyncIterator[Browser]:
    async with chromium() as browser:
        yield browser


class Tabs:
    """The tabs of one test's browser context, and what their pages logged as errors."""

    def __init__(self, context: BrowserContext) -> None:
        self.context = context
        self.errors: dict[Page, list[str]] = {}

    async def open(self) -> Page:
        page = await self.context.new_page()
        errors = self.errors[page] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        # Console errors too; a refused request's own log line is not the page's fault.
        page.on(
            "console",
            lambda msg: errors.append(msg.text)
            if msg.type == "error" and not msg.text.startswith("Failed to load resource")
            else None,
        )
        page.set_default_timeout(TIMEOUT_MS)
        return page

    def assert_no_js_errors(self) -> None:
        logged = {page.url: errors for page, errors in self.errors.items() if errors}
        assert logged == {}, f"the page logged errors: {logged}"


@pytest_asyncio.fixture(loop_scope="module")
async def tabs(shared_chromium: Browser) -> AsyncIterator[Tabs]:
    context = await shared_chromium.new_context(
        viewport={"width": 1360, "height": 860}, locale="en-GB", timezone_id="UTC"
    )
    try:
        yield Tabs(context)
    finally:
        await context.close()


@pytest_asyncio.fixture(loop_scope="module")
async def make_client(tmp_path: Path) -> AsyncIterator[ServerFactory]:
    """Like conftest's ``make_client``, in this module's loop (the one the browser lives in)."""
    async with servers(tmp_path / "data") as start:
        yield start


async def open_chat(page: Page, client: Client, session_id: str | None = None, *, base: str | None = None) -> None:
    """Open the page (on a session if given) and connect with the API key, as a person would."""
    url = (base or str(client.make_url("/"))) + (f"#{session_id}" if session_id else "")
    await page.goto(url)
    await page.get_by_label("API key").fill(TEST_KEY)
    await page.get_by_role("button", name="Connect").click()
    if session_id:
        await expect(page.locator("#session-meta")).to_have_text(session_id)
        await expect(page.locator("#connection")).to_have_text("Live")


async def send(page: Page, text: str) -> None:
    box = page.get_by_label("Message", exact=True)
    await box.fill(text)
    await box.press("Enter")


def messages(page: Page) -> Locator:
    return page.locator("#messages > li")


def answer(page: Page, index: int = -1) -> Locator:
    found = page.locator("#messages > li[data-role=assistant]")
    return found.last if index == -1 else found.nth(index)


async def wait_done(page: Page, count: int) -> None:
    """Until the page shows ``count`` finished answers and nothing running."""
    await expect(page.locator("#messages > li[data-role=assistant][data-status=completed]")).to_have_count(count)
    await expect(page.locator("#messages > li[data-status=running]")).to_have_count(0)


async def shown(page: Page) -> list[tuple[str, str, str]]:
    """(role, status, text) of every message on the page, text exactly as displayed."""
    rows: list[tuple[str, str, str]] = await page.locator("#messages > li").evaluate_all(
        "items => items.map(li => [li.dataset.role, li.dataset.status, li.querySelector('.content').textContent])"
    )
    return [tuple(r) for r in rows]  # type: ignore[misc]


async def server_path(client: Client, session_id: str) -> list[tuple[str, str, str]]:
    resp = await client.get(f"/v1/sessions/{session_id}/messages")
    assert resp.status == 200
    return [(m["role"], m["status"], m["content"]) for m in (await resp.json())["items"]]


async def screenshot(page: Page, name: str = "chat-page.png") -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    await page.screenshot(path=str(path))
    return path


# -- serving the page ----------------------------------------------------------------------


async def test_page_and_its_files_are_served_without_credentials(make_client: ServerFactory) -> None:
    client = await make_client()
    async with aiohttp.ClientSession() as anonymous:  # no API key, no token
        page = await anonymous.get(client.make_url("/"))
        assert page.status == 200
        html = await page.text()
    assert page.headers["Content-Type"].startswith("text/html")
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert page.headers["Referrer-Policy"] == "no-referrer"  # stream URLs carry a token
    for asset in ("web/app.js", "web/style.css", "web/icon.svg"):
        assert asset in html
        resp = await client.get("/" + asset)
        assert resp.status == 200, asset
    js = await client.get("/web/app.js")
    assert js.headers["Content-Type"].startswith("text/javascript")
    assert not re.search(r"https?://", await js.text()), "the page must not fetch anything from elsewhere"
    for missing in ("/web/nope.js", "/web/..%2Fapp.py", "/web/%2e%2e%2fconfig.toml"):
        resp = await client.get(missing)
        assert resp.status == 404, missing
        assert resp.headers["Content-Type"].startswith("application/problem+json")


# -- in the browser --------------------------------------------------------------------------


async def test_send_and_watch_the_answer_stream_in_with_the_session_token_only(
    make_client: ServerFactory, tabs: Tabs
) -> None:
    client = await make_client(simulated=PACED)
    page = await tabs.open()
    requests: list[Request] = []
    page.on("request", lambda r: requests.append(r))
    await open_chat(page, client)

    await page.get_by_label("Title of the new session").fill("Trip to Lisbon")
    await page.get_by_role("button", name="New session").click()
    await expect(page.get_by_role("heading", name="Trip to Lisbon")).to_be_visible()
    await expect(page.locator("#connection")).to_have_text("Live")
    session_id = await page.locator("#session-meta").inner_text()

    await send(page, "Plan three days in Lisbon")
    await expect(messages(page).first).to_have_text(re.compile("Plan three days in Lisbon"))
    # Mid-answer: running, some text already there, Stop offered and Send held back.
    await expect(answer(page)).to_have_attribute("data-status", "running")
    await expect(answer(page).locator(".content")).to_have_text(re.compile(r"\S"))
    await expect(page.get_by_role("button", name="Stop")).to_be_visible()
    await expect(page.get_by_role("button", name="Send")).to_be_disabled()
    partial = await answer(page).locator(".content").text_content()

    await wait_done(page, 1)
    truth = await server_path(client, session_id)
    assert await shown(page) == truth
    assert truth[1][2].startswith(partial or "") and len(truth[1][2]) > len(partial or "")
    await expect(page.get_by_role("button", name="Send")).to_be_enabled()

    # Token usage: per answer and for the session, as the server counts it.
    body = await (await client.get(f"/v1/sessions/{session_id}/messages")).json()
    usage = body["usage"]
    assert usage["total"] > 0
    await expect(page.locator("#usage-total")).to_have_text(f"{usage['total']:,}")
    await expect(page.locator("#usage-completion")).to_have_text(f"{usage['completion']:,}")
    reply_usage = body["items"][1]["usage"]
    await expect(answer(page).locator(".msg-usage")).to_contain_text(f"{reply_usage['total']:,} tokens")

    # The API key listed, created and minted; the conversation went with the session token.
    base = f"/v1/sessions/{session_id}"
    conversation = [r for r in requests if base in r.url and not r.url.endswith("/tokens")]
    assert conversation, "the page made no call in the session"
    for r in conversation:
        headers = await r.all_headers()
        assert "x-api-key" not in headers, f"{r.method} {r.url} carried the API key"
        if "/stream?" in r.url:
            assert "token=eyJ" in r.url
        else:
            assert headers.get("authorization", "").startswith("Bearer eyJ"), f"{r.method} {r.url}"
    minted = [r for r in requests if r.url.endswith(f"{base}/tokens")]
    assert len(minted) == 1 and "x-api-key" in await minted[0].all_headers()
    tabs.assert_no_js_errors()


async def test_reload_mid_answer_resumes_it_with_nothing_lost_or_doubled(
    make_client: ServerFactory, tabs: Tabs
) -> None:
    client = await make_client(simulated=SLOW)
    session = await new_session(client, title="Reload me")
    page = await tabs.open()
    await open_chat(page, client, session["id"])

    await send(page, "Tell me a long story")
    await expect(answer(page)).to_have_attribute("data-status", "running")
    await expect(answer(page).locator(".content")).to_have_text(re.compile(r"\S+ \S+"))
    before = await answer(page).locator(".content").text_content() or ""

    await page.reload()
    # The same tab keeps its API key and session token: no new sign-in, the answer goes on.
    await expect(page.locator("#connection")).to_have_text("Live")
    await expect(answer(page)).to_have_attribute("data-status", "running")
    await expect(answer(page).locator(".content")).to_have_text(re.compile("^" + re.escape(before)))

    await wait_done(page, 1)
    truth = await server_path(client, session["id"])
    assert truth[1][1] == "completed"
    assert await shown(page) == truth  # exactly the server's text: nothing lost, nothing doubled

    # A reload after the end shows the same, though the stream replays the last task's events.
    await page.reload()
    await expect(page.locator("#connection")).to_have_text("Live")
    await wait_done(page, 1)
    assert await shown(page) == truth
    tabs.assert_no_js_errors()



async def test_a_tool_call_waits_for_approve_or_deny_on_the_page(make_client: ServerFactory, tabs: Tabs) -> None:
    client = await make_client(tools={"approval": {"calculator": "always"}})
    session = await new_session(client, tools=["calculator"])
    page = await tabs.open()
    await open_chat(page, client, session["id"])

    await send(page, '/tool calculator {"expression": "6 * 7"}')
    approve = page.get_by_role("button", name="Approve")
    await expect(approve).to_be_visible()
    await expect(page.get_by_role("group", name="Approve calculator?")).to_contain_text('"6 * 7"')
    await expect(answer(page)).to_have_attribute("data-status", "running")
    # A reload while it waits shows the pending call again (the stream replays it).
    await page.reload()
    await expect(page.locator("#connection")).to_have_text("Live")
    await approve.click()
    await wait_done(page, 1)
    await expect(approve).to_have_count(0)
    await expect(answer(page).locator(".content")).to_have_text("calculator: 42")
    await expect(answer(page).locator(".tool-lines")).to_contain_text("Tool result: 42")

    await send(page, '/tool calculator {"expression": "1 + 1"}')
    await page.get_by_role("button", name="Deny").click()
    await wait_done(page, 2)
    await expect(answer(page).locator(".content")).to_contain_text("denied")
    assert await shown(page) == await server_path(client, session["id"])
    tabs.assert_no_js_errors()


async def test_a_dropped_stream_resumes_by_last_event_id(make_client: ServerFactory, tabs: Tabs) -> None:
    client = await make_client(simulated=SLOW, streams={"retry_ms": 100})
    assert client.port is not None
    proxy = CuttingProxy(client.port)
    base = await proxy.start()
    try:
        session = await new_session(client)
        page = await tabs.open()
        await open_chat(page, client, session["id"], base=base)  # through the proxy

        await send(page, "Keep talking")
        content = answer(page).locator(".content")
        await expect(content).to_have_text(re.compile(r"\S"))
        # The network drops: the browser reconnects by itself, sending Last-Event-ID.
        async with page.expect_request(lambda r: "/stream?" in r.url) as reconnection:
            assert proxy.cut() > 0
        headers = await (await reconnection.value).all_headers()
        assert int(headers["last-event-id"]) > 0
        text = await content.text_content() or ""
        await expect(content).not_to_have_text(text)  # and the answer goes on

        # Dropped again, and the reconnection is turned away: the page opens a new stream
        # itself, resuming after the last id it applied.
        proxy.refuse_streams = 1
        async with page.expect_request(lambda r: "/stream?" in r.url and "last_event_id=" in r.url) as reopened:
            assert proxy.cut() > 0
        resumed = re.search(r"last_event_id=(\d+)", (await reopened.value).url)
        assert resumed is not None and int(resumed.group(1)) > 0
        assert proxy.refused == 1
        await expect(page.locator("#connection")).to_have_text("Live")

        await wait_done(page, 1)
        assert await shown(page) == await server_path(client, session["id"])  # nothing lost or doubled
        tabs.assert_no_js_errors()
    finally:
        await proxy.aclose()

async def test_stop_keeps_the_partial_answer(make_client: ServerFactory, tabs: Tabs) -> None:
    client = await make_client(simulated=SLOW)
    session = await new_session(client)
    page = await tabs.open()
    await open_chat(page, client, session["id"])

    await send(page, "Count to a thousand")
    await expect(answer(page).locator(".content")).to_have_text(re.compile(r"\S"))
    await page.get_by_role("button", name="Stop").click()
    await expect(answer(page)).to_have_attribute("data-status", "cancelled")
    await expect(answer(page).locator(".status")).to_have_text("stopped")
    await expect(page.get_by_role("button", name="Stop")).to_be_hidden()

    truth = await server_path(client, session["id"])
    assert truth[1][1] == "cancelled" and truth[1][2]
    assert await shown(page) == truth
    tabs.assert_no_js_errors()


async def test_edit_regenerate_and_flip_between_versions(make_client: ServerFactory, tabs: Tabs) -> None:
    client = await make_client(simulated=BRISK)
    session = await new_session(client, title="Versions")
    sid = session["id"]
    page = await tabs.open()
    await open_chat(page, client, sid)

    await send(page, "Name a colour")
    await wait_done(page, 1)
    first = await server_path(client, sid)

    # Edit the question: a second version of it, answered anew.
    question = messages(page).first
    await question.get_by_role("button", name="Edit").click()
    await page.get_by_label("Edit your message").fill("Name a fruit")
    await page.get_by_role("button", name="Save and send").click()
    await expect(question.locator(".content")).to_have_text("Name a fruit")
    await expect(question.locator(".version-label")).to_have_text("2/2")
    await wait_done(page, 1)
    second = await server_path(client, sid)
    assert second[0][2] == "Name a fruit" and await shown(page) == second

    # Flip back to the first version: its own answer comes back with it.
    await question.get_by_role("button", name="Previous version").click()
    await expect(question.locator(".version-label")).to_have_text("1/2")
    await expect(question.locator(".content")).to_have_text("Name a colour")
    assert await shown(page) == first == await server_path(client, sid)
    await expect(question.get_by_role("button", name="Previous version")).to_be_disabled()

    await question.get_by_role("button", name="Next version").click()
    await expect(question.locator(".version-label")).to_have_text("2/2")
    assert await shown(page) == second

    # Regenerate the answer: the answer gets versions of its own.
    await answer(page).get_by_role("button", name="Regenerate").click()
    await expect(answer(page).locator(".version-label")).to_have_text("2/2")
    await wait_done(page, 1)
    await expect(answer(page).locator(".version-label")).to_have_text("2/2")
    regenerated = await server_path(client, sid)
    assert await shown(page) == regenerated
    await answer(page).get_by_role("button", name="Previous version").click()
    await expect(answer(page).locator(".version-label")).to_have_text("1/2")
    assert await shown(page) == second == await server_path(client, sid)
    await screenshot(page, "chat-page-versions.png")
    tabs.assert_no_js_errors()


async def test_restore_a_checkpoint_with_a_hint(make_client: ServerFactory, tabs: Tabs) -> None:
    client = await make_client(simulated=BRISK)
    session = await new_session(client, title="Checkpoints")
    sid = session["id"]
    page = await tabs.open()
    await open_chat(page, client, sid)

    await send(page, "First question")
    await wait_done(page, 1)
    await send(page, "Second question")
    await wait_done(page, 2)
    before = await server_path(client, sid)
    cps = (await (await client.get(f"/v1/sessions/{sid}/checkpoints")).json())["items"]
    assert len(cps) == 2
    listed = page.locator("#checkpoints > li")
    await expect(listed).to_have_count(2)
    await expect(listed.first).to_contain_text("current")  # the newest, where the conversation is

    # Back to after the first answer, with a hint for a new answer from there.
    await page.get_by_label("Hint for the answer after a restore (optional)").fill("Answer in French")
    older = page.locator(f"#checkpoints > li[data-id='{cps[0]['id']}']")
    await older.get_by_role("button", name=re.compile("^Restore")).click()
    await expect(messages(page)).to_have_count(4)
    await expect(messages(page).nth(2).locator(".content")).to_have_text("Answer in French")
    await wait_done(page, 2)
    truth = await server_path(client, sid)
    assert truth[:2] == before[:2] and truth[2] == ("user", "completed", "Answer in French")
    assert "Second question" not in [t[2] for t in truth]
    assert await shown(page) == truth
    await expect(page.get_by_label("Hint for the answer after a restore (optional)")).to_have_value("")

    # Without a hint only the place moves: back to the first answer, nothing new is written.
    await expect(listed).to_have_count(3)
    await older.get_by_role("button", name=re.compile("^Restore")).click()
    await expect(messages(page)).to_have_count(2)
    truth = await server_path(client, sid)
    assert len(truth) == 2 and await shown(page) == truth
    await expect(older).to_contain_text("current")
    tabs.assert_no_js_errors()


async def test_two_tabs_on_one_session_both_stream(make_client: ServerFactory, tabs: Tabs) -> None:
    client = await make_client(simulated=PACED)
    session = await new_session(client, title="Shared")
    sid = session["id"]
    one, two = await tabs.open(), await tabs.open()
    await open_chat(one, client, sid)
    await open_chat(two, client, sid)  # a tab of its own: its own key entry and its own token

    await send(one, "Sent from the first tab")
    # The second tab sees the question appear and the answer being written, live.
    await expect(messages(two).first.locator(".content")).to_have_text("Sent from the first tab")
    await expect(answer(two)).to_have_attribute("data-status", "running")
    await expect(answer(two).locator(".content")).to_have_text(re.compile(r"\S"))
    await expect(two.get_by_role("button", name="Send")).to_be_disabled()
    await wait_done(one, 1)
    await wait_done(two, 1)
    truth = await server_path(client, sid)
    assert await shown(one) == truth == await shown(two)

    await send(two, "And this from the second")
    await expect(messages(one).nth(2).locator(".content")).to_have_text("And this from the second")
    await wait_done(two, 2)
    await wait_done(one, 2)
    truth = await server_path(client, sid)
    assert await shown(one) == truth == await shown(two)
    tabs.assert_no_js_errors()


async def test_upload_a_document_and_see_the_whole_page(make_client: ServerFactory, tabs: Tabs) -> None:
    client = await make_client(simulated=BRISK)
    routes = {r.resource.canonical for r in client.app.router.routes() if r.resource is not None}
    if "/v1/sessions/{session_id}/upload" not in routes:
        pytest.skip("this server has no POST /v1/sessions/{id}/upload route")
    session = await new_session(client, title="Trip to Lisbon")
    sid = session["id"]
    page = await tabs.open()
    await open_chat(page, client, sid)

    await page.locator("#upload-input").set_input_files(
        files=[FilePayload(name="itinerary.md", mimeType="text/markdown", buffer=b"# Lisbon\n\nDay 1: Alfama.\n")]
    )
    await expect(page.locator("#documents")).to_contain_text("itinerary.md")
    linked = await (await client.get(f"/v1/sessions/{sid}/documents")).json()
    assert [d["name"] for d in linked["items"]] == ["itinerary.md"]

    # A conversation worth a picture: two turns, the first question edited once.
    await send(page, "Plan three days in Lisbon")
    await wait_done(page, 1)
    await messages(page).first.get_by_role("button", name="Edit").click()
    await page.get_by_label("Edit your message").fill("Plan three days in Lisbon, on foot")
    await page.get_by_role("button", name="Save and send").click()
    await expect(messages(page).first.locator(".version-label")).to_have_text("2/2")
    await wait_done(page, 1)
    await send(page, "Where should we eat on day two?")
    await wait_done(page, 2)
    assert await shown(page) == await server_path(client, sid)
    shot = await screenshot(page)
    assert shot.stat().st_size > 10_000
    tabs.assert_no_js_errors()


async def test_tokens_are_renewed_before_they_expire_and_after_a_401(
    make_client: ServerFactory, tabs: Tabs
) -> None:
    client = await make_client(simulated=BRISK, tokens={"access_ttl_seconds": 1})
    session = await new_session(client)
    sid = session["id"]
    page = await tabs.open()
    await open_chat(page, client, sid)

    # Renewed ahead of expiry, over and over, while the stream stays up.
    await expect(page.locator("#token-info")).to_have_attribute("data-refreshes", re.compile(r"^([3-9]|\d\d+)$"))
    await expect(page.locator("#connection")).to_have_text("Live")
    await send(page, "Still there?")
    await wait_done(page, 1)

    # A token the server refuses (here: spoiled in storage) is renewed once, then the call succeeds.
    await page.evaluate(
        """sid => {
            const key = `sessiond.tokens.${sid}`;
            const pair = JSON.parse(sessionStorage.getItem(key));
            pair.access_token = pair.access_token.slice(0, -4) + "AAAA";
            pair.expires_at = Date.now() + 3600 * 1000;
            sessionStorage.setItem(key, JSON.stringify(pair));
        }""",
        sid,
    )
    refused: list[int] = []
    page.on("response", lambda r: refused.append(r.status) if r.status == 401 else None)
    await page.reload()
    await expect(page.locator("#connection")).to_have_text("Live")
    await wait_done(page, 1)
    assert await shown(page) == await server_path(client, sid)
    assert refused, "the spoiled token was not refused"
    await send(page, "And now?")
    await wait_done(page, 2)
    tabs.assert_no_js_errors()

