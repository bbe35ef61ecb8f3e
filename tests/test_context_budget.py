"""Context budgets: a long conversation is fitted into its model's context window.

The model is a real local server speaking the OpenAI protocol (tests/fake_models.py) that
records every request, so each test asserts exactly what the model received.
"""

from __future__ import annotations

import dis
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from actors.agent.backends.base import ModelMessage
from actors.agent.fitting import ContextOverflowError, Fitter
from actors.agent.tokens import ENCODING_SOURCES, TokenCounter, Tokenizers, cache_file, encoding_for
from actors.agent.windows import ProviderLimits, RouteLimits, Windows
from actors.core.summary import ContextSummary
from actors.store.tables import RouteEntry
from server.appkeys import STORE
from tests.conftest import ClientFactory, new_session
from tests.fake_models import PROMPT_TOKENS_PER_MESSAGE, FakeOpenAI, converse
from tests.pg import database

Client = TestClient[Any, Any]

WINDOW = 1200
RESERVE = 200
TURNS = 200
SUMMARY_INSTRUCTION = "Summarise the conversation below"


@pytest.fixture
async def model() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI("ctx-model") as fake:
        yield fake


def _sections(model: FakeOpenAI, strategy: str, **context: Any) -> dict[str, dict[str, Any]]:
    return {
        "providers": {"fake": {"kind": "openai", "base_url": f"{model.url}/v1", "model": "ctx-model"}},
        "agents": {"default": {"model": ["fake"]}},
        "context": {
            "strategy": strategy, "windows": {"ctx-model": WINDOW}, "reserve_tokens": RESERVE,
            "summary_tokens": 100, **context,
        },
    }


def _export(session_id: str, turns: int) -> dict[str, Any]:
    """A conversation of ``turns`` questions and answers, numbered so each is recognisable."""
    messages: list[dict[str, Any]] = []
    parent: str | None = None
    for i in range(turns):
        for role, text in (("user", f"question {i}: what about item {i} of the list?"),
                           ("assistant", f"answer {i}: item {i} is fine and stays as it is.")):
            mid = f"msg_{role[0]}{i}"
            messages.append({"id": mid, "parent_id": parent, "role": role, "content": text,
                             "created_at": "2026-01-01T00:00:00Z"})
            parent = mid
    return {
        "format": "sessiond.session", "version": 1, "active_leaf_id": parent, "messages": messages,
        "session": {"id": session_id, "created_at": "2026-01-01T00:00:00Z"},
    }


def _path_texts(turns: int) -> list[str]:
    return [m["content"] for m in _export("x", turns)["messages"]]


async def _ok(resp: Any, status: int = 200) -> Any:
    assert resp.status == status, await resp.text()
    return await resp.json()


async def _long_session(client: Client, session_id: str) -> str:
    await _ok(await client.post("/v1/sessions/import", json=_export(session_id, TURNS)), 201)
    return session_id


async def _send(client: Client, sid: str, content: str) -> dict[str, Any]:
    out = await _ok(await client.post(f"/v1/sessions/{sid}/messages", json={"content": content}))
    assert out["status"] == "completed", out
    return out  # type: ignore[no-any-return]


def _is_summary_call(body: dict[str, Any]) -> bool:
    return str(body["messages"][0]["content"]).startswith(SUMMARY_INSTRUCTION)


def _answer_calls(model: FakeOpenAI) -> list[dict[str, Any]]:
    return [b for b in model.requests if not _is_summary_call(b)]


def _sent_tokens(messages: list[dict[str, Any]]) -> int:
    counter = TokenCounter()  # ctx-model is unknown to tiktoken: cl100k_base counts it
    return counter.count_messages(str(m["content"]) for m in messages)


