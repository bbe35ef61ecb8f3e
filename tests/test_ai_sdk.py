"""The Vercel AI SDK adapter, driven by the `ai` package itself (DefaultChatTransport and
readUIMessageStream in Node) and checked on the wire."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import HEADERS, ClientFactory, new_session
from tests.node import base_url, require_node, run_node
from tests.ui_stream import frames, text_of, types


@pytest.fixture(autouse=True)
def _node() -> None:
    require_node()


def message_text(message: dict[str, Any]) -> str:
    return "".join(p["text"] for p in message["parts"] if p["type"] == "text")


async def history(client: TestClient[Any, Any], sid: str) -> list[dict[str, Any]]:
    resp = await client.get(f"/v1/ai-sdk/chat/{sid}/messages")
    assert resp.status == 200
    return await resp.json()  # type: ignore[no-any-return]


def user(id_: str, text: str) -> dict[str, Any]:
    return {"id": id_, "role": "user", "parts": [{"type": "text", "text": text}]}


async def test_the_sdk_sends_and_reads_the_answer(client: TestClient[Any, Any]) -> None:
    s = await new_session(client)
    got = await run_node("ai_sdk_chat.mjs", "send", base_url(client), s["id"], HEADERS, {"text": "hello there"})
    assert got["errors"] == []
    message = got["message"]
    stored = await history(client, s["id"])
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert stored[0]["parts"] == [{"type": "text", "text": "hello there"}]
    # The SDK's message is sessiond's: same id, same text, finished.
    assert message["id"] == stored[1]["id"]
    assert message_text(message) == message_text(stored[1]) != ""
    assert message["metadata"]["status"] == "completed"
    assert [p["type"] for p in message["parts"]] == ["step-start", "text"]
    assert message["parts"][1]["state"] == "done"


async def test_the_wire_is_the_ui_message_stream_with_ids(client: TestClient[Any, Any]) -> None:
    s = await new_session(client)
    resp = await client.post("/v1/ai-sdk/chat", json={
        "id": s["id"], "messages": [user("c1", "hi")], "trigger": "submit-message", "messageId": None,
        "anything": "the frontend's own body fields are ignored",
    })
    assert resp.status == 200
    assert resp.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    got = await frames(resp)
    t = types(got)
    assert t[:4] == ["start", "start-step", "text-start", "text-delta"]
    assert t[-5:] == ["text-delta", "text-end", "finish-step", "finish", "[DONE]"]
    assert all(f.id for f in got), "every frame carries sessiond's id"
    assert len({f.id for f in got}) == len(got), "no id twice"
    native = await client.get(f"/v1/sessions/{s['id']}/stream", headers={"Last-Event-ID": "0"})
    native_ids = set()
    async for raw in native.content:
        line = raw.decode().strip()
        if line.startswith("id: "):
            native_ids.add(line[4:])
        if line == "event: task.completed":
            break
    native.close()
    # The last chunk of each session event carries that event's id; the ones before it, id.k.
    plain = [f.id for f in got if f.id is not None and "." not in f.id]
    assert set(plain) <= native_ids
    assert got[0].data["messageId"] == (await history(client, s["id"]))[1]["id"]


async def test_cut_mid_answer_and_resume_with_the_sdk(make_client: ClientFactory) -> None:
    client = await make_client(simulated={"tokens_per_second": 100, "reply_tokens": 80})
    s = await new_session(client)
    got = await run_node("ai_sdk_chat.mjs", "cut", base_url(client), s["id"], HEADERS, {"text": "go", "k": 8})
    assert got["errors"] == []
    before = "".join(c["delta"] for c in got["before"] if c["type"] == "text-delta")
    assert before, "the cut came mid-answer"
    resumed = message_text(got["message"])
    stored = await history(client, s["id"])
    # The resumed stream is the whole answer from its start: nothing lost, nothing doubled.
    assert resumed == message_text(stored[-1])
    assert resumed.startswith(before)
    assert len(resumed.split()) == 80
    assert got["message"]["id"] == stored[-1]["id"]


async def test_last_event_id_resumes_exactly_even_between_chunks_of_one_event(make_client: ClientFactory) -> None:
    client = await make_client(simulated={"tokens_per_second": 100, "reply_tokens": 60})
    s = await new_session(client)
    body = {"id": s["id"], "messages": [user("c1", "go")], "trigger": "submit-message"}
    resp = await client.post("/v1/ai-sdk/chat", json=body)
    first = await frames(resp, limit=1)  # only "start": its event's start-step is not yet read
    resp.close()
    assert types(first) == ["start"] and first[0].id is not None and "." in first[0].id
    again = await client.get(f"/v1/ai-sdk/chat/{s['id']}/stream", headers={"Last-Event-ID": first[0].id})
    assert again.status == 200
    second = await frames(again, limit=6)
    again.close()
    assert types(second)[0] == "start-step" and second[-1].id is not None
    third_resp = await client.get(f"/v1/ai-sdk/chat/{s['id']}/stream", headers={"Last-Event-ID": second[-1].id})
    third = await frames(third_resp)
    whole = first + second + third
    ids = [f.id for f in whole]
    assert len(set(ids)) == len(ids)
    t = types(whole)
    assert t[:3] == ["start", "start-step", "text-start"] and t.count("text-start") == 1
    assert t[-4:] == ["text-end", "finish-step", "finish", "[DONE]"]
    stored = await history(client, s["id"])
    assert text_of(whole) == message_text(stored[-1])
    assert len(text_of(whole).split()) == 60


async def test_reconnect_without_a_running_task_is_204(client: TestClient[Any, Any]) -> None:
    s = await new_session(client)
    got = await run_node("ai_sdk_chat.mjs", "reconnect", base_url(client), s["id"], HEADERS)
    assert got == {"resumed": None}
    resp = await client.get(f"/v1/ai-sdk/chat/{s['id']}/stream")
    assert resp.status == 204


async def test_stop_cancels_and_keeps_the_partial(make_client: ClientFactory) -> None:
    client = await make_client(simulated={"tokens_per_second": 50, "reply_tokens": 200})
    s = await new_session(client)
    resp = await client.post("/v1/ai-sdk/chat", json={"id": s["id"], "messages": [user("c1", "long")]})
    head = await frames(resp, limit=5)
    stopped = await client.post(f"/v1/ai-sdk/chat/{s['id']}/stop")
    assert stopped.status == 200 and (await stopped.json())["status"] == "cancelled"
    tail = await frames(resp)
    assert types(tail)[-2:] == ["abort", "[DONE]"]
    stored = await history(client, s["id"])
    assert stored[-1]["metadata"]["status"] == "cancelled"
    partial = message_text(stored[-1])
    assert partial == text_of(head + tail) and 0 < len(partial.split()) < 200
    # Nothing runs any more: stop again is no error, and resume finds nothing.
    again = await client.post(f"/v1/ai-sdk/chat/{s['id']}/stop")
    assert again.status == 200 and (await again.json())["status"] == "idle"
    assert (await client.get(f"/v1/ai-sdk/chat/{s['id']}/stream")).status == 204


async def test_regenerate_and_edit_become_siblings(client: TestClient[Any, Any]) -> None:
    s = await new_session(client)
    base = base_url(client)
    await run_node("ai_sdk_chat.mjs", "send", base, s["id"], HEADERS, {"text": "first question"})
    stored = await history(client, s["id"])
    answer = stored[1]
    # useChat's regenerate(): the list is cut before the answer, messageId names it.
    regen = await run_node("ai_sdk_chat.mjs", "regenerate", base, s["id"], HEADERS,
                           {"history": stored[:1], "messageId": answer["id"]})
    assert regen["errors"] == []
    assert regen["message"]["id"] != answer["id"]
    tree = await (await client.get(f"/v1/sessions/{s['id']}/tree")).json()
    user_node = next(n for n in tree["nodes"] if n["id"] == stored[0]["id"])
    assert user_node["children"] == [answer["id"], regen["message"]["id"]]
    # sendMessage({messageId}) with changed text: the client's user message (by its place) is edited.
    edited = await run_node("ai_sdk_chat.mjs", "send", base, s["id"], HEADERS,
                            {"id": "client-made-id", "text": "second try", "messageId": "client-made-id"})
    assert edited["errors"] == []
    now = await history(client, s["id"])
    assert message_text(now[0]) == "second try"
    assert len(now) == 2 and now[1]["id"] == edited["message"]["id"]
    assert len([n for n in tree["nodes"] if n["parent_id"] is None]) == 1
    tree = await (await client.get(f"/v1/sessions/{s['id']}/tree")).json()
    assert len([n for n in tree["nodes"] if n["parent_id"] is None]) == 2, "the edit is a sibling"
    # A follow-up after the stored answer is a new turn on the active path.
    follow = await run_node("ai_sdk_chat.mjs", "send", base, s["id"], HEADERS,
                            {"history": now, "id": "client-2", "text": "and then?"})
    assert follow["errors"] == []
    assert [m["role"] for m in await history(client, s["id"])] == ["user", "assistant", "user", "assistant"]


async def test_tool_calls_stream_as_dynamic_tool_parts(client: TestClient[Any, Any]) -> None:
    s = await new_session(client, tools=["calculator"])
    got = await run_node("ai_sdk_chat.mjs", "send", base_url(client), s["id"], HEADERS,
                         {"text": '/tool calculator {"expression": "6 * 7"}'})
    parts = got["message"]["parts"]
    tool = next(p for p in parts if p["type"] == "dynamic-tool")
    assert tool["toolName"] == "calculator" and tool["state"] == "output-available"
    assert tool["input"] == {"expression": "6 * 7"} and "42" in tool["output"]
    assert [p["type"] for p in parts].count("step-start") == 2, "the answer after the tool is a new step"
    assert "42" in message_text(got["message"])
    stored = (await history(client, s["id"]))[-1]
    assert [p["type"] for p in stored["parts"]] == ["step-start", "dynamic-tool", "text"]
    assert stored["parts"][1]["output"] == tool["output"]


async def test_a_session_token_sees_only_its_own_session(client: TestClient[Any, Any]) -> None:
    mine = await new_session(client, with_token=True)
    other = await new_session(client)
    bearer = {"Authorization": f"Bearer {mine['access_token']}"}
    got = await run_node("ai_sdk_chat.mjs", "send", base_url(client), mine["id"], bearer, {"text": "mine"})
    assert got["errors"] == [] and message_text(got["message"])
    refused = await run_node("ai_sdk_chat.mjs", "refused", base_url(client), other["id"], bearer)
    assert "not_found" in refused["error"]
    async with aiohttp.ClientSession(headers=bearer) as http:
        base = base_url(client)
        for method, path in (("GET", "stream"), ("POST", "stop"), ("GET", "messages")):
            resp = await http.request(method, f"{base}/v1/ai-sdk/chat/{other['id']}/{path}")
            assert resp.status == 404, path
        resp = await http.get(f"{base}/v1/ai-sdk/chat/{mine['id']}/messages")
        assert resp.status == 200 and len(await resp.json()) == 2
    assert len(await history(client, other["id"])) == 0


async def test_bad_bodies_get_problem_json(client: TestClient[Any, Any]) -> None:
    s = await new_session(client)
    cases = [
        ({"messages": []}, "id"),
        ({"id": s["id"], "messages": [user("c1", "x")], "trigger": "resume-stream"}, "trigger"),
        ({"id": s["id"], "messages": [{"id": "a", "role": "assistant", "parts": []}]}, "user message"),
        ({"id": s["id"], "messages": [{"id": "a", "role": "user", "parts": [{"type": "file"}]}]}, "text part"),
        ({"id": s["id"], "messages": [], "trigger": "regenerate-message", "messageId": "msg_nope"}, "assistant"),
    ]
    for body, word in cases:
        resp = await client.post("/v1/ai-sdk/chat", json=body)
        assert resp.status == 422, body
        assert resp.headers["Content-Type"].startswith("application/problem+json")
        assert word in (await resp.json())["detail"], body
    resp = await client.post("/v1/ai-sdk/chat", json={"id": "ses_missing", "messages": [user("c", "x")]})
    assert resp.status == 404
    refused = await run_node("ai_sdk_chat.mjs", "refused", base_url(client), s["id"], HEADERS,
                             {"messages": [{"id": "a", "role": "assistant", "parts": []}]})
    assert "user message" in refused["error"]


async def test_a_client_that_was_not_seeded_appends(client: TestClient[Any, Any]) -> None:
    s = await new_session(client)
    base = base_url(client)
    for text in ("one", "two"):  # each time a fresh useChat that loaded no messages
        got = await run_node("ai_sdk_chat.mjs", "send", base, s["id"], HEADERS, {"text": text})
        assert got["errors"] == []
    stored = await history(client, s["id"])
    assert [(m["role"], message_text(m) if m["role"] == "user" else "") for m in stored] == [
        ("user", "one"), ("assistant", ""), ("user", "two"), ("assistant", "")]
    # An edit names the message: one the client does not hold in the stored place is refused.
    resp = await client.post("/v1/ai-sdk/chat", json={
        "id": s["id"], "messages": [user("a", "x"), {"id": "b", "role": "assistant", "parts": []}, user("c", "y"),
                                    {"id": "d", "role": "assistant", "parts": []}, user("e", "z")],
        "messageId": "e"})
    assert resp.status == 422 and "to edit" in (await resp.json())["detail"]
