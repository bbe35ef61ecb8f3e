"""The OpenAI Responses + Conversations adapter, driven by the official `openai` package
(unmodified, pointed at /openai/v1), its answers validated with the SDK's own types."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from aiohttp.test_utils import TestClient
from openai import AsyncOpenAI
from openai.types.conversations import Conversation, ConversationItem
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from tests.conftest import TEST_KEY, ClientFactory, new_session
from tests.node import base_url

_EVENT = TypeAdapter(ResponseStreamEvent)
_ITEM = TypeAdapter(ConversationItem)


_made: list[AsyncOpenAI] = []


def sdk(client: TestClient[Any, Any], key: str = TEST_KEY) -> AsyncOpenAI:
    """The official client, unmodified, pointed at the test server."""
    api = AsyncOpenAI(base_url=base_url(client) + "/openai/v1", api_key=key, max_retries=0)
    _made.append(api)
    return api


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    yield
    while _made:
        await _made.pop().close()


def strict(event: Any) -> Any:
    """The event as the SDK's types validate it (the SDK itself builds without validating)."""
    return _EVENT.validate_python(event.model_dump(mode="json"))


def text_of(events: list[Any]) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


async def native_messages(client: TestClient[Any, Any], sid: str) -> list[dict[str, Any]]:
    return (await (await client.get(f"/v1/sessions/{sid}/messages")).json())["items"]  # type: ignore[no-any-return]


async def test_a_streamed_response_speaks_the_sdk_types(client: TestClient[Any, Any]) -> None:
    api = sdk(client)
    stream = await api.responses.create(model="default", input="hello there", stream=True)
    events = [strict(e) async for e in stream]
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    final = events[-1].response
    assert isinstance(final, Response) and final.status == "completed"
    assert final.output_text == text_of(events) == events[-4].text != ""
    assert final.usage is not None and final.usage.output_tokens == 20
    assert final.conversation is not None
    sid = final.conversation.id
    stored = await native_messages(client, sid)
    assert stored[-1]["content"] == final.output_text and stored[-1]["id"] == final.output[0].id
    # sequence_number is the session's event id: never falling, and each one the native stream's.
    seqs = [e.sequence_number for e in events]
    assert seqs == sorted(seqs)
    native = await client.get(f"/v1/sessions/{sid}/stream", headers={"Last-Event-ID": "0"})
    ids: set[int] = set()
    async for raw in native.content:
        line = raw.decode().strip()
        if line.startswith("id: "):
            ids.add(int(line[4:]))
        if line == "event: task.completed":
            break
    native.close()
    assert set(seqs) <= ids
    # The SDK's own stream helper accumulates it into the same response.
    async with api.responses.stream(model="default", input="again", conversation=sid) as helper:
        done = await helper.get_final_response()
    assert done.status == "completed" and done.output_text == (await native_messages(client, sid))[-1]["content"]
    assert done.previous_response_id == final.id


async def test_waiting_responses_continue_and_branch(client: TestClient[Any, Any]) -> None:
    api = sdk(client)
    first = await api.responses.create(input="first", instructions="Be brief.", metadata={"topic": "t"})
    assert first.status == "completed" and first.output_text and first.instructions == "Be brief."
    assert first.metadata == {"topic": "t"} and first.previous_response_id is None
    second = await api.responses.create(input="second", previous_response_id=first.id)
    assert second.conversation is not None and first.conversation is not None
    assert second.conversation.id == first.conversation.id and second.previous_response_id == first.id
    sid = first.conversation.id
    assert len(await native_messages(client, sid)) == 4
    # From the first answer again: a branch, made the active path.
    branch = await api.responses.create(input="other second", previous_response_id=first.id)
    items = [item async for item in api.conversations.items.list(sid, order="asc")]
    for item in items:
        _ITEM.validate_python(item.model_dump(mode="json"))
    texts = [item.content[0].text for item in items if item.type == "message"]  # type: ignore[union-attr]
    assert texts == ["first", first.output_text, "other second", branch.output_text]
    tree = await (await client.get(f"/v1/sessions/{sid}/tree")).json()
    first_answer = next(n for n in tree["nodes"] if n["id"] == first.output[0].id)
    assert len(first_answer["children"]) == 2
    # Retrieve gives the same response as the one that came back, and its input.
    again = await api.responses.retrieve(second.id)
    assert again.output_text == second.output_text and again.status == "completed"
    assert again.previous_response_id == first.id
    inputs = await api.responses.input_items.list(second.id)
    assert [i.content[0].text for i in inputs.data] == ["second"]  # type: ignore[union-attr, index]