async def test_truncate_keeps_the_newest_turns_and_drops_the_oldest(make_client: ClientFactory,
                                                                     model: FakeOpenAI) -> None:
    client = await make_client(**_sections(model, "truncate"))
    doc = _export("ses_long", TURNS)
    doc["session"]["system_prompt"] = "You answer in one short sentence."
    sid = (await _ok(await client.post("/v1/sessions/import", json=doc), 201))["id"]
    out = await _send(client, sid, "the newest question")

    sent = model.requests[-1]["messages"]
    # The system prompt always stays, first.
    assert sent[0] == {"role": "system", "content": "You answer in one short sentence."}
    texts = [m["content"] for m in sent[1:]]
    path = [*_path_texts(TURNS), "the newest question"]
    # A suffix of the conversation, in order and intact, ending with the newest message...
    assert texts[-1] == "the newest question"
    assert texts == path[-len(texts):]
    # ...that starts with a question, not an answer without its question...
    assert sent[1]["role"] == "user" and texts[0].startswith("question ")
    # ...and the oldest turns are gone, all that fits is there.
    assert 20 < len(texts) < len(path)
    assert "question 0: what about item 0 of the list?" not in texts
    assert _sent_tokens(sent) <= WINDOW - RESERVE
    assert _sent_tokens([{"content": path[-len(texts) - 1]}, *sent]) > WINDOW - RESERVE - 40  # no room was wasted
    # usage reports what was sent: the fitted prompt, as the model counted it.
    assert out["usage"]["prompt"] == PROMPT_TOKENS_PER_MESSAGE * len(sent)
    # Nothing was deleted: the session still holds every message.
    page = await _ok(await client.get(f"/v1/sessions/{sid}/messages", params={"limit": "500"}))
    assert len(page["items"]) == 2 * TURNS + 2


async def test_tool_calls_and_results_of_the_answer_are_kept_within_the_window(
    make_client: ClientFactory, model: FakeOpenAI
) -> None:
    client = await make_client(**_sections(model, "truncate"))
    doc = _export("ses_tools", TURNS)
    doc["session"]["tools"] = ["calculator"]
    await _ok(await client.post("/v1/sessions/import", json=doc), 201)
    model.tool_call = ("calculator", '{"expression": "6*7"}')
    out = await _send(client, "ses_tools", "what is six times seven?")
    assert "42" in out["message"]["content"]

    first, second = model.requests[-2]["messages"], model.requests[-1]["messages"]
    # The second round sends what the answer added (the call and its result) after the newest
    # question, and fewer older turns to make room for them.
    assert [m["role"] for m in second[-3:]] == ["user", "assistant", "tool"]
    assert second[-3]["content"] == "what is six times seven?" and second[-1]["content"] == "42"
    assert second[0]["role"] == "user" and len(second) - 2 <= len(first)
    assert [m["content"] for m in second[:-2]] == [m["content"] for m in first][-(len(second) - 2):]
    tools = TokenCounter().count(str(model.requests[-1]["tools"]))
    assert _sent_tokens(second) + tools <= WINDOW - RESERVE + 20


async def test_a_newest_message_too_big_for_the_window_fails_the_task_with_the_reason(
    make_client: ClientFactory, model: FakeOpenAI
) -> None:
    client = await make_client(**_sections(model, "truncate"))
    sid = (await new_session(client))["id"]
    events = await converse(client, sid, "word " * 3000)
    failed = [e for e in events if e.event == "task.failed"]
    assert failed, [e.event for e in events]
    error = failed[0].data["error"]
    assert "ContextOverflowError" in error and f"context window of {WINDOW}" in error, error
    assert model.requests == []  # the model was never asked


@pytest.fixture(params=["sqlite", "postgres"])
async def store_sections(request: Any) -> AsyncIterator[dict[str, Any]]:
    if request.param == "sqlite":
        yield {}
        return
    async with database() as dsn:
        yield {"store": {"kind": "postgres", "postgres_dsn": dsn}}


