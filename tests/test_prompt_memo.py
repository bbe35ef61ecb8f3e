"""The prompt a turn sends is built on what the session's last turn read (PathPrompt, PathGroups):
whatever the conversation did in between, the model receives exactly the active path.

The black-box test drives the real server against a recording model (tests/fake_models.py)
through every way a path changes: growth, an edit (another branch), navigation back, a
regeneration, a restore with a hint, tool results on an answer, a queued message re-attached
under the answer it waited for, and a restart. The property tests hold the two caches against a
fresh build over random trees and windows.
"""

from __future__ import annotations

import gc
import json
import sys
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.agent.backends.base import ModelMessage
from actors.agent.fitting import Fitter, PathGroups, prompt_bound
from actors.agent.tokens import TokenCounter
from actors.agent.windows import RouteLimits
from actors.core.model import ChatMessage
from actors.core.tree import MessageTree, Node, Role, ToolUse
from actors.session.context import PathPrompt, _messages_of
from server.appkeys import REGISTRY
from tests.conftest import ClientFactory, new_session
from tests.fake_models import FakeOpenAI
from tests.sse import read_until

Client = TestClient[Any, Any]
SYSTEM = "You answer briefly."


@pytest.fixture
async def model() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI("memo-model") as fake:
        yield fake


def _sections(model: FakeOpenAI) -> dict[str, dict[str, Any]]:
    return {
        "providers": {"fake": {"kind": "openai", "base_url": f"{model.url}/v1", "model": "memo-model"}},
        "agents": {"default": {"model": ["fake"]}},
        "context": {"windows": {"memo-model": 1_000_000}},
    }


async def _ok(resp: Any, status: int = 200) -> Any:
    assert resp.status == status, await resp.text()
    return await resp.json()


async def _expected(client: Client, sid: str) -> list[dict[str, str]]:
    """What the model must have been sent for the newest answer: the system prompt, then the
    path (from the export) up to the answer's question, each message as the model reads it."""
    doc = await _ok(await client.get(f"/v1/sessions/{sid}/export"))
    by_id = {m["id"]: m for m in doc["messages"]}
    answer = by_id[doc["active_leaf_id"]]
    assert answer["role"] == "assistant"
    path: list[dict[str, Any]] = []
    node_id = answer["parent_id"]
    while node_id is not None:
        path.append(by_id[node_id])
        node_id = by_id[node_id]["parent_id"]
    out = [{"role": "system", "content": SYSTEM}]
    for m in reversed(path):
        if m.get("hint") is not None:
            out.append({"role": "system", "content": f"Instruction for the next answer: {m['hint']}"})
            continue
        for use in m.get("tool_calls") or []:
            if use.get("output") is not None:
                arguments = json.dumps(use["arguments"], separators=(",", ":"))
                text = f"Result of tool {use['name']}({arguments}): {use['output']}"
                out.append({"role": "system", "content": text})
        if m["content"]:
            out.append({"role": m["role"], "content": m["content"]})
    return out


def _sent(model: FakeOpenAI) -> list[dict[str, str]]:
    """The newest answer's prompt as the model received it (role and text; tool turns of the
    answer itself left out)."""
    return [{"role": m["role"], "content": m["content"]} for m in model.requests[-1]["messages"]
            if m["role"] in ("system", "user", "assistant") and not m.get("tool_calls")]


async def _check(client: Client, sid: str, model: FakeOpenAI) -> list[dict[str, str]]:
    expected = await _expected(client, sid)
    assert _sent(model) == expected
    return expected


async def _send(client: Client, sid: str, content: str) -> dict[str, Any]:
    out = await _ok(await client.post(f"/v1/sessions/{sid}/messages", json={"content": content}))
    assert out["status"] == "completed", out
    return out  # type: ignore[no-any-return]


