"""``sessiond chat``: a terminal chat with one session, answers streamed as they are made.

A tool call that waits for approval is asked about (y/n) while the answer streams.
Ctrl-C while an answer streams stops that answer (the server keeps the part already
written, marked cancelled); at the prompt it only clears the line. Ctrl-D or /quit leaves.
Answers wrap at word boundaries; what is typed while one streams waits for the next prompt
instead of landing in the middle of it; each answer ends with its model and token usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TextIO, TypeVar

import msgspec

from actors.core.events import (
    MessageCompleted,
    MessageDelta,
    StreamReset,
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskInterrupted,
    ToolApprovalRequested,
    ToolCall,
    ToolResult,
)
from actors.core.tree import Usage
from server.client.client import ApiError, Client, EventStream
from server.client.terminal import WordWrapper, human_time, one_line, quiet_keys, terminal_width, wrap
from server.schema.agents import AgentList
from server.schema.messages import MessageOut, TreeNodeOut

__all__ = ["HELP", "Chat", "default_url", "register", "run_chat"]

T = TypeVar("T")

HELP = """\
Type a message and press Enter; end a line with \\ to go on on the next one, or put \"\"\" on a
line of its own to start and end a message of many lines. Commands:
  /edit [N] TEXT     new version of your message N (default: your last one), answered again
  /regen             a new answer in place of the last one
  /branches          the messages that have other versions, and their keys
  /switch KEY        show the version KEY (as /branches lists it, e.g. 2.1)
  /history           the conversation as it stands, numbered
  /search WORDS      your sessions whose title or messages (any version) hold every word
  /open N            continue session N of the last /search
  /checkpoints       the checkpoints, numbered
  /restore N [HINT]  go back to checkpoint N; with a hint, answer again from there
  /export FILE       write the whole session (every branch) to FILE as JSON
  /title [TEXT]      the session's title, or give it a new one
  /usage             the tokens this session has used
  /model             the model of the last answer, and the models the agent may use
  /agent             the session's agent, and the agents on this server
  /session           the session id
  /tool NAME {JSON}  sent as a message: the simulated model calls that tool
  /help              this text
  /quit              leave (Ctrl-D too)
Ctrl-C stops an answer while it streams."""

_PROMPT = "you> "
_MORE = "...> "
_BLOCK = '"""'