async def test_background_response_resumes_after_a_cut(make_client: ClientFactory) -> None:
    client = await make_client(simulated={"tokens_per_second": 100, "reply_tokens": 60})
    api = sdk(client)
    started = await api.responses.create(input="go", background=True)
    assert started.status == "in_progress" and started.background is True
    stream = await api.responses.retrieve(started.id, stream=True)
    before: list[Any] = []
    async for event in stream:
        before.append(strict(event))
        if len([e for e in before if e.type == "response.output_text.delta"]) == 5:
            break
    await stream.close()  # cut mid-answer
    cut = before[-1].sequence_number
    resumed = await api.responses.retrieve(started.id, stream=True, starting_after=cut)
    after = [strict(e) async for e in resumed]
    assert after[0].sequence_number > cut
    whole = before + after
    kinds = [e.type for e in whole]
    assert kinds.count("response.created") == 1 and kinds.count("response.output_item.added") == 1
    assert kinds[-1] == "response.completed"
    final = after[-1].response
    # Nothing lost, nothing doubled: the deltas from both sides are the whole answer.
    assert text_of(whole) == final.output_text
    assert len(final.output_text.split()) == 60
    assert (await api.responses.retrieve(started.id)).output_text == final.output_text
    # A finished response resumes too, from any point.
    replay = await api.responses.retrieve(started.id, stream=True, starting_after=0)
    assert text_of([strict(e) async for e in replay]) == final.output_text


async def test_cancel_keeps_the_partial_answer(make_client: ClientFactory) -> None:
    client = await make_client(simulated={"tokens_per_second": 50, "reply_tokens": 300})
    api = sdk(client)
    started = await api.responses.create(input="long", background=True)
    stream = await api.responses.retrieve(started.id, stream=True)
    async for event in stream:
        if event.type == "response.output_text.delta":
            break
    cancelled = await api.responses.cancel(started.id)
    assert cancelled.status == "cancelled"
    partial = cancelled.output_text
    assert 0 < len(partial.split()) < 300
    rest = [strict(e) async for e in stream]
    assert rest[-1].type == "response.incomplete" and rest[-1].response.status == "cancelled"
    assert rest[-1].response.output_text == partial
    assert started.conversation is not None
    stored = await native_messages(client, started.conversation.id)
    assert stored[-1]["status"] == "cancelled" and stored[-1]["content"] == partial
    # Cancelling again changes nothing.
    assert (await api.responses.cancel(started.id)).output_text == partial