async def test_every_turn_sends_exactly_the_active_path(make_client: ClientFactory, model: FakeOpenAI,
                                                       tmp_path: Path) -> None:
    sections = _sections(model)
    client = await make_client(**sections)
    sid = (await new_session(client, system_prompt=SYSTEM, tools=["calculator"]))["id"]

    # Growth: each turn builds on the last one's path.
    first = await _send(client, sid, "one")
    assert _sent(model) == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "one"}]
    await _send(client, sid, "two")
    third = await _send(client, sid, "three")
    assert len(await _check(client, sid, model)) == 6

    # An edit of the first question: another branch, sharing nothing but the system prompt.
    await _ok(await client.post(f"/v1/sessions/{sid}/messages/{first['message']['parent_id']}/edit",
                                json={"content": "one, edited"}))
    assert _sent(model) == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "one, edited"}]
    await _send(client, sid, "four")
    await _check(client, sid, model)

    # Back to the first branch: its path again, not the edited one's.
    await _ok(await client.post(f"/v1/sessions/{sid}/navigate", json={"message_id": third["message"]["id"]}))
    await _send(client, sid, "five")
    sent = await _check(client, sid, model)
    assert [m["content"] for m in sent[1:4:2]] == ["one", "two"] and sent[-1]["content"] == "five"

    # A regeneration asks the same path again.
    before = _sent(model)
    latest = (await _ok(await client.get(f"/v1/sessions/{sid}/messages")))["items"][-1]
    await _ok(await client.post(f"/v1/sessions/{sid}/messages/{latest['id']}/regenerate"))
    assert _sent(model) == before

    # A restore with a hint: the hint is the newest message, on the path of the checkpoint.
    checkpoints = (await _ok(await client.get(f"/v1/sessions/{sid}/checkpoints")))["items"]
    target = next(c for c in checkpoints if c["message_id"] == third["message"]["id"])
    await _ok(await client.post(f"/v1/sessions/{sid}/checkpoints/{target['id']}/restore",
                                json={"hint": "answer in French"}))
    sent = await _check(client, sid, model)
    assert sent[-1]["content"] == "Instruction for the next answer: answer in French"

    # An answer with a tool call: the result is on the answer once it is done, and the next
    # turn sends it (the answer was still being written when the turn before read the path).
    model.tool_call = ("calculator", '{"expression": "6*7"}')
    await _send(client, sid, "six times seven?")
    model.tool_call = None
    await _send(client, sid, "thanks")
    sent = await _check(client, sid, model)
    # The arguments as the model wrote them (JSON), not Python's repr of them.
    assert 'Result of tool calculator({"expression":"6*7"}): 42' in [m["content"] for m in sent]

    # A message sent while an answer is written waits, then moves under that answer.
    model.mode = "slow"
    model.release.clear()
    slow = await client.post(f"/v1/sessions/{sid}/messages", json={"content": "slow one", "stream": True})
    assert slow.status == 200
    slow_task = (await read_until(slow, "task.started"))[-1].data["task_id"]
    # Its stream answers once the actor holds it, queued behind the answer being written.
    queued = await client.post(f"/v1/sessions/{sid}/messages", params={"queue": "true"},
                               json={"content": "queued one", "stream": True})
    assert queued.status == 200
    model.mode = "ok"
    model.release.set()
    assert (await read_until(slow, {"task.completed", "task.failed"}))[-1].event == "task.completed"
    slow.close()
    # The queued message's stream follows the session from where it was sent: its own task's end.
    ends = {"task.completed", "task.failed"}
    end = (await read_until(queued, ends))[-1]
    while end.data["task_id"] == slow_task:
        end = (await read_until(queued, ends))[-1]
    assert end.event == "task.completed"
    queued.close()
    sent = await _check(client, sid, model)
    assert sent[-3]["content"] == "slow one" and sent[-1]["content"] == "queued one"

    # After a restart the actor reads the whole path again.
    await client.close()
    client = await make_client(tmp_path / "data", **sections)
    await _send(client, sid, "after the restart")
    await _check(client, sid, model)
    await client.close()


# -- the caches against a fresh build ------------------------------------------------------

TREE_OPS = st.lists(
    st.tuples(st.sampled_from(["add", "add", "add", "run", "write", "settle", "move", "read"]),
              st.integers(0, 1000)),
    min_size=1, max_size=60,
)


def _fresh(tree: MessageTree, user_id: str) -> list[ChatMessage]:
    return [m for node in tree.path_to(user_id) for m in _messages_of(node)]


@settings(max_examples=300, deadline=None)
@given(TREE_OPS)
def test_path_prompt_always_equals_a_fresh_read(ops: list[tuple[str, int]]) -> None:
    tree = MessageTree()
    tree.add(Node("n0", None, "user", "root question", "t"))
    prompts = PathPrompt()
    count = 1
    for op, k in ops:
        ids = list(tree.nodes)
        node = tree.nodes[ids[k % len(ids)]]
        if op == "add":
            role: Role = "assistant" if node.role == "user" else "user"
            tree.add(Node(f"n{count}", node.id, role, f"text {count}", "t"))
            count += 1
        elif op == "run":  # an answer being written, under a question
            parent = node if node.role == "user" else tree.nodes[ids[0]]
            tree.add(Node(f"n{count}", parent.id, "assistant", "", "t", status="running"))
            count += 1
        elif op == "write" and node.status == "running":  # only a running answer changes
            node.content += f" more {k}"
            node.tool_calls = [*(node.tool_calls or []), ToolUse(f"c{k}", "calc", {"x": k}, output=str(k))]
        elif op == "settle" and node.status == "running":
            node.status = "completed"
        elif op == "move" and not node.children and node.parent_id is not None:
            others = [i for i in ids if i != node.id and tree.nodes[i].role != node.role]
            if others:
                prompts.path(tree, node.id)
                tree.move(node.id, others[k % len(others)])
                assert prompts.path(tree, node.id) == _fresh(tree, node.id)
        elif op == "read":
            assert prompts.path(tree, node.id) == _fresh(tree, node.id)
        # Every read, wherever it ends, equals a fresh one.
        assert prompts.path(tree, ids[(k * 7) % len(ids)]) == _fresh(tree, ids[(k * 7) % len(ids)])