class Chat:
    """The REPL state: a client, its current session, and where output goes."""

    def __init__(self, client: Client, out: TextIO = sys.stdout) -> None:
        self.client = client
        self.out = out
        self._loop = asyncio.new_event_loop()
        self._stopping = False
        self._found: list[str] = []  # the sessions the last /search listed, in order

    # -- running coroutines from the blocking prompt ---------------------------------------

    def run(self, coro: Awaitable[T], on_interrupt: Callable[[], None] | None = None) -> T:
        """Run ``coro`` on the chat's loop; Ctrl-C meanwhile calls ``on_interrupt``
        (default: abandon the coroutine)."""
        task = self._loop.create_task(_awaited(coro))

        def interrupted() -> None:
            if on_interrupt is not None:
                on_interrupt()
            else:
                task.cancel()

        self._loop.add_signal_handler(signal.SIGINT, interrupted)
        try:
            return self._loop.run_until_complete(task)
        finally:
            self._loop.remove_signal_handler(signal.SIGINT)

    def close(self) -> None:
        self._loop.run_until_complete(self.client.aclose())
        self._loop.close()

    def say(self, text: str = "", end: str = "\n") -> None:
        self.out.write(text + end)
        self.out.flush()

    # -- the loop --------------------------------------------------------------------------

    def start(self, session_id: str | None) -> None:
        if session_id is None:
            s = self.run(self.client.create_session(title="terminal chat"))
            self.client.use_session(s.id)
            self.say(f"new session {s.id}  (/help for commands)")
        else:
            self.client.use_session(session_id)
            s = self.run(self.client.get_session())
            self.say(f"session {s.id}: {s.message_count} messages  (/help for commands)")
            self.show_history(last=6)

    def read_message(self) -> str:
        """One message: a line, lines joined by a trailing backslash, or a triple-quote block."""
        line = input(_PROMPT)
        if line.strip() == _BLOCK:
            lines: list[str] = []
            while (more := input(_MORE)).strip() != _BLOCK:
                lines.append(more)
            return "\n".join(lines)
        lines = [line]
        while lines[-1].endswith("\\"):
            lines[-1] = lines[-1][:-1]
            lines.append(input(_MORE))
        return "\n".join(lines)

    def repl(self) -> int:
        while True:
            try:
                line = self.read_message()
            except EOFError:
                self.say()
                return 0
            except KeyboardInterrupt:
                self.say("\n(Ctrl-D or /quit leaves)")
                continue
            line = line.strip()
            if not line:
                continue
            try:
                if self.handle(line) == "quit":
                    return 0
            except ApiError as exc:
                self.say(f"! {exc.detail} ({exc.status} {exc.code})")
            except asyncio.CancelledError:
                self.say("\n(interrupted)")
            except (OSError, TimeoutError) as exc:
                self.say(f"! cannot reach {self.client.url}: {exc}")

    def handle(self, line: str) -> str | None:
        if not line.startswith("/") or line.startswith("/tool "):  # /tool lines: for the simulated model
            self.answer(self.client.send_stream(line))
            return None
        cmd, _, rest = line.partition(" ")
        rest = rest.strip()
        match cmd:
            case "/quit" | "/exit":
                return "quit"
            case "/help":
                self.say(HELP)
            case "/session":
                self.say(self.client.session_id or "")
            case "/history":
                self.show_history()
            case "/search":
                self.search(rest)
            case "/open":
                self.open(rest)
            case "/edit":
                self.edit(rest)
            case "/regen":
                last = self._last("assistant")
                if last is None:
                    self.say("! there is no answer to regenerate yet")
                else:
                    self.answer(self.client.regenerate_stream(last.id))
            case "/branches":
                self.branches()
            case "/switch":
                self.switch(rest)
            case "/checkpoints":
                self.checkpoints()
            case "/restore":
                self.restore(rest)
            case "/export":
                self.export(rest)
            case "/title":
                self.title(rest)
            case "/usage":
                self.usage()
            case "/model":
                self.model()
            case "/agent":
                self.agent()
            case _:
                self.say(f"! unknown command {cmd} (/help lists them)")
        return None

    # -- answers ---------------------------------------------------------------------------

    def answer(self, events: EventStream) -> None:
        """Print an answer as it streams; Ctrl-C asks the server to stop it."""
        stopping: list[asyncio.Task[Any]] = []

        def stop() -> None:
            if not stopping:
                self.say("\n[stopping...]", end="")
                stopping.append(self._loop.create_task(_quiet(self.client.cancel())))

        self.say("assistant> ", end="")
        writer = WordWrapper(self.out, terminal_width(self.out), column=len("assistant> "))
        result = _Result()
        with quiet_keys():
            end = self.run(_print_answer(events, writer, result, self.client), on_interrupt=stop)
            if stopping:
                self.run(stopping[0])
        self.say("\n" + end if end else "")
        if result.usage is not None and not end:
            self.say(_usage_line(result.model, result.usage))

    # -- commands --------------------------------------------------------------------------

    def _path(self) -> list[MessageOut]:
        return self.run(self.client.messages(limit=1000)).items

    def _last(self, role: str) -> MessageOut | None:
        return next((m for m in reversed(self._path()) if m.role == role), None)

    def show_history(self, last: int | None = None) -> None:
        path = self._path()
        user_no = 0
        lines = []
        for m in path:
            if m.role == "user":
                user_no += 1
                who = f"[{user_no}] you"
            else:
                who = "    assistant"
            versions = f" <{m.sibling_index + 1}/{m.sibling_count}>" if m.sibling_count > 1 else ""
            state = "" if m.status == "completed" else f" ({m.status})"
            lines.append(wrap(m.content, terminal_width(self.out), f"{who}{versions}{state}: "))
        for text in lines[-last:] if last else lines:
            self.say(text)

    def search(self, words: str) -> None:
        if not words:
            self.say("! /search WORDS")
            return
        hits = self.run(self.client.search(words, limit=10)).items
        self._found = [h.session.id for h in hits]
        if not hits:
            self.say(f"no session holds {one_line(words)!r}")
            return
        width = terminal_width(self.out)
        for i, h in enumerate(hits, start=1):
            here = "*" if h.session.id == self.client.session_id else " "
            title = _marked(h.title) if h.title else one_line(h.session.title or "untitled")
            when = human_time(h.session.last_active_at)
            self.say(f"{here}[{i}] {title} ({h.session.message_count} messages, {when})")
            for snippet in h.snippets[:2]:
                self.say(wrap(_marked(snippet.text), width, "      "))
        self.say("/open N continues one of them")

    def open(self, number: str) -> None:
        if not number.isdigit() or not 1 <= int(number) <= len(self._found):
            self.say("! /open N, N from the last /search")
            return
        self.client.use_session(self._found[int(number) - 1])
        s = self.run(self.client.get_session())
        self.say(f"session {s.id}: {one_line(s.title or 'untitled')}, {s.message_count} messages")
        self.show_history(last=4)

    def edit(self, rest: str) -> None:
        number, _, text = rest.partition(" ")
        users = [m for m in self._path() if m.role == "user"]
        if number.isdigit() and text.strip():
            index, content = int(number) - 1, text.strip()
        else:
            index, content = len(users) - 1, rest
        if not content:
            self.say("! /edit [N] TEXT")
            return
        if not 0 <= index < len(users):
            self.say(f"! no message {index + 1} of yours (/history numbers them)")
            return
        self.answer(self.client.edit_stream(users[index].id, content))

    def _branch_points(self) -> list[tuple[str, TreeNodeOut, list[TreeNodeOut]]]:
        """(key prefix, message on the active path, its versions) for every message with versions."""
        tree = self.run(self.client.tree())
        nodes = {n.id: n for n in tree.nodes}
        roots = [n for n in tree.nodes if n.parent_id is None]
        path: list[TreeNodeOut] = []
        at = tree.active_leaf_id
        while at is not None:
            path.append(nodes[at])
            at = nodes[at].parent_id
        path.reverse()
        out = []
        for depth, node in enumerate(path, start=1):
            siblings = roots if node.parent_id is None else [nodes[c] for c in nodes[node.parent_id].children]
            if len(siblings) > 1:
                out.append((str(depth), node, siblings))
        return out

    def branches(self) -> None:
        points = self._branch_points()
        if not points:
            self.say("no message has another version yet")
            return
        for depth, node, siblings in points:
            self.say(f"message {depth} ({node.role}), {len(siblings)} versions:")
            for i, sib in enumerate(siblings, start=1):
                mark = "*" if sib.id == node.id else " "
                self.say(f"  {mark} {depth}.{i}: {_short(sib.content)}")
        self.say("/switch KEY shows a version")

    def switch(self, key: str) -> None:
        depth, _, index = key.partition(".")
        for d, _node, siblings in self._branch_points():
            if d == depth and index.isdigit() and 1 <= int(index) <= len(siblings):
                self.run(self.client.navigate(siblings[int(index) - 1].id))
                self.show_history(last=4)
                return
        self.say(f"! no version {key} (/branches lists them)")

    def checkpoints(self) -> None:
        items = self.run(self.client.checkpoints()).items
        if not items:
            self.say("no checkpoint yet (one is made after every answer)")
        nodes = {n.id: n for n in self.run(self.client.tree()).nodes}
        for i, cp in enumerate(items, start=1):
            text = _short(nodes[cp.message_id].content) if cp.message_id in nodes else ""
            self.say(f"[{i}] {human_time(cp.created_at)} {cp.label}: {text}")

    def restore(self, rest: str) -> None:
        number, _, hint = rest.partition(" ")
        items = self.run(self.client.checkpoints()).items
        if not number.isdigit() or not 1 <= int(number) <= len(items):
            self.say("! /restore N [HINT], N from /checkpoints")
            return
        cp = items[int(number) - 1]
        if hint.strip():
            self.answer(self.client.restore_stream(cp.id, hint.strip()))
        else:
            self.run(self.client.restore(cp.id))
            self.say(f"restored checkpoint {number}")
            self.show_history(last=4)

    def export(self, name: str) -> None:
        if not name:
            self.say("! /export FILE")
            return
        doc = self.run(self.client.export())
        path = Path(name).expanduser()
        path.write_bytes(msgspec.json.format(msgspec.json.encode(doc), indent=2) + b"\n")
        self.say(f"exported {len(doc.get('messages', []))} messages to {path}")


    def title(self, text: str) -> None:
        if text:
            s = self.run(self.client.patch_session(title=text))
            self.say(f"title: {s.title}")
        else:
            s = self.run(self.client.get_session())
            self.say(f"title: {s.title}" if s.title else "no title yet (/title TEXT gives it one)")

    def usage(self) -> None:
        s = self.run(self.client.get_session())
        u = s.usage
        self.say(f"this session: {u.total:,} tokens ({u.prompt:,} prompt + {u.completion:,} completion)"
                 f" in {s.message_count} messages")

    def model(self) -> None:
        last = self._last("assistant")
        self.say(f"last answer by: {last.model}" if last and last.model else "no answer yet")
        agent = self._agent()
        if agent is not None:
            self.say(f"agent {agent.id} may use: {', '.join(_route(agent.model))}")

    def agent(self) -> None:
        agents = self.run(self.client.request("GET", "/v1/agents", AgentList)).items
        mine = self._agent(agents)
        for a in agents:
            mark = "*" if mine is not None and a.id == mine.id else " "
            prompt = f" — {_short(a.system_prompt, 40)}" if a.system_prompt else ""
            self.say(f"{mark} {a.id} ({a.name or 'unnamed'}): {', '.join(_route(a.model))}{prompt}")
        self.say("the agent is chosen when a session is made (POST /v1/sessions with agent_id)")

    def _agent(self, agents: list[Any] | None = None) -> Any:
        s = self.run(self.client.get_session())
        if agents is None:
            agents = self.run(self.client.request("GET", "/v1/agents", AgentList)).items
        wanted = s.agent_id or "default"
        return next((a for a in agents if a.id == wanted), None)