async def test_conversations_crud_and_items(client: TestClient[Any, Any]) -> None:
    api = sdk(client)
    conv = await api.conversations.create(
        metadata={"k": "v"},
        items=[{"type": "message", "role": "system", "content": "You are terse."},
               {"type": "message", "role": "user", "content": "earlier question"},
               {"type": "message", "role": "assistant", "content": "earlier answer"}],
    )
    assert isinstance(conv, Conversation) and conv.metadata == {"k": "v"}
    got = await api.conversations.retrieve(conv.id)
    assert got.id == conv.id and got.created_at == conv.created_at
    items = [i async for i in api.conversations.items.list(conv.id, order="asc")]
    assert [(i.role, i.content[0].text) for i in items] == [  # type: ignore[union-attr, index]
        ("user", "earlier question"), ("assistant", "earlier answer")]
    reply = await api.responses.create(input="now", conversation=conv.id)
    assert reply.instructions == "You are terse."
    newest_first = await api.conversations.items.list(conv.id, limit=2)
    assert [i.id for i in newest_first.data] == [reply.output[0].id, (await native_messages(client, conv.id))[2]["id"]]
    assert newest_first.has_more
    assert reply.output[0].id is not None
    one = await api.conversations.items.retrieve(reply.output[0].id, conversation_id=conv.id)
    assert one.content[0].text == reply.output_text  # type: ignore[union-attr, index]
    updated = await api.conversations.update(conv.id, metadata={"n": "1"})
    assert updated.metadata == {"n": "1"}
    # sessiond's own: the list OpenAI lacks.
    listed = await api.get("/conversations", cast_to=object)
    assert conv.id in [c["id"] for c in listed["data"]]  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as refused:
        await api.conversations.items.create(conv.id, items=[{"type": "message", "role": "user", "content": "x"}])
    assert "responses" in refused.value.message
    deleted = await api.conversations.delete(conv.id)
    assert deleted.deleted is True and deleted.id == conv.id
    with pytest.raises(openai.NotFoundError):
        await api.conversations.retrieve(conv.id)
    assert (await client.get(f"/v1/sessions/{conv.id}")).status == 404


async def test_tool_calls_are_server_side_mcp_calls(client: TestClient[Any, Any]) -> None:
    s = await new_session(client, tools=["calculator"])
    api = sdk(client)
    stream = await api.responses.create(input='/tool calculator {"expression": "6 * 7"}', conversation=s["id"],
                                        stream=True)
    events = [strict(e) async for e in stream]
    final = events[-1].response
    call = final.output[0]
    assert call.type == "mcp_call" and call.name == "calculator" and "42" in (call.output or "")
    assert final.output[1].type == "message" and "42" in final.output_text
    done = [e.item for e in events if e.type == "response.output_item.done"]
    assert done[0].type == "mcp_call" and done[0].output == call.output


async def test_a_session_token_sees_only_its_own_session(client: TestClient[Any, Any]) -> None:
    mine = await new_session(client, with_token=True)
    other = await sdk(client).responses.create(input="not yours")
    api = sdk(client, mine["access_token"])
    own = await api.responses.create(input="mine")
    assert own.conversation is not None and own.conversation.id == mine["id"]
    assert (await api.conversations.retrieve(mine["id"])).id == mine["id"]
    assert other.conversation is not None
    for call in (
        api.responses.retrieve(other.id),
        api.responses.cancel(other.id),
        api.responses.input_items.list(other.id),
        api.conversations.retrieve(other.conversation.id),
        api.conversations.items.list(other.conversation.id),
        api.responses.create(input="x", conversation=other.conversation.id),
        api.responses.create(input="x", previous_response_id=other.id),
    ):
        with pytest.raises(openai.NotFoundError):
            await call
    with pytest.raises(openai.PermissionDeniedError):
        await api.conversations.create()
    with pytest.raises(openai.AuthenticationError):
        await sdk(client, "sk-wrong").responses.create(input="x")


async def test_bad_requests_get_openai_errors(client: TestClient[Any, Any]) -> None:
    api = sdk(client)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"model": "gpt-nonexistent", "input": "x"}, "agent id"),
        ({"input": "x", "store": False}, "store"),
        ({"input": [{"type": "message", "role": "assistant", "content": "x"}]}, "conversation"),
        ({"input": "x", "extra_body": {"bogus": 1}}, "bogus"),
        ({}, "one user message"),
        ({"input": "x", "tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools"),
    ]
    for kwargs, word in cases:
        with pytest.raises(openai.BadRequestError) as err:
            await api.responses.create(**kwargs)
        assert word in err.value.message, kwargs
        body = err.value.body
        assert isinstance(body, dict) and {"message", "type", "code"} <= set(body), body
    with pytest.raises(openai.NotFoundError):
        await api.responses.create(input="x", previous_response_id="resp_nope")
    with pytest.raises(openai.NotFoundError):
        await api.responses.retrieve("resp_ses_nope.tsk_nope")
    with pytest.raises(openai.BadRequestError):
        await api.responses.delete((await api.responses.create(input="kept")).id)


