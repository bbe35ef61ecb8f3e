"""``sessiond chat`` through a pseudo-terminal, against a real server process."""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pexpect  # type: ignore[import-untyped]
import pytest

from tests.conftest import ROOT, TEST_KEY, ServerProcess

pytestmark = pytest.mark.slow

PROMPT = "you> "


def _get(url: str) -> Any:
    req = urllib.request.Request(url, headers={"X-API-Key": TEST_KEY})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)


def _env() -> dict[str, str]:
    """This checkout's code, and no SESSIOND_* setting from outside."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SESSIOND_")}
    return {**clean, "PYTHONPATH": str(ROOT)}


def _chat(url: str, cwd: Path, *args: str) -> pexpect.spawn:
    env = _env()
    env["TERM"] = "dumb"  # no escape sequences from readline in what we read
    child = pexpect.spawn(
        sys.executable, ["-m", "server", "chat", "--url", url, "--api-key", TEST_KEY, *args],
        cwd=str(cwd), env=env, encoding="utf-8", timeout=30, dimensions=(50, 250),
    )
    return child


def _answer(child: pexpect.spawn) -> str:
    """The text of the answer being streamed, up to its model-and-usage line (or the prompt)."""
    child.expect_exact("assistant> ")
    child.expect_exact("\r\n" + PROMPT)
    text = str(child.before)
    answer, usage_line, _ = text.rpartition("\r\n— ")
    return (answer if usage_line else text).strip()


def test_a_conversation_with_branches_checkpoints_and_export(
    server_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    url = server_process().start()
    child = _chat(url, tmp_path)
    child.expect(r"new session (ses_\w+)")
    sid = child.match.group(1)
    child.expect_exact(PROMPT)

    child.sendline("hello")
    first = _answer(child)
    messages = _get(f"{url}/v1/sessions/{sid}/messages")["items"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert first == messages[1]["content"] and first.startswith("Simulated")

    child.sendline("/regen")
    second = _answer(child)
    # A regeneration is another attempt: the simulated model answers it with other words.
    assert second != first and second.startswith("Simulated")
    assert len(_get(f"{url}/v1/sessions/{sid}/tree")["nodes"]) == 3, "a second version of the answer"
    child.sendline("/branches")
    child.expect_exact("message 2 (assistant), 2 versions:")
    child.expect_exact("2.2: ")
    child.expect_exact(PROMPT)

    child.sendline("/switch 2.1")
    child.expect_exact("assistant <1/2>: " + first[:40])
    child.expect_exact(PROMPT)

    child.sendline("/edit hello there")
    _answer(child)
    child.sendline("/history")
    child.expect_exact("[1] you <2/2>: hello there")
    child.expect_exact(PROMPT)

    child.sendline("/checkpoints")
    child.expect(r"\[3\] \S+ answer: ")
    child.expect_exact(PROMPT)
    child.sendline("/restore 1")
    child.expect_exact("restored checkpoint 1")
    child.expect_exact(PROMPT)
    tree = _get(f"{url}/v1/sessions/{sid}/tree")
    checkpoints = _get(f"{url}/v1/sessions/{sid}/checkpoints")["items"]
    assert tree["active_leaf_id"] == checkpoints[0]["message_id"]

    child.sendline("/restore 1 answer in one word")
    _answer(child)

    out = tmp_path / "whole.json"
    child.sendline(f"/export {out}")
    child.expect(r"exported (\d+) messages to ")
    count = int(child.match.group(1))
    child.expect_exact(PROMPT)
    doc = json.loads(out.read_text())
    assert doc["session"]["id"] == sid
    assert len(doc["messages"]) == count == len(_get(f"{url}/v1/sessions/{sid}/tree")["nodes"])

    child.sendline("/nonsense")
    child.expect_exact("unknown command /nonsense")
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_ctrl_c_stops_the_answer_not_the_program(server_process: Callable[..., ServerProcess], tmp_path: Path) -> None:
    # 20 tokens a second, 400 tokens: twenty seconds unless stopped.
    server = server_process({"SESSIOND_SIMULATED_TOKENS_PER_SECOND": "20", "SESSIOND_SIMULATED_REPLY_TOKENS": "400"})
    url = server.start()
    child = _chat(url, tmp_path)
    child.expect(r"new session (ses_\w+)")
    sid = child.match.group(1)
    child.expect_exact(PROMPT)

    child.sendline("a long answer please")
    child.expect_exact("assistant> Simulated")
    child.sendintr()  # Ctrl-C while it streams
    child.expect_exact("[stopping...]")
    child.expect_exact("[stopped]")
    child.expect_exact(PROMPT)
    reply = _get(f"{url}/v1/sessions/{sid}/messages")["items"][-1]
    assert reply["status"] == "cancelled"
    assert 0 < len(reply["content"].split()) < 400, "the part written so far is kept"

    child.sendline("/history")
    child.expect_exact("assistant (cancelled): Simulated")
    child.expect_exact(PROMPT)
    child.sendintr()  # Ctrl-C at the prompt: still here
    child.expect_exact("(Ctrl-D or /quit leaves)")
    child.expect_exact(PROMPT)
    child.sendline("/session")
    child.expect_exact(sid)
    child.expect_exact(PROMPT)
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_a_tool_call_that_waits_is_asked_about(server_process: Callable[..., ServerProcess], tmp_path: Path) -> None:
    srv = server_process(env={"SESSIOND_TOOLS_APPROVAL": '{ calculator = "always" }'})
    url = srv.start()
    req = urllib.request.Request(
        f"{url}/v1/sessions", data=json.dumps({"tools": ["calculator"]}).encode(),
        headers={"X-API-Key": TEST_KEY, "Content-Type": "application/json"}, method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        sid = json.load(resp)["id"]
    child = _chat(url, tmp_path, "--session", sid)
    child.expect_exact(PROMPT)
    child.sendline('/tool calculator {"expression": "40 + 2"}')
    child.expect_exact('allow calculator {"expression":"40 + 2"}? [y/n] ')
    child.sendline("y")
    child.expect_exact("[tool result]")
    child.expect_exact("calculator: 42\r\n")
    child.expect_exact(PROMPT)
    child.sendline('/tool calculator {"expression": "1 + 1"}')
    child.expect_exact("? [y/n] ")
    child.sendline("n not now")
    child.expect_exact("[tool failed]")
    child.expect_exact("\r\n" + PROMPT)
    answer = str(child.before)
    assert "denied" in answer and "not now" in answer
    child.sendline("/quit")
    child.expect(pexpect.EOF)


def test_continuing_a_session_and_a_bad_key(server_process: Callable[..., ServerProcess], tmp_path: Path) -> None:
    url = server_process().start()
    child = _chat(url, tmp_path)
    child.expect(r"new session (ses_\w+)")
    sid = child.match.group(1)
    child.expect_exact(PROMPT)
    child.sendline("remember this")
    first = _answer(child)
    child.sendeof()
    child.expect(pexpect.EOF)

    again = _chat(url, tmp_path, "--session", sid)
    again.expect_exact(f"session {sid}: 2 messages")
    again.expect_exact("[1] you: remember this")
    again.expect_exact("assistant: " + first[:40])
    again.expect_exact(PROMPT)
    again.sendline("/quit")
    again.expect(pexpect.EOF)

    env = _env()
    bad = pexpect.spawn(
        sys.executable, ["-m", "server", "chat", "--url", url, "--api-key", "sk_wrong_key"],
        cwd=str(tmp_path), env=env, encoding="utf-8", timeout=30,
    )
    bad.expect_exact("(401 unauthorized)")
    bad.expect(pexpect.EOF)
    bad.close()
    assert bad.exitstatus == 1


def test_the_server_address_comes_from_the_same_configuration_as_serve(
    server_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    url = server_process().start()
    port = url.rsplit(":", 1)[1]
    # ./config.toml names a port where nothing listens; SESSIOND_SERVER_PORT overrides it, as for serve.
    (tmp_path / "config.toml").write_text("[server]\nport = 1\n")
    env = {**_env(), "TERM": "dumb", "SESSIOND_SERVER_PORT": port}
    child = pexpect.spawn(
        sys.executable, ["-m", "server", "chat", "--api-key", TEST_KEY],
        cwd=str(tmp_path), env=env, encoding="utf-8", timeout=30,
    )
    child.expect(r"new session (ses_\w+)")
    child.expect_exact(PROMPT)
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    # Without the override, config.toml's port is the one tried, and named.
    env.pop("SESSIOND_SERVER_PORT")
    unreachable = pexpect.spawn(
        sys.executable, ["-m", "server", "chat", "--api-key", TEST_KEY],
        cwd=str(tmp_path), env=env, encoding="utf-8", timeout=30,
    )
    unreachable.expect_exact("sessiond chat: cannot reach http://127.0.0.1:1")
    unreachable.expect(pexpect.EOF)
    unreachable.close()
    assert unreachable.exitstatus == 1