def _chat(n: int, seed: int) -> list[ChatMessage]:
    """The first ``n`` messages of a conversation (``seed`` picks which): a cut may fall
    between an answer's tool result and its text, which the next turn then adds."""
    out: list[ChatMessage] = []
    for i in range(n):
        role = "user" if i % 2 == 0 else "assistant"
        text = " ".join(["word"] * (1 + (i * 7 + seed) % 23))
        if role == "assistant" and (i + seed) % 5 == 0:  # an answer with a tool result first
            out.append(ChatMessage("system", f"Result of tool t{i}: {seed}", f"m{i}"))
        out.append(ChatMessage(role, text, f"m{i}"))
    return out[:n]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 60), st.integers(0, 3), st.integers(40, 2000)), min_size=1, max_size=8))
def test_groups_kept_between_turns_fit_as_a_fresh_fitter_does(turns: list[tuple[int, int, int]]) -> None:
    counter = TokenCounter()
    memo: object = None
    head = [ModelMessage(role="system", content="be brief")]
    for n, branch, window in turns:
        chat = _chat(n, branch)
        groups = PathGroups.of(memo, chat, counter)
        memo = groups
        limits = RouteLimits(window=window, reserve=30, model="x")
        kept = Fitter(head, groups, limits=limits, counter=counter)
        fresh = Fitter(head, [(m.node_id, ModelMessage(role=m.role, content=m.content)) for m in chat],
                       limits=limits, counter=counter)
        for fitter in (kept, fresh):
            try:
                fitter.truncate()
            except Exception as exc:  # the newest turn alone too big: both refuse it alike
                fitter.messages = lambda tail=(), exc=exc: [type(exc).__name__]  # type: ignore[method-assign, misc, assignment]
        assert kept.messages() == fresh.messages() == _oracle(head, chat, limits, counter)
        assert kept.dropped == fresh.dropped
        # The size the simulated model is handed is the size of what it is sent, with a turn's
        # own messages after the path.
        tail = [ModelMessage(role="tool", content="42", tool_call_id="c", name="t")][: branch % 2]
        for fitter in (kept, fresh):
            if not isinstance(fitter.messages()[0], str):
                assert fitter.bound(tail) == prompt_bound(fitter.messages(tail))


def _oracle(head: list[ModelMessage], chat: list[ChatMessage], limits: RouteLimits,
            counter: TokenCounter) -> list[Any]:
    """What fits, the plain way: whole nodes from the newest back while they fit, never
    starting at an answer, the newest node always (or the refusal)."""
    nodes: list[list[ChatMessage]] = []
    for m in chat:
        if nodes and nodes[-1][0].node_id == m.node_id:
            nodes[-1].append(m)
        else:
            nodes.append([m])
    cost = [sum(counter.count(m.content) + TokenCounter.message_overhead() for m in node) for node in nodes]
    room = limits.window - min(limits.reserve, limits.window // 2) - TokenCounter.message_overhead() - sum(
        counter.count(m.content) + TokenCounter.message_overhead() for m in head)
    if cost and cost[-1] > room:
        return ["ContextOverflowError"]
    start, total = len(nodes), 0
    while start > 0 and total + cost[start - 1] <= room:
        start -= 1
        total += cost[start]
    while start < len(nodes) - 1 and any(m.role == "assistant" for m in nodes[start]):
        start += 1
    start = min(start, len(nodes) - 1) if nodes else 0
    return [*head, *(ModelMessage(role=m.role, content=m.content) for node in nodes[start:] for m in node)]


async def test_a_live_actor_stays_small_before_and_after_its_turns(make_client: ClientFactory,
                                                                   model: FakeOpenAI) -> None:
    """The prompt memo costs an idle actor nothing: it lives with the tree, made by the first
    turn, and the actor keeps few enough attributes for Python to share their key table (past
    29, every actor's attributes take a table of their own, about 1.5 KB)."""
    client = await make_client(**_sections(model))
    sid = (await new_session(client))["id"]
    await _ok(await client.get(f"/v1/sessions/{sid}/messages"))
    registry = client.app[REGISTRY]
    (actor,) = [a for a in registry.actors() if a.id == sid]
    assert actor.tree.memo is None
    idle = sys.getsizeof(vars(actor))
    assert idle < 1000, f"{len(vars(actor))} attributes take {idle} bytes"
    await _send(client, sid, "hello")
    assert actor.tree.memo is not None
    assert sys.getsizeof(vars(actor)) == idle


def test_the_kept_path_holds_no_reference_to_its_tree() -> None:
    """The tree holds its PathPrompt: a reference back would make a cycle, and a passivated
    session's whole tree would wait for a garbage collection instead of going at once."""
    tree = MessageTree()
    tree.add(Node("q", None, "user", "a question", "t"))
    tree.add(Node("a", "q", "assistant", "an answer", "t"))
    tree.add(Node("q2", "a", "user", "another", "t"))
    prompts = tree.memo = PathPrompt()
    assert [m.content for m in prompts.path(tree, "q2")] == ["a question", "an answer", "another"]
    seen: set[int] = set()
    todo: list[object] = [prompts]
    while todo:
        obj = todo.pop()
        assert obj is not tree
        if id(obj) not in seen and not isinstance(obj, (type, types.ModuleType)):
            seen.add(id(obj))
            todo.extend(gc.get_referents(obj))
