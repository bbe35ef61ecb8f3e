"""The chat page with a real model: Markdown rendered safely, failures and models shown, drafts kept,
sessions managed, a phone layout. In headless Chromium against the real server; the model is the
OpenAI-protocol test server (tests/fake_models.py), which echoes what it is sent, so a hostile
message comes back as a hostile answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Dialog, FilePayload, Page, Request, expect

from tests.conftest import TEST_KEY, new_session
from tests.fake_models import FakeOpenAI, closed_port_url
from tests.test_web import BRISK, TIMEOUT_MS, Tabs, answer, messages, open_chat, send, server_path, shown, wait_done
from tests.web_browser import CuttingProxy, ServerFactory, chromium, servers

expect.set_options(timeout=TIMEOUT_MS)
pytestmark = pytest.mark.asyncio(loop_scope="module")

HOSTILE = """a **bold** plan

<script>window.__pwned = "script"</script>
<img src=x onerror="window.__pwned = 'img'">
[a link](javascript:window.__pwned='link')
<a href="javascript:window.__pwned='raw'">raw link</a>
<div onmouseover="window.__pwned='div'">raw html</div>

| fruit | count |
|:------|------:|
| apple | 3 |

```python
print("hello")
```
"""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as b:
        yield b


@pytest_asyncio.fixture(loop_scope="module")
async def tabs(browser: Browser) -> AsyncIterator[Tabs]:
    context = await browser.new_context(viewport={"width": 1360, "height": 860}, locale="en-GB", timezone_id="UTC")
    try:
        yield Tabs(context)
    finally:
        await context.close()


@pytest_asyncio.fixture(loop_scope="module")
async def make_client(tmp_path: Path) -> AsyncIterator[ServerFactory]:
    async with servers(tmp_path / "data") as start:
        yield start


@pytest_asyncio.fixture(loop_scope="module")
async def model() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI("gpt-echo") as fake:
        yield fake


def _openai(url: str, model: str = "gpt-echo") -> dict[str, Any]:
    return {"kind": "openai", "base_url": url + "/v1", "model": model}


async def _v1_calls(requests: list[Request]) -> list[str]:
    return [f"{r.method} {r.url}" for r in requests if "/v1/" in r.url]


async def test_model_markdown_renders_and_nothing_hostile_runs(
    make_client: ServerFactory, tabs: Tabs, model: FakeOpenAI
) -> None:
    client = await make_client(providers={"main": _openai(model.url)}, agents={"default": {"model": ["main"]}})
    session = await new_session(client, title="Hostile")
    sid = session["id"]
    await tabs.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = await tabs.open()
    dialogs: list[str] = []

    async def on_dialog(d: Dialog) -> None:
        dialogs.append(d.message)
        await d.dismiss()

    page.on("dialog", on_dialog)
    await open_chat(page, client, sid)

    # A document whose name is markup: shown as text, never as HTML.
    hostile_name = '<img src=x onerror="window.__pwned=1">notes.md'
    await page.locator("#upload-input").set_input_files(
        files=[FilePayload(name=hostile_name, mimeType="text/markdown", buffer=b"# Notes\n\nnothing here\n")]
    )
    await expect(page.locator("#documents .doc-name")).to_contain_text("notes.md")
    assert await page.locator("#documents img").count() == 0

    await send(page, HOSTILE)
    await wait_done(page, 1)
    reply = answer(page)
    # The table and the code block render as such, from the model's Markdown.
    await expect(reply.locator(".content.markdown table th").first).to_have_text("fruit")
    await expect(reply.locator(".content.markdown table td").first).to_have_text("apple")
    await expect(reply.locator(".content.markdown pre code")).to_have_text('print("hello")\n')
    await expect(reply.locator(".content.markdown strong")).to_have_text("bold")
    # The raw HTML shows as the text it is; no element of it exists.
    await expect(reply.locator(".content")).to_contain_text("<script>window.__pwned")
    for selector in ("script", "img", "div[onmouseover]", "[onerror]", "a[href^='javascript']"):
        assert await page.locator(f"#messages {selector}").count() == 0, selector
    await reply.get_by_text("raw html").hover()
    assert await page.evaluate("window.__pwned") is None
    assert dialogs == []

    # Copy puts the code on the clipboard, exactly.
    await reply.get_by_role("button", name="Copy the code").click()
    await expect(reply.get_by_role("button", name="Copy the code")).to_have_text("Copied")
    assert await page.evaluate("navigator.clipboard.readText()") == 'print("hello")\n'
    # Which model wrote it.
    await expect(reply.locator(".model")).to_have_text("main/gpt-echo")
    tabs.assert_no_js_errors()


async def test_a_failed_answer_says_why_and_a_fallback_shows_its_model(
    make_client: ServerFactory, tabs: Tabs, model: FakeOpenAI
) -> None:
    backup = FakeOpenAI("backup-model")
    await backup.start()
    try:
        client = await make_client(
            providers={
                "down": _openai(closed_port_url(), "first-choice"), "backup": _openai(backup.url, "backup-model"),
            },
            agents={"default": {"model": ["down", "backup"]}},
        )
        sid = (await new_session(client))["id"]
        page = await tabs.open()
        await open_chat(page, client, sid)
        await send(page, "Who answers?")
        await wait_done(page, 1)
        # The first choice was down: the answer says which model wrote it instead.
        await expect(answer(page).locator(".model")).to_have_text("backup/backup-model")
    finally:
        await backup.stop()

    model.mode = "die"  # two pieces, then the connection is cut
    client = await make_client(providers={"main": _openai(model.url)}, agents={"default": {"model": ["main"]}})
    sid = (await new_session(client))["id"]
    page = await tabs.open()
    await open_chat(page, client, sid)
    await send(page, "Tell me everything")
    await expect(answer(page)).to_have_attribute("data-status", "failed")
    note = answer(page).locator(".failure")
    await expect(note).to_contain_text("This answer failed: ")
    text = await note.inner_text()
    assert len(text) > len("This answer failed: ") + 5, text


async def test_a_refused_send_keeps_the_draft_and_says_why(make_client: ServerFactory, tabs: Tabs) -> None:
    client = await make_client(simulated=BRISK)
    sid = (await new_session(client))["id"]
    proxy = CuttingProxy(client.port or 0)
    base = await proxy.start()
    page = await tabs.open()
    await open_chat(page, client, sid, base=base)
    box = page.get_by_label("Message", exact=True)

    too_long = "x" * (1_048_576 + 10)
    await box.fill(too_long)
    await box.press("Enter")
    await expect(page.locator("#toast")).to_have_text("This message is too long (max 1 MiB).")
    assert await box.evaluate("b => b.value.length") == len(too_long)
    assert await server_path(client, sid) == []

    # The server goes away: a sentence for people, and the text is still there.
    await proxy.aclose()
    await box.fill("Still here after the outage")
    await box.press("Enter")
    await expect(page.locator("#toast")).to_contain_text("The server cannot be reached right now")
    await expect(page.locator("#toast")).not_to_contain_text("Failed to fetch")
    await expect(box).to_have_value("Still here after the outage")

    # A send that goes through empties the box.
    page2 = await tabs.open()
    await open_chat(page2, client, sid)
    await send(page2, "This one arrives")
    await wait_done(page2, 1)
    await expect(page2.get_by_label("Message", exact=True)).to_have_value("")


async def test_forgetting_the_key_then_another_link_shows_and_sends_only_there(
    make_client: ServerFactory, tabs: Tabs
) -> None:
    client = await make_client(simulated=BRISK)
    first = (await new_session(client, title="First"))["id"]
    second = (await new_session(client, title="Second"))["id"]
    await client.post(f"/v1/sessions/{first}/messages", json={"content": "Only in the first"})

    page = await tabs.open()
    requests: list[Request] = []
    page.on("request", lambda r: requests.append(r))
    await page.goto(str(client.make_url("/")) + f"#{first}")
    await expect(page.get_by_label("API key")).to_be_visible()
    assert await _v1_calls(requests) == [], "the page called the API before it had a key"

    await open_chat(page, client, first, base=str(client.make_url("/")))
    await expect(messages(page)).to_have_count(2)
    await page.get_by_role("button", name="Forget the API key").click()
    await expect(page.get_by_label("API key")).to_be_visible()
    requests.clear()
    await page.evaluate(f"location.hash = {json.dumps(second)}")  # the other session's link
    await expect(page.get_by_label("API key")).to_be_visible()
    assert await _v1_calls(requests) == [], "the page called the API after the key was forgotten"

    await page.get_by_label("API key").fill(TEST_KEY)
    await page.get_by_role("button", name="Connect").click()
    await expect(page.locator("#session-meta")).to_have_text(second)
    await expect(page.get_by_role("heading", name="Second")).to_be_visible()
    await expect(page.locator("#connection")).to_have_text("Live")
    await expect(messages(page)).to_have_count(0)
    await send(page, "For the second")
    await wait_done(page, 1)
    assert (await server_path(client, second))[0][2] == "For the second"
    assert "For the second" not in [m[2] for m in await server_path(client, first)]
    assert await page.get_by_text("Only in the first").count() == 0
    tabs.assert_no_js_errors()


async def test_manage_sessions_rename_export_delete_agent_and_paging(
    make_client: ServerFactory, tabs: Tabs, tmp_path: Path
) -> None:
    client = await make_client(simulated=BRISK)
    agent = await (await client.post("/v1/agents", json={"name": "Tour guide", "model": ["simulated"]})).json()
    for i in range(104):
        await new_session(client, title=f"Old {i:03d}")
    page = await tabs.open()
    await open_chat(page, client)
    listed = page.locator("#session-list > li")
    await expect(listed).to_have_count(100)
    await page.get_by_role("button", name="Show older sessions").click()
    await expect(listed).to_have_count(104)
    await expect(page.get_by_role("button", name="Show older sessions")).to_be_hidden()

    # A new session with an agent and a system prompt of its own.
    await page.get_by_text("Agent and system prompt").click()
    await page.get_by_label("Agent", exact=True).select_option(label="Tour guide")
    await page.get_by_label("System prompt (optional)").fill("Answer as a tour guide.")
    await page.get_by_label("Title of the new session").fill("Guided")
    await page.get_by_role("button", name="New session").click()
    await expect(page.get_by_role("heading", name="Guided")).to_be_visible()
    sid = await page.locator("#session-meta").inner_text()
    made = await (await client.get(f"/v1/sessions/{sid}")).json()
    assert made["agent_id"] == agent["id"] and made["system_prompt"] == "Answer as a tour guide."

    # Counts follow the conversation, regenerations included.
    await send(page, "Where first?")
    await wait_done(page, 1)
    current = page.locator("#session-list a[aria-current=page]")
    await expect(current).to_contain_text("2 messages")
    await answer(page).get_by_role("button", name="Regenerate").click()
    await expect(answer(page).locator(".version-label")).to_have_text("2/2")
    await wait_done(page, 1)
    count = (await (await client.get(f"/v1/sessions/{sid}")).json())["message_count"]
    assert count == 3
    await expect(current).to_contain_text("3 messages")
    # Checkpoints are named by the answer they keep.
    first_answer = (await server_path(client, sid))[1][2]
    label = page.locator("#checkpoints .cp-label").first
    await expect(label).to_have_text(re.compile("^" + re.escape(first_answer[:20])))

    # Rename.
    await page.get_by_role("button", name="Rename").click()
    await page.get_by_label("New title").fill("Guided tour")
    await page.get_by_role("button", name="Save").click()
    await expect(page.get_by_role("heading", name="Guided tour")).to_be_visible()
    await expect(current).to_contain_text("Guided tour")
    assert (await (await client.get(f"/v1/sessions/{sid}")).json())["title"] == "Guided tour"

    # Export: a download of the whole session.
    async with page.expect_download() as info:
        await page.get_by_role("button", name="Export").click()
    download = await info.value
    saved = tmp_path / "export.json"
    await download.save_as(saved)
    exported = json.loads(saved.read_text())
    assert download.suggested_filename == f"{sid}.json"
    assert "Where first?" in json.dumps(exported)

    # Delete, after saying yes.
    page.once("dialog", lambda d: d.accept())
    await page.get_by_role("button", name="Delete").click()
    await expect(page.locator("#session-meta")).to_have_text("")
    await expect(page.get_by_role("link", name=re.compile("Guided tour"))).to_have_count(0)
    assert (await client.get(f"/v1/sessions/{sid}")).status == 404
    tabs.assert_no_js_errors()


async def test_hint_turns_are_marked(make_client: ServerFactory, tabs: Tabs) -> None:
    client = await make_client(simulated=BRISK)
    sid = (await new_session(client))["id"]
    page = await tabs.open()
    await open_chat(page, client, sid)
    await send(page, "First question")
    await wait_done(page, 1)
    await page.get_by_label("Hint for the answer after a restore (optional)").fill("Be brief")
    await page.locator("#checkpoints > li").first.get_by_role("button", name=re.compile("^Restore")).click()
    await wait_done(page, 2)
    hint = page.locator("#messages > li[data-hint=true]")
    await expect(hint).to_have_count(1)
    await expect(hint).to_contain_text("Hint (from a restore)")
    await expect(hint.get_by_role("button", name="Edit")).to_have_count(0)
    await expect(page.locator("#messages > li[data-role=user]:not([data-hint])")).to_have_count(1)


async def test_phone_layout_pins_the_box_and_puts_the_list_in_a_drawer(
    browser: Browser, make_client: ServerFactory
) -> None:
    client = await make_client(simulated=BRISK)
    sid = (await new_session(client, title="On the phone"))["id"]
    for i in range(6):
        await client.post(f"/v1/sessions/{sid}/messages", json={"content": f"question {i} " + "word " * 60})
    context = await browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    try:
        page: Page = await context.new_page()
        await open_chat(page, client, sid)
        await expect(messages(page)).to_have_count(12)
        box = await page.get_by_label("Message", exact=True).bounding_box()
        assert box is not None and box["y"] + box["height"] <= 844, box
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390
        drawer = page.locator(".sidebar")
        await expect(drawer).not_to_be_in_viewport()
        await page.get_by_role("button", name="Sessions").click()
        await expect(drawer).to_be_in_viewport()
        await expect(page.get_by_role("link", name=re.compile("On the phone"))).to_be_visible()
        await page.get_by_role("link", name=re.compile("On the phone")).click()
        await expect(drawer).not_to_be_in_viewport()
        assert await shown(page) == await server_path(client, sid)
    finally:
        await context.close()
