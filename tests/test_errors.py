"""Bad input gets a clear problem+json answer and changes nothing."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from actors.core.commands import GetSession
from actors.core.errors import MailboxFullError
from actors.session.actor import SessionActor
from server.appkeys import REGISTRY
from tests.conftest import ClientFactory, new_session


async def _problem(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    body = await resp.json()
    assert body["status"] == status and body["code"] == code and body["title"] and body["detail"]
    return body  # type: ignore[no-any-return]


async def test_malformed_json_is_400(client: TestClient[Any, Any]) -> None:
    await _problem(await client.post("/v1/sessions", data=b"{not json"), 400, "bad_json")


async def test_unknown_field_is_422(client: TestClient[Any, Any]) -> None:
    await _problem(await client.post("/v1/sessions", json={"titel": "typo"}), 422, "invalid_request")
    s = await new_session(client)
    await _problem(
        await client.post(f"/v1/sessions/{s['id']}/messages", json={"content": "x", "strem": True}),
        422,
        "invalid_request",
    )


async def test_oversized_body_is_413(make_client: ClientFactory) -> None:
    client = await make_client(server={"max_body_bytes": 1000})
    s = await new_session(client)
    resp = await client.post(f"/v1/sessions/{s['id']}/messages", json={"content": "x" * 5000})
    await _problem(resp, 413, "payload_too_large")
    history = await (await client.get(f"/v1/sessions/{s['id']}/messages")).json()
    assert history["items"] == []


async def test_unknown_session_and_route(client: TestClient[Any, Any]) -> None:
    await _problem(await client.get("/v1/sessions/ses_nope"), 404, "not_found")
    await _problem(await client.post("/v1/sessions/ses_nope/messages", json={"content": "x"}), 404, "not_found")
    await _problem(await client.get("/v1/nothing-here"), 404, "not_found")
    await _problem(await client.delete("/v1/sessions"), 405, "method_not_allowed")


async def test_missing_credentials_401(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/v1/sessions", headers={"X-API-Key": "sk_wrong_key"})
    await _problem(resp, 401, "unauthorized")


async def test_second_message_while_running_is_409_unless_queued(make_client: ClientFactory) -> None:
    client = await make_client(simulated={"tokens_per_second": 50, "reply_tokens": 500})
    s = await new_session(client)
    sid = s["id"]
    first = await client.post(f"/v1/sessions/{sid}/messages", json={"content": "long", "stream": True})
    assert first.status == 200
    await _problem(await client.post(f"/v1/sessions/{sid}/messages", json={"content": "again"}), 409, "task_running")
    queued = await client.post(f"/v1/sessions/{sid}/messages?queue=true", json={"content": "after", "stream": True})
    assert queued.status == 200
    cancel = await client.post(f"/v1/sessions/{sid}/cancel")
    assert cancel.status == 200
    first.close()
    queued.close()
    history = await (await client.get(f"/v1/sessions/{sid}/messages")).json()
    contents = [m["content"] for m in history["items"] if m["role"] == "user"]
    assert contents == ["long"]
    assert history["items"][-1]["status"] == "cancelled"


async def test_full_mailbox_refuses_with_retry_after(make_client: ClientFactory) -> None:
    client = await make_client(sessions={"mailbox_size": 3})
    s = await new_session(client)
    actor = await client.app[REGISTRY].get(s["id"])
    assert isinstance(actor, SessionActor)  # a single server: the actor is here
    for _ in range(3):
        actor.tell(GetSession())
    with pytest.raises(MailboxFullError) as info:
        actor.tell(GetSession())
    assert info.value.status == 503 and info.value.retry_after == 1


async def test_stale_if_match_is_412_and_changes_nothing(client: TestClient[Any, Any]) -> None:
    s = await new_session(client, metadata={"a": 1})
    ok = await client.patch(
        f"/v1/sessions/{s['id']}", json={"metadata": {"b": 2}}, headers={"If-Match": f'"{s["version"]}"'}
    )
    assert ok.status == 200
    stale = await client.patch(
        f"/v1/sessions/{s['id']}", json={"metadata": {"c": 3}}, headers={"If-Match": f'"{s["version"]}"'}
    )
    await _problem(stale, 412, "version_mismatch")
    meta = await (await client.get(f"/v1/sessions/{s['id']}/metadata")).json()
    assert meta == {"a": 1, "b": 2}


async def test_bad_last_event_id_and_bad_limit(client: TestClient[Any, Any]) -> None:
    s = await new_session(client)
    await _problem(
        await client.get(f"/v1/sessions/{s['id']}/stream", headers={"Last-Event-ID": "abc"}), 422, "invalid_request"
    )
    await _problem(await client.get("/v1/sessions?limit=0"), 422, "invalid_request")
    await _problem(await client.get("/v1/sessions?cursor=!!"), 422, "invalid_request")