async def test_model_names_an_agent_or_a_route(client: TestClient[Any, Any]) -> None:
    api = sdk(client)
    agent = await (await client.post("/v1/agents", json={"name": "terse", "system_prompt": "Be terse."})).json()
    by_agent = await api.responses.create(model=agent["id"], input="hi")
    assert by_agent.status == "completed" and by_agent.conversation is not None
    assert (await (await client.get(f"/v1/sessions/{by_agent.conversation.id}")).json())["agent_id"] == agent["id"]
    # A provider/model route: an agent is made for it once, and used again.
    first = await api.responses.create(model="simulated/simulated", input="hi")
    again = await api.responses.create(model="simulated/simulated", input="hi")
    agents = (await (await client.get("/v1/agents")).json())["items"]
    routes = [a for a in agents if a["name"] == "route simulated/simulated"]
    assert len(routes) == 1 and routes[0]["model"] == [{"provider": "simulated", "model": "simulated"}]
    for r in (first, again):
        assert r.conversation is not None
        assert (await (await client.get(f"/v1/sessions/{r.conversation.id}")).json())["agent_id"] == routes[0]["id"]
    # A conversation answers with its own agent.
    with pytest.raises(openai.BadRequestError) as err:
        await api.responses.create(model="default", input="x", previous_response_id=by_agent.id)
    assert err.value.code == "model_mismatch"
    with pytest.raises(openai.BadRequestError) as err:
        await api.responses.create(input="x", instructions="Be verbose.", previous_response_id=by_agent.id)
    assert err.value.code == "instructions_mismatch"
    ok = await api.responses.create(model=agent["id"], input="and?", previous_response_id=by_agent.id)
    assert ok.status == "completed"


async def _agent_names(client: TestClient[Any, Any]) -> list[str]:
    return sorted(a["name"] for a in (await (await client.get("/v1/agents")).json())["items"])


async def test_only_the_operator_makes_a_route_and_metadata_stays_bounded(client: TestClient[Any, Any]) -> None:
    """A route names a stored agent: a session token (a guest's, say) or an end user's call
    cannot make one per request, only use one the operator's call made. Metadata takes
    OpenAI's bounds per request, and the session's whole metadata stays within sessiond's."""
    mine = await new_session(client, with_token=True)
    token = sdk(client, mine["access_token"])
    end_user = AsyncOpenAI(base_url=base_url(client) + "/openai/v1", api_key=TEST_KEY, max_retries=0,
                           default_headers={"X-End-User-ID": "u1"})
    _made.append(end_user)
    before = await _agent_names(client)
    for api in (token, end_user):
        with pytest.raises(openai.BadRequestError) as err:
            await api.responses.create(model="simulated/made-up-by-a-caller", input="hi")
        assert err.value.code == "model_not_found"
    assert await _agent_names(client) == before, "no agent stored"
    made = await sdk(client).responses.create(model="simulated/simulated", input="hi")  # the operator
    used = await end_user.responses.create(model="simulated/simulated", input="hi")
    assert made.status == used.status == "completed"
    assert await _agent_names(client) == sorted([*before, "route simulated/simulated"])

    with pytest.raises(openai.BadRequestError):
        await token.responses.create(input="x", metadata={f"k{i}": "v" for i in range(17)})
    with pytest.raises(openai.BadRequestError):
        await token.responses.create(input="x", metadata={"k": "v" * 513})
    # 16 new pairs of 512 characters a response: the session's metadata fills up, then refuses.
    statuses = []
    for round_ in range(10):
        try:
            await token.responses.create(
                input="x", metadata={f"r{round_}k{i}": "v" * 512 for i in range(16)}
            )
            statuses.append(200)
        except openai.APIStatusError as exc:
            assert "metadata" in exc.message
            statuses.append(exc.status_code)
    assert statuses == [200] * 7 + [400] * 3, statuses
    record = await (await client.get(f"/v1/sessions/{mine['id']}")).json()
    assert len(record["metadata"]) == 7 * 16
