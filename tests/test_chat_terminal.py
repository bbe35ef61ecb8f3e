"""``sessiond chat`` as a person at a terminal sees it: keys typed during an answer stay out of
it, lines wrap between words, the model and usage follow each answer, times read as times, and
the /title, /usage, /model, /agent, /search and /open commands and multi-line messages work. Through a
pseudo-terminal (pexpect), against a real server process."""

from __future__ import annotations

import json
import re
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pexpect  # type: ignore[import-untyped]
import pytest

from tests.conftest import TEST_KEY, ServerProcess
from tests.test_chat import PROMPT, _env, _get

pytestmark = pytest.mark.slow

WIDTH = 60


def _spawn(url: str, cwd: Path) -> pexpect.spawn:
    env = _env()
    env["TERM"] = "dumb"
    return pexpect.spawn(
        sys.executable, ["-m", "server", "chat", "--url", url, "--api-key", TEST_KEY],
        cwd=str(cwd), env=env, encoding="utf-8", timeout=30, dimensions=(40, WIDTH),
    )


def _start(child: pexpect.spawn) -> str:
    child.expect(r"new session (ses_\w+)")
    sid = str(child.match.group(1))
    child.expect_exact(PROMPT)
    return sid


def test_typing_during_an_answer_keeps_it_whole_and_waits_for_the_prompt(
    server_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = server_process({"SESSIOND_SIMULATED_TOKENS_PER_SECOND": "25", "SESSIOND_SIMULATED_REPLY_TOKENS": "50"})
    url = server.start()
    child = _spawn(url, tmp_path)
    sid = _start(child)

    child.sendline("tell me a story")
    child.expect_exact("assistant> Simulated")
    child.send("next question")  # typed while the answer streams, not yet sent
    child.expect(r"\r\n— (\S+) · (\d+) tokens \((\d+) prompt \+ (\d+) completion\)\r\n")
    printed = "Simulated" + str(child.before)
    model, total = child.match.group(1), int(child.match.group(2))
    child.expect_exact(PROMPT)
    # What was typed shows after the prompt (and only there), and Enter sends it.
    child.expect_exact("next question")
    child.sendline("")
    child.expect_exact("assistant> ")
    child.expect_exact(PROMPT)

    items = _get(f"{url}/v1/sessions/{sid}/messages")["items"]
    assert [m["content"] for m in items if m["role"] == "user"] == ["tell me a story", "next question"]
    reply = items[1]
    lines = printed.split("\r\n")
    assert "next question" not in printed, "the typed keys were echoed into the answer"
    # Wrapped between words, within the terminal: joined again, it is the answer exactly.
    assert len(lines) > 1 and all(len(line) <= WIDTH for line in [f"assistant> {lines[0]}", *lines[1:]]), lines
    assert " ".join(lines) == reply["content"]
    words = set(reply["content"].split())
    assert all(w in words for line in lines for w in line.split())
    assert model == reply["model"] == "simulated" and total == reply["usage"]["total"]
    child.sendeof()
    child.expect(pexpect.EOF)


def test_title_usage_model_agent_multiline_and_human_times(
    server_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    url = server_process().start()
    child = _spawn(url, tmp_path)
    sid = _start(child)

    # Two ways to write a message of many lines: a trailing backslash, and a """ block.
    child.sendline("first line \\")
    child.expect_exact("...> ")
    child.sendline("second line")
    child.expect_exact(PROMPT)
    child.sendline('"""')
    child.sendline("alpha")
    child.sendline("")
    child.sendline("omega")
    child.sendline('"""')
    child.expect_exact("assistant> ")
    child.expect_exact(PROMPT)
    users = [m["content"] for m in _get(f"{url}/v1/sessions/{sid}/messages")["items"] if m["role"] == "user"]
    assert users == ["first line \nsecond line", "alpha\n\nomega"]

    child.sendline("/title")
    child.expect_exact("title: terminal chat")
    child.sendline("/title Weekend in Porto")
    child.expect_exact("title: Weekend in Porto")
    child.expect_exact(PROMPT)
    assert _get(f"{url}/v1/sessions/{sid}")["title"] == "Weekend in Porto"

    session = _get(f"{url}/v1/sessions/{sid}")
    child.sendline("/usage")
    child.expect_exact(f"this session: {session['usage']['total']:,} tokens")
    child.expect_exact("in 4 messages")
    child.expect_exact(PROMPT)

    child.sendline("/model")
    child.expect_exact("last answer by: simulated")
    child.expect_exact("agent default may use: simulated")
    child.expect_exact(PROMPT)

    child.sendline("/agent")
    child.expect(r"\* default \(")
    child.expect_exact(PROMPT)

    child.sendline("/checkpoints")
    child.expect(r"\[1\] (\S+) ")
    assert re.fullmatch(r"\d\d:\d\d", child.match.group(1)), child.match.group(1)
    child.expect_exact(PROMPT)
    child.sendline("/help")
    child.expect_exact("/title [TEXT]")
    child.expect_exact(PROMPT)
    child.sendeof()
    child.expect(pexpect.EOF)


def _post(url: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={"X-API-Key": TEST_KEY, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)


def test_search_lists_the_sessions_that_hold_the_words_and_opens_one(
    server_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    url = server_process().start()
    # Another session holds the words, in a message and in an escape sequence that must not
    # reach the terminal as one.
    other = _post(f"{url}/v1/sessions", {"title": "Garden \x1b]0;pwned\x07 notes"})
    _post(f"{url}/v1/sessions/{other['id']}/messages", {"content": "which tomatoes grow in shade \x1b[2J"})
    _post(f"{url}/v1/sessions", {"title": "unrelated"})
    child = _spawn(url, tmp_path)
    sid = _start(child)

    child.sendline("/search tomatoes shade")
    child.expect(r"\[1\] Garden (.*) notes \(2 messages, \d\d:\d\d\)")
    assert "\x1b" not in child.match.group(1) and "\x07" not in child.match.group(1)
    child.expect(r"which \*tomatoes\* grow in \*shade\*")
    child.expect_exact("/open N continues one of them")
    child.expect_exact(PROMPT)
    assert "\x1b[2J" not in str(child.before)
    child.sendline("/search nothing-like-this")
    child.expect_exact("no session holds 'nothing-like-this'")
    child.expect_exact(PROMPT)

    child.sendline("/search tomatoes")
    child.expect_exact("/open N continues one of them")
    child.sendline("/open 1")
    child.expect_exact(f"session {other['id']}: Garden")
    child.expect(r"\[1\] you: which tomatoes grow in shade")
    child.expect_exact(PROMPT)
    child.sendline("and peppers?")
    child.expect_exact("assistant> ")
    child.expect_exact(PROMPT)
    users = [m["content"] for m in _get(f"{url}/v1/sessions/{other['id']}/messages")["items"] if m["role"] == "user"]
    assert users[-1] == "and peppers?"
    assert _get(f"{url}/v1/sessions/{sid}")["message_count"] == 0
    child.sendline("/open 7")
    child.expect_exact("! /open N, N from the last /search")
    child.sendeof()
    child.expect(pexpect.EOF)