class _Result:
    """What the end of an answer said: its usage and model (from message.completed)."""

    usage: Usage | None = None
    model: str | None = None


def _route(entries: list[Any]) -> list[str]:
    names = []
    for e in entries:
        if isinstance(e, str):
            names.append(e)
        else:
            names.append(f"{e.provider}/{e.model}" if getattr(e, "model", None) else str(e.provider))
    return names


def _usage_line(model: str | None, usage: Usage) -> str:
    who = model or "unknown model"
    return f"— {who} · {usage.total:,} tokens ({usage.prompt:,} prompt + {usage.completion:,} completion)"


async def _awaited(coro: Awaitable[T]) -> T:
    return await coro


async def _quiet(coro: Awaitable[Any]) -> None:
    with contextlib.suppress(ApiError):  # the answer may have ended meanwhile: nothing to stop
        await coro


async def _print_answer(events: EventStream, out: WordWrapper, result: _Result, client: Client) -> str:
    """Write the deltas of one task, asking about tool calls that wait for approval; what ended
    it, as a short note ("" for a normal end)."""
    try:
        return await _follow(events, out, result, client)
    finally:
        out.finish()


async def _follow(events: EventStream, out: WordWrapper, result: _Result, client: Client) -> str:
    async with events:
        async for ev in events:
            e = ev.event
            if isinstance(e, MessageDelta):
                out.write(e.delta)
            elif isinstance(e, ToolApprovalRequested):
                await _ask_approval(e, out, client)
            elif isinstance(e, ToolCall):
                out.write(f"\n  [tool {e.name}]\n")
            elif isinstance(e, ToolResult):
                out.write("  [tool result]\n" if not e.is_error else "  [tool failed]\n")
            elif isinstance(e, MessageCompleted):
                result.usage, result.model = e.usage, e.model or e.message.model
            elif isinstance(e, TaskCompleted):
                return ""
            elif isinstance(e, TaskCancelled):
                return "[stopped]"
            elif isinstance(e, TaskFailed):
                return f"[failed: {e.error}]"
            elif isinstance(e, TaskInterrupted):
                return f"[interrupted: {e.error}]"
            elif isinstance(e, StreamReset):
                return "[the stream was reset; /history shows the answer]"
    return ""