async def test_summarize_asks_once_reuses_the_hidden_summary_and_keeps_it_across_a_restart(
    make_client: ClientFactory, model: FakeOpenAI, store_sections: dict[str, Any], tmp_path: Path
) -> None:
    sections = {**_sections(model, "summarize"), **store_sections}
    client = await make_client(tmp_path / "data", **sections)
    sid = await _long_session(client, "ses_sum")
    await _send(client, sid, "first new question")

    summaries = [b for b in model.requests if _is_summary_call(b)]
    assert len(summaries) == 1
    # The summary call got older turns (not the newest) and was asked with the agent's model.
    asked = summaries[0]["messages"][1]["content"]
    assert summaries[0]["model"] == "ctx-model" and "first new question" not in asked
    first = _answer_calls(model)[-1]["messages"]
    assert first[0]["role"] == "system" and first[0]["content"].startswith("Summary of the earlier conversation")
    summary_text = first[0]["content"]
    assert first[-1]["content"] == "first new question"
    path = [*_path_texts(TURNS), "first new question"]
    kept = [m["content"] for m in first[1:]]
    assert kept == path[-len(kept):] and len(kept) < len(path)
    assert _sent_tokens(first) <= WINDOW - RESERVE

    # The next turn reuses it: no second summary call, the same summary first.
    await _send(client, sid, "second new question")
    assert sum(_is_summary_call(b) for b in model.requests) == 1
    second = _answer_calls(model)[-1]["messages"]
    assert second[0]["content"] == summary_text and second[-1]["content"] == "second new question"

    # Hidden: not a message, not in the export, not found by search.
    page = await _ok(await client.get(f"/v1/sessions/{sid}/messages", params={"limit": "500"}))
    assert len(page["items"]) == 2 * TURNS + 4
    assert not any("Summary" in m["content"] or "Conversation:" in m["content"] for m in page["items"])
    export = await client.get(f"/v1/sessions/{sid}/export")
    assert export.status == 200 and "Conversation:" not in await export.text()
    found = await _ok(await client.get("/v1/sessions/search", params={"q": "Conversation"}))
    assert found["items"] == []

    # After a restart the stored summary is used again.
    await client.close()
    client = await make_client(tmp_path / "data", **sections)
    third_out = await _send(client, sid, "third new question")
    assert sum(_is_summary_call(b) for b in model.requests) == 1
    third = _answer_calls(model)[-1]["messages"]
    assert third[0]["content"] == summary_text and third[-1]["content"] == "third new question"

    # An edit of the newest question is a branch through the same older turns: same summary.
    question = third_out["message"]["parent_id"]
    edited = await _ok(await client.post(f"/v1/sessions/{sid}/messages/{question}/edit",
                                         json={"content": "third question, edited"}))
    assert edited["status"] == "completed"
    assert sum(_is_summary_call(b) for b in model.requests) == 1
    branch = _answer_calls(model)[-1]["messages"]
    assert branch[0]["content"] == summary_text and branch[-1]["content"] == "third question, edited"
    # An edit of an old question leaves that path: the summary is not its own (and the short
    # branch fits whole).
    await _ok(await client.post(f"/v1/sessions/{sid}/messages/msg_u5/edit", json={"content": "question five?"}))
    assert sum(_is_summary_call(b) for b in model.requests) == 1
    old = [m["content"] for m in _answer_calls(model)[-1]["messages"]]
    assert old == [*_path_texts(5), "question five?"]

    # The summary is kept with its session, and goes with it.
    store = client.app[STORE]
    loaded = await store.load_session(sid, events=10)
    assert loaded is not None and [s.content for s in loaded.summaries] == [summary_text.split(": ", 1)[1]]
    assert (await client.delete(f"/v1/sessions/{sid}")).status == 204
    await _long_session(client, sid)  # the same id again: a new session, with nothing hidden
    again = await store.load_session(sid, events=10)
    assert again is not None and again.summaries == []
    await client.close()


# -- the parts: windows, tokenizers, the fitter -----------------------------------------------


def test_windows_by_provider_by_name_and_the_default() -> None:
    windows = Windows(
        {"openai": ProviderLimits("gpt-4o"), "local": ProviderLimits("llama3", context_window=4096, max_tokens=300),
         "hf": ProviderLimits("meta-llama/Llama-3.1-8B-Instruct")},
        windows={"My-Finetune": 32768}, default_window=5000, reserve_tokens=700,
    )
    assert windows.for_route([RouteEntry("openai")]) == RouteLimits(128_000, 700, "gpt-4o")
    assert windows.for_route([RouteEntry("openai", "gpt-4o-mini-2024-07-18")]).window == 128_000
    assert windows.for_route([RouteEntry("openai", "gpt-4.1-nano")]).window == 1_047_576
    assert windows.for_route([RouteEntry("openai", "gpt-4")]).window == 8_192
    assert windows.for_route([RouteEntry("hf")]).window == 131_072
    assert windows.for_route([RouteEntry("openai", "my-finetune-v2")]).window == 32768
    assert windows.for_route([RouteEntry("openai", "something-else")]).window == 5000
    # The provider's own window wins; a route is fitted to its smallest window.
    assert windows.for_route([RouteEntry("openai"), RouteEntry("local")]) == RouteLimits(4096, 700, "gpt-4o")
    assert windows.for_route([RouteEntry("local")]).reserve == 300


def test_models_are_counted_with_their_own_encoding_or_estimated() -> None:
    assert encoding_for("gpt-4o-mini") == "o200k_base"
    assert encoding_for("gpt-5") == "o200k_base"
    assert encoding_for("openai/gpt-4.1") == "o200k_base"
    assert encoding_for("gpt-4") == "cl100k_base"
    assert encoding_for("llama3:8b") is None
    tokenizers = Tokenizers(None)
    assert tokenizers.for_model("llama3") is tokenizers.default
    assert tokenizers.for_model("gpt-3.5-turbo") is tokenizers.default  # cl100k_base, shipped
    assert tokenizers.for_model("gpt-4o").encoding_name == "o200k_base"


