"""Model providers against real local servers: OpenAI's streaming protocol, Ollama's, routing
with fallback (down, slow, 500), recovery after the cool-down, an answer cut mid-way."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from server.appkeys import ROUTER
from tests.conftest import ClientFactory, new_session
from tests.fake_models import PROMPT_TOKENS_PER_MESSAGE, FakeOllama, FakeOpenAI, closed_port_url, converse

FakeFactory = Callable[..., Awaitable[Any]]


@pytest.fixture
async def fake() -> AsyncIterator[FakeFactory]:
    made: list[Any] = []

    async def factory(label: str, kind: str = "openai") -> Any:
        model = FakeOpenAI(label) if kind == "openai" else FakeOllama(label)
        await model.start()
        made.append(model)
        return model

    yield factory
    for model in made:
        await model.stop()


def openai(url: str, model: str = "m", **extra: Any) -> dict[str, Any]:
    return {"kind": "openai", "base_url": url + "/v1", "model": model, **extra}


def ollama(url: str, model: str = "llama", **extra: Any) -> dict[str, Any]:
    return {"kind": "ollama", "base_url": url, "model": model, **extra}


def text_of(events: list[Any]) -> str:
    return "".join(e.data["delta"] for e in events if e.event == "message.delta")


def completed(events: list[Any]) -> dict[str, Any]:
    return next(e.data for e in events if e.event == "message.completed")  # type: ignore[no-any-return]


async def test_openai_streams_tokens_with_reported_usage(make_client: ClientFactory, fake: FakeFactory) -> None:
    model = await fake("gpt-fake")
    client = await make_client(
        providers={"main": openai(model.url, "gpt-fake")}, agents={"default": {"model": ["main"]}}
    )
    s = await new_session(client)
    events = await converse(client, s["id"], "good morning")
    assert events[-1].event == "task.completed"
    deltas = [e.data["delta"] for e in events if e.event == "message.delta"]
    assert len(deltas) > 3, "tokens are passed on as they come, not in one piece"
    assert "".join(deltas) == "Hello from gpt-fake, you said: good morning"
    done = completed(events)
    assert done["message"]["model"] == "main/gpt-fake"
    prompt = PROMPT_TOKENS_PER_MESSAGE * 1
    assert done["usage"] == {"prompt": prompt, "completion": len(deltas), "total": prompt + len(deltas)}
    sent = model.requests[0]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["messages"] == [{"role": "user", "content": "good morning"}]
    history = await (await client.get(f"/v1/sessions/{s['id']}/messages")).json()
    assert history["items"][-1]["model"] == "main/gpt-fake"
    details = await (await client.get(f"/v1/sessions/{s['id']}")).json()
    assert details["usage"]["total"] == prompt + len(deltas)


async def test_the_model_is_asked_while_the_question_commits(
    make_client: ClientFactory, fake: FakeFactory, tmp_path: Path
) -> None:
    """A task's model call does not wait for the commit of its start, and nothing of the answer
    is shown before that commit: with the database's write lock held by another connection the
    model is asked all the same; once the commit lands, the stream opens with task.started and
    the whole answer follows it."""
    model = await fake("eager")
    client = await make_client(
        tmp_path, providers={"main": openai(model.url, "eager")}, agents={"default": {"model": ["main"]}}
    )
    s = await new_session(client)
    assert text_of(await converse(client, s["id"], "hello")) == "Hello from eager, you said: hello"  # actor live
    model.asked.clear()
    other = sqlite3.connect(tmp_path / "sessiond.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # the server's writer now waits (up to its 5 s busy timeout)
    sending = asyncio.ensure_future(converse(client, s["id"], "are you there"))
    try:
        await asyncio.wait_for(model.asked.wait(), 4)
        assert not sending.done()
    finally:
        other.execute("COMMIT")
        other.close()
    events = await sending
    assert [e.event for e in events][:2] == ["task.started", "message.delta"]
    assert text_of(events) == "Hello from eager, you said: are you there"
    assert events[-1].event == "task.completed"


async def test_openai_usage_is_counted_when_not_reported(make_client: ClientFactory, fake: FakeFactory) -> None:
    model = await fake("quiet")
    model.report_usage = False
    client = await make_client(providers={"main": openai(model.url)}, agents={"default": {"model": ["main"]}})
    s = await new_session(client)
    events = await converse(client, s["id"], "1234567890 1234567890")
    usage = completed(events)["usage"]
    # The reply is 17 cl100k tokens (digits go three to a token; 4 characters a token would say
    # 13); the prompt, one message of 9 tokens plus the chat format's overhead.
    assert usage["completion"] == 17
    assert usage["prompt"] == 9 + 3 + 3
    assert usage["total"] == usage["prompt"] + usage["completion"]


async def test_openai_tool_calling_round_trip(make_client: ClientFactory, fake: FakeFactory) -> None:
    model = await fake("tooly")
    model.tool_call = ("calculator", '{"expression": "6 * 7"}')
    client = await make_client(providers={"main": openai(model.url)}, agents={"default": {"model": ["main"]}})
    s = await new_session(client, tools=["calculator"])
    events = await converse(client, s["id"], "what is six times seven?")
    kinds = [e.event for e in events]
    assert kinds.index("tool.call") < kinds.index("tool.result") < kinds.index("message.completed")
    call = next(e.data for e in events if e.event == "tool.call")
    assert call["name"] == "calculator" and call["arguments"] == {"expression": "6 * 7"}
    result = next(e.data for e in events if e.event == "tool.result")
    assert result == {**result, "call_id": "call_1", "output": "42", "is_error": False}
    assert text_of(events) == "tooly read the tool result: 42"
    assert "checkpoint.created" in kinds[kinds.index("tool.result") :]
    # The first request offered the tool; the second carried the call and its result back.
    assert model.requests[0]["tools"][0]["function"]["name"] == "calculator"
    second = model.requests[1]["messages"]
    assert second[-2]["tool_calls"][0] == {
        "id": "call_1", "type": "function", "function": {"name": "calculator", "arguments": '{"expression": "6 * 7"}'}
    }
    assert second[-1] == {"role": "tool", "tool_call_id": "call_1", "content": "42"}
    # Usage adds up both model calls.
    usage = completed(events)["usage"]
    assert usage["prompt"] == PROMPT_TOKENS_PER_MESSAGE * (1 + 3)
    exported = await (await client.get(f"/v1/sessions/{s['id']}/export")).json()
    answer = next(n for n in exported["messages"] if n["role"] == "assistant")
    assert answer["tool_calls"][0]["output"] == "42"


async def test_ollama_streams_calls_tools_and_reports_usage(make_client: ClientFactory, fake: FakeFactory) -> None:
    model = await fake("llama-fake", kind="ollama")
    model.tool_call = ("calculator", '{"expression": "2 ** 10"}')
    client = await make_client(
        providers={"local": ollama(model.url, "llama-fake")},
        agents={"default": {"model": ["local"], "temperature": 0.2}},
    )
    s = await new_session(client, tools=["calculator"])
    events = await converse(client, s["id"], "two to the tenth?")
    assert events[-1].event == "task.completed"
    assert next(e.data for e in events if e.event == "tool.result")["output"] == "1024"
    assert text_of(events) == "llama-fake read the tool result: 1024"
    assert completed(events)["message"]["model"] == "local/llama-fake"
    first, second = model.requests
    assert first["stream"] is True and first["options"] == {"temperature": 0.2}
    assert second["messages"][-1] == {"role": "tool", "content": "1024", "tool_name": "calculator"}
    assert second["messages"][-2]["tool_calls"] == [
        {"function": {"name": "calculator", "arguments": {"expression": "2 ** 10"}}}
    ]
    usage = completed(events)["usage"]
    assert usage["prompt"] == PROMPT_TOKENS_PER_MESSAGE * (1 + 3)  # both calls' prompt_eval_count
    assert usage["total"] == usage["prompt"] + usage["completion"]


async def test_fallback_when_the_first_provider_is_down(make_client: ClientFactory, fake: FakeFactory) -> None:
    good = await fake("backup")
    client = await make_client(
        providers={"down": openai(closed_port_url()), "backup": openai(good.url, "backup")},
        agents={"default": {"model": ["down", "backup"]}},
    )
    s = await new_session(client)
    events = await converse(client, s["id"], "anyone there?")
    assert events[-1].event == "task.completed"
    assert completed(events)["message"]["model"] == "backup"
    health = {p["name"]: p for p in (await (await client.get("/v1/providers")).json())["items"]}
    assert health["down"]["healthy"] is False and "cannot reach" in health["down"]["reason"]
    assert health["backup"]["healthy"] is True


async def test_fallback_when_the_first_token_is_too_slow(make_client: ClientFactory, fake: FakeFactory) -> None:
    slow, good = await fake("slow"), await fake("quick")
    slow.mode = "slow"
    client = await make_client(
        providers={"slow": openai(slow.url, first_token_timeout_seconds=0.3), "quick": openai(good.url)},
        agents={"default": {"model": ["slow", "quick"]}},
    )
    s = await new_session(client)
    events = await converse(client, s["id"], "hurry")
    assert events[-1].event == "task.completed"
    assert text_of(events) == "Hello from quick, you said: hurry"
    assert len(slow.requests) == 1 and len(good.requests) == 1


async def test_fallback_on_500_then_recovery_after_the_cooldown(make_client: ClientFactory, fake: FakeFactory) -> None:
    flaky, good = await fake("flaky"), await fake("steady")
    flaky.mode = "error"
    client = await make_client(
        providers={"flaky": openai(flaky.url), "steady": openai(good.url)},
        agents={"default": {"model": ["flaky", "steady"]}},
        routing={"cooldown_seconds": 0.2, "probe_interval_seconds": 0.05},
    )
    router = client.app[ROUTER]
    s = await new_session(client)
    events = await converse(client, s["id"], "first")
    assert text_of(events) == "Hello from steady, you said: first"
    assert not router.is_healthy("flaky")

    events = await converse(client, s["id"], "second")
    assert text_of(events) == "Hello from steady, you said: second"
    assert len(flaky.requests) == 1, "an unhealthy provider is skipped during its cool-down"

    flaky.mode = "ok"
    await asyncio.wait_for(router.wait_healthy("flaky"), 10)  # the health probe brought it back
    assert flaky.probes >= 1
    events = await converse(client, s["id"], "third")
    assert text_of(events) == "Hello from flaky, you said: third"
    assert completed(events)["message"]["model"] == "flaky"  # the model the server named


async def test_a_model_dying_mid_answer_fails_the_task_and_keeps_the_text(
    make_client: ClientFactory, fake: FakeFactory
) -> None:
    dying, good = await fake("dying"), await fake("never")
    dying.mode = "die"
    client = await make_client(
        providers={"dying": openai(dying.url), "never": openai(good.url)},
        agents={"default": {"model": ["dying", "never"]}},
    )
    s = await new_session(client)
    events = await converse(client, s["id"], "tell me")
    assert events[-1].event == "task.failed"
    assert "dying" in events[-1].data["error"]
    assert text_of(events) == "Hello from"
    assert completed(events)["message"]["content"] == "Hello from"
    assert completed(events)["message"]["status"] == "failed"
    assert good.requests == [], "no fallback once the answer has begun"
    history = await (await client.get(f"/v1/sessions/{s['id']}/messages")).json()
    assert history["items"][-1]["content"] == "Hello from" and history["items"][-1]["status"] == "failed"


async def test_every_provider_failing_fails_the_task_with_each_reason(
    make_client: ClientFactory, fake: FakeFactory
) -> None:
    broken = await fake("broken")
    broken.mode = "error"
    client = await make_client(
        providers={"a": openai(closed_port_url()), "b": openai(broken.url)}, agents={"default": {"model": ["a", "b"]}}
    )
    s = await new_session(client)
    events = await converse(client, s["id"], "hello?")
    assert events[-1].event == "task.failed"
    error = events[-1].data["error"]
    assert "a: cannot reach" in error and "b: HTTP 500: broken is broken" in error


async def test_a_failure_names_the_providers_skipped_while_unhealthy(
    make_client: ClientFactory, fake: FakeFactory
) -> None:
    good = await fake("good")
    client = await make_client(
        providers={"a": openai(closed_port_url()), "b": openai(good.url)}, agents={"default": {"model": ["a", "b"]}}
    )
    s = await new_session(client)
    assert (await converse(client, s["id"], "one"))[-1].event == "task.completed"  # a failed, b answered
    good.mode = "error"
    events = await converse(client, s["id"], "two")
    error = events[-1].data["error"]
    assert events[-1].event == "task.failed"
    assert "b: HTTP 500" in error and "a: skipped while unhealthy (a: cannot reach" in error


async def test_a_bad_request_is_not_retried_elsewhere(make_client: ClientFactory, fake: FakeFactory) -> None:
    good = await fake("fine")
    client = await make_client(
        providers={"a": {**openai(good.url), "base_url": good.url + "/nowhere"}, "b": openai(good.url)},
        agents={"default": {"model": ["a", "b"]}},
    )
    s = await new_session(client)
    events = await converse(client, s["id"], "hi")
    assert events[-1].event == "task.failed" and "HTTP 404" in events[-1].data["error"]
    assert good.requests == []


async def test_simulated_model_drives_tools(make_client: ClientFactory) -> None:
    client = await make_client()
    s = await new_session(client, tools=["calculator"])
    events = await converse(client, s["id"], '/tool calculator {"expression": "2+3"}')
    assert [e.event for e in events if e.event.startswith("tool.")] == ["tool.call", "tool.result"]
    assert next(e.data for e in events if e.event == "tool.call")["arguments"] == {"expression": "2+3"}
    assert next(e.data for e in events if e.event == "tool.result")["output"] == "5"
    assert text_of(events) == "calculator: 5"
    assert completed(events)["message"]["model"] == "simulated"
    checkpoints = (await (await client.get(f"/v1/sessions/{s['id']}/checkpoints")).json())["items"]
    assert [c["label"] for c in checkpoints] == ["tool:calculator", "answer"]


async def _one_write_openai(aiohttp_server: Any, body: list[bytes]) -> str:
    """A chat-completions server that answers with ``body``, each item one write."""
    from aiohttp import web

    async def chat(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for piece in body:
            await resp.write(piece)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    server = await aiohttp_server(app)
    return str(server.make_url("/v1"))


def _sse(*contents: str) -> bytes:
    import msgspec

    lines = [
        b"data: " + msgspec.json.encode({"model": "m", "choices": [{"delta": {"content": c}}]}) + b"\n\n"
        for c in contents
    ]
    return b"".join(lines)


async def test_the_deltas_of_one_network_read_go_as_one_batch(aiohttp_server: Any) -> None:
    from actors.agent.backends.base import ModelCall, ModelMessage
    from actors.agent.backends.openai import OpenAIBackend
    from actors.agent.backends.upstream import UpstreamSettings
    from actors.agent.tokens import TokenCounter
    from actors.core.model import Chunk

    words = ["one", " two", " three", " four", " five"]
    finish = b'data: {"choices": [{"delta": {}, "finish_reason": "stop"}]}\n\n'
    usage = b'data: {"usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}}\n\ndata: [DONE]\n\n'
    whole = _sse(*words)
    cut = whole.index(b"three") + 2  # a line split between two reads is put together again
    url = await _one_write_openai(aiohttp_server, [_sse(*words), whole[:cut], whole[cut:] + finish + usage])
    backend = OpenAIBackend("main", UpstreamSettings(base_url=url), model="m", counter=TokenCounter())
    try:
        got = [item async for item in backend.stream(ModelCall(messages=[ModelMessage(role="user")], model="m"))]
    finally:
        await backend.aclose()
    batches = [item.deltas for item in got if isinstance(item, Chunk) and item.deltas]
    assert [d for batch in batches for d in batch] == words * 2, "every delta once, in order"
    assert batches[0][:5] == words, "five deltas written at once arrive in one batch (with what followed)"
    assert len(batches) < 2 * len(words)
    last = got[-1]
    assert isinstance(last, Chunk) and last.usage is not None and last.usage.total == 8