async def _ask_approval(e: ToolApprovalRequested, out: WordWrapper, client: Client) -> None:
    """y: approve the call; anything else: deny it (what was typed after "n" is the reason)."""
    args = msgspec.json.encode(e.arguments).decode()
    out.finish()
    # Straight to the terminal: the question is not wrapped, and it ends with its space.
    out.out.write(f"\n  allow {e.name} {_short(args)}? [y/n] ")
    out.out.flush()
    # Reading blocks: off the loop, so the stream's connection stays served. Keys are not
    # echoed while an answer streams, so the answer is written back once read.
    line = (await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)).strip()
    out.out.write(line + "\n")
    out.column = 0
    if line.lower() in ("y", "yes"):
        await client.approve(e.call_id)
        return
    reason = line[1:].strip() if line[:1].lower() == "n" else ""
    await client.deny(e.call_id, reason=reason or None)


def _marked(snippet: str) -> str:
    """A search snippet for the terminal: its matching words (``<mark>...</mark>``) as *word*."""
    return one_line(snippet).replace("<mark>", "*").replace("</mark>", "*")


def _short(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def run_chat(url: str, api_key: str | None, session_id: str | None) -> int:
    """The ``sessiond chat`` command."""
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing and history for input())
    chat = Chat(Client(url, api_key=api_key))
    try:
        try:
            chat.start(session_id)
        except ApiError as exc:
            print(f"sessiond chat: {exc.detail} ({exc.status} {exc.code})", file=sys.stderr)
            return 1
        except OSError as exc:
            print(f"sessiond chat: cannot reach {url}: {exc}", file=sys.stderr)
            return 1
        return chat.repl()
    finally:
        chat.close()


