"""The chat page's share links and search box, in headless Chromium against the real server.

A share link opened in a tab with no key shows the conversation read-only (no message box, no
edit, no regenerate), fetched with no credential at all; connecting there offers "Continue as a
copy", which opens a session of one's own. The search box finds sessions by their messages,
marks the matching words (a snippet's text is shown as text, whatever it holds) and opens the
session found. Every wait is one of Playwright's expectations: nothing sleeps.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from playwright.async_api import Page, Request, expect

from tests.conftest import TEST_KEY, new_session
from tests.test_web import (
    BRISK,
    Tabs,
    make_client,
    messages,
    open_chat,
    screenshot,
    send,
    shared_chromium,
    tabs,
    wait_done,
)
from tests.web_browser import ServerFactory

__all__ = ["make_client", "shared_chromium", "tabs"]  # the fixtures, shared with test_web

pytestmark = pytest.mark.asyncio(loop_scope="module")

Client = TestClient[Any, Any]
HOSTILE = '<img src=x onerror="window.__pwned=1"> **not bold**'


async def _converse(client: Client, session_id: str, text: str) -> None:
    resp = await client.post(f"/v1/sessions/{session_id}/messages", json={"content": text})
    assert resp.status == 200, await resp.text()


async def _connect_here(page: Page) -> None:
    await page.get_by_label("API key").fill(TEST_KEY)
    await page.get_by_role("button", name="Connect").click()


async def test_a_share_link_reads_only_and_continues_as_a_copy(make_client: ServerFactory, tabs: Tabs) -> None:
    client = await make_client(simulated=BRISK)
    s = await new_session(client, title="Lisbon plans", system_prompt="SYSPROMPT-zebra", metadata={"k": "META-walrus"})
    sid = s["id"]
    await _converse(client, sid, f"Plan a day {HOSTILE}")

    # The owner makes the link from the chat page.
    owner = await tabs.open()
    await open_chat(owner, client, sid)
    await owner.get_by_role("button", name="Share").click()
    link = owner.locator("#share-url")
    await expect(link).to_have_value(re.compile(r"#share=sh_[A-Za-z0-9_-]{43}$"))
    url = await link.input_value()
    assert url.startswith(str(client.make_url("/")))

    # A stranger's tab: no key, no token. The conversation, read-only.
    stranger = await tabs.open()
    sent: list[Request] = []
    stranger.on("request", lambda r: sent.append(r))
    await stranger.goto(url)
    await expect(stranger.locator("#shared-title")).to_have_text("Lisbon plans")
    shared = stranger.locator("#shared-messages > li")
    await expect(shared).to_have_count(2)
    await expect(shared.first.locator(".content")).to_have_text(f"Plan a day {HOSTILE}")  # as text
    truth = (await (await client.get(f"/v1/sessions/{sid}/messages")).json())["items"]
    await expect(shared.nth(1)).to_have_attribute("data-id", truth[1]["id"])
    await expect(shared.nth(1).locator(".content")).to_have_text(truth[1]["content"])
    await expect(stranger.locator("#composer-input")).to_be_hidden()
    for name in ("Edit", "Regenerate", "Send", "Previous version"):
        await expect(stranger.get_by_role("button", name=name)).to_have_count(0)
    await expect(stranger.locator("#shared-messages img")).to_have_count(0)
    assert await stranger.evaluate("window.__pwned") is None
    page_text = await stranger.locator("#shared").inner_text()
    assert "SYSPROMPT-zebra" not in page_text and "META-walrus" not in page_text and sid not in page_text
    await screenshot(stranger, "shared-conversation.png")
    api_calls = [r for r in sent if "/v1/" in r.url]
    assert [r.url.split("?")[0].rsplit("/", 1)[0] for r in api_calls] == [str(client.make_url("/v1/shares"))]
    assert not any("x-api-key" in r.headers or "authorization" in r.headers for r in api_calls)

    # Connecting there offers the copy; the copy is a session of one's own, open and live.
    await stranger.get_by_role("button", name="Connect to continue").click()
    await _connect_here(stranger)
    await stranger.get_by_role("button", name="Continue as a copy").click()
    await expect(stranger.locator("#connection")).to_have_text("Live")
    copy_id = await stranger.locator("#session-meta").inner_text()
    assert copy_id.startswith("ses_") and copy_id != sid
    await expect(messages(stranger)).to_have_count(2)
    await send(stranger, "and the evening?")
    await wait_done(stranger, 2)
    copied = (await (await client.get(f"/v1/sessions/{copy_id}/messages")).json())["items"]
    assert [m["content"] for m in copied[:2]] == [m["content"] for m in truth]
    assert len((await (await client.get(f"/v1/sessions/{sid}/messages")).json())["items"]) == 2  # unchanged

    # Revoked in the owner's tab: the link stops working at once.
    await owner.get_by_role("button", name="Revoke").click()
    await expect(owner.locator("#share-panel")).to_be_hidden()
    late = await tabs.open()
    await late.goto(url)
    await expect(late.locator("#shared-meta")).to_have_text(
        "This link does not work: it may have expired or been revoked."
    )
    await expect(late.locator("#shared-messages > li")).to_have_count(0)
    tabs.assert_no_js_errors()


async def test_the_search_box_marks_matches_and_opens_the_session(make_client: ServerFactory, tabs: Tabs) -> None:
    client = await make_client(simulated=BRISK)
    garden = await new_session(client, title="Garden")
    await _converse(client, garden["id"], f"which tomatoes grow in shade {HOSTILE}")
    kitchen = await new_session(client, title="Kitchen")
    await _converse(client, kitchen["id"], "a bread without yeast")

    page = await tabs.open()
    await open_chat(page, client)
    await expect(page.locator("#session-list > li")).to_have_count(2)
    box = page.get_by_label("Search sessions")
    await box.fill("tomatoes shade")
    hits = page.locator("#search-results > li")
    await expect(hits).to_have_count(1)
    await expect(page.locator("#session-list")).to_be_hidden()
    hit = hits.first.locator("a")
    await expect(hit).to_have_attribute("data-id", garden["id"])
    await expect(hit.locator("mark")).to_have_text(["tomatoes", "shade"])
    await expect(hit.locator(".snippet")).to_contain_text("<img src=x onerror=")  # shown as text
    await expect(page.locator("#search-results img")).to_have_count(0)
    assert await page.evaluate("window.__pwned") is None

    await hit.click()
    await expect(page.locator("#session-meta")).to_have_text(garden["id"])
    await expect(page.locator("#connection")).to_have_text("Live")
    await expect(messages(page).first.locator(".content")).to_contain_text("which tomatoes grow in shade")

    await box.fill("nothing-like-this")
    await expect(hits).to_have_text([re.compile("No session holds")])
    await box.press("Escape")
    await expect(page.locator("#session-list > li")).to_have_count(2)
    await expect(page.locator("#search-results")).to_be_hidden()
    tabs.assert_no_js_errors()


async def test_the_pages_new_scripts_are_served_and_fetch_nothing_from_elsewhere(make_client: ServerFactory) -> None:
    client = await make_client()
    for name in ("dom.js", "share.js", "search.js"):
        resp = await client.get(f"/web/{name}")
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/javascript"), name
        assert not re.search(r"https?://", await resp.text()), name