def test_the_o200k_source_is_the_one_tiktoken_itself_would_fetch() -> None:
    """Our cache file name and hash must match the installed tiktoken's, or a cached file
    would not be found (and tiktoken would try to download)."""
    from tiktoken_ext import openai_public  # type: ignore[import-untyped]

    consts = {i.argval for i in dis.get_instructions(openai_public.o200k_base) if isinstance(i.argval, str)}
    url, digest = ENCODING_SOURCES["o200k_base"]
    assert url in consts and digest in consts


def test_a_missing_or_wrong_o200k_file_falls_back_to_the_estimate_offline(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = Tokenizers(tmp_path / "none").for_model("gpt-4o")
    assert missing.count("hello there, how are you?") == TokenCounter().count("hello there, how are you?")
    assert not missing.exact and "is missing" in missing.reason
    assert "an estimate" in caplog.text

    cache = tmp_path / "cache"
    cache.mkdir()
    cache_file(cache, "o200k_base").write_bytes(b"not the vocabulary")
    wrong = Tokenizers(cache).for_model("gpt-4o")
    assert wrong.count("hello") > 0 and not wrong.exact and "SHA-256" in wrong.reason


def _path(n: int) -> list[tuple[str | None, ModelMessage]]:
    out: list[tuple[str | None, ModelMessage]] = []
    for i in range(n):
        out.append((f"u{i}", ModelMessage(role="user", content=f"question {i} about the item number {i}")))
        out.append((f"a{i}", ModelMessage(role="assistant", content=f"answer {i} about the item number {i}")))
    out.append(("new", ModelMessage(role="user", content="the newest question")))
    return out


def test_a_summary_is_valid_for_its_own_path_prefix_only() -> None:
    limits = RouteLimits(window=400, reserve=50, model="x")
    counter = TokenCounter()
    fitter = Fitter([], _path(40), limits=limits, counter=counter)
    plan = fitter.summarize([], 60)
    assert plan is not None and plan.through_id.startswith("a")
    summary = ContextSummary(id="sum_1", through_id=plan.through_id, digest=plan.digest, content="short",
                             created_at="2026-01-01T00:00:00Z", covered=plan.covered)
    # The same path reuses it.
    again = Fitter([], _path(40), limits=limits, counter=counter)
    assert again.summarize([summary], 60) is None and again.summary == summary
    sent = again.messages()
    assert sent[0].content.startswith("Summary of the earlier conversation")
    assert sent[-1].content == "the newest question"
    # The same ids with an older message changed (another prefix): it is not used.
    changed = _path(40)
    changed[2] = ("u1", ModelMessage(role="user", content="an edited question"))
    other = Fitter([], changed, limits=limits, counter=counter)
    assert other.summarize([summary], 60) is not None and other.summary is None


def test_a_new_summary_builds_on_the_previous_one_once_the_newer_turns_outgrow_it() -> None:
    limits = RouteLimits(window=400, reserve=50, model="x")
    counter = TokenCounter()
    fitter = Fitter([], _path(40), limits=limits, counter=counter)
    plan = fitter.summarize([], 60)
    assert plan is not None
    first = ContextSummary(id="sum_1", through_id=plan.through_id, digest=plan.digest, content="the first part",
                           created_at="2026-01-01T00:00:00Z", covered=plan.covered)
    # Twenty turns later the messages after it no longer fit beside it.
    longer = Fitter([], _path(60), limits=limits, counter=counter)
    again = longer.summarize([first], 60)
    assert again is not None and again.previous == "the first part"
    assert again.covered > first.covered and again.through_id != first.through_id
    # It covers the turns after the first summary, not those the first one stands for.
    texts = [m.content for m in again.messages]
    assert texts and all(not t.startswith(("question 0 ", "answer 0 ")) for t in texts)


def test_the_newest_turn_alone_too_big_is_refused() -> None:
    fitter = Fitter([ModelMessage(role="system", content="be brief")],
                    [("u", ModelMessage(role="user", content="word " * 1000))],
                    limits=RouteLimits(window=500, reserve=100, model="x"), counter=TokenCounter())
    with pytest.raises(ContextOverflowError, match="more than the"):
        fitter.truncate()