def default_url(config_path: str | None = None) -> str:
    """$SESSIOND_URL, else the address serve listens on: the same configuration as serve
    (``--config`` or ./config.toml, then the SESSIOND_SERVER_* variables)."""
    if os.environ.get("SESSIOND_URL"):
        return os.environ["SESSIOND_URL"]
    from server.config import load_config

    path = config_path or ("config.toml" if Path("config.toml").is_file() else None)
    server = load_config(path).server
    host = server.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{server.port}"


def register(sub: Any) -> None:
    p = sub.add_parser("chat", help="chat with a session in the terminal")
    p.add_argument("--session", help="the session to continue (default: a new one)")
    p.add_argument(
        "--url", help="the server (default: $SESSIOND_URL, else where serve listens by the same configuration)"
    )
    p.add_argument("--config", help="config.toml to take the server's address from (default: ./config.toml)")
    p.add_argument("--api-key", dest="api_key", help="an API key (default: $SESSIOND_API_KEY)")
    p.set_defaults(func=_cmd_chat)


def _cmd_chat(args: argparse.Namespace) -> int:
    api_key = args.api_key or os.environ.get("SESSIOND_API_KEY")
    if not api_key:
        print("sessiond chat: give an API key with --api-key or $SESSIOND_API_KEY", file=sys.stderr)
        return 2
    return run_chat(args.url or default_url(args.config), api_key, args.session)
