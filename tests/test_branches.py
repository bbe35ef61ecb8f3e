"""Branching conversations, checkpoints, cancel, export/import/copy/merge over HTTP."""

from __future__ import annotations

import asyncio
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from tests.conftest import HEADERS, ClientFactory, new_session
from tests.sse import events, read_until


async def _send(client: TestClient[Any, Any], sid: str, content: str) -> dict[str, Any]:
    resp = await client.post(f"/v1/sessions/{sid}/messages", json={"content": content})
    assert resp.status == 200, await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


async def _path(client: TestClient[Any, Any], sid: str) -> list[dict[str, Any]]:
    return (await (await client.get(f"/v1/sessions/{sid}/messages")).json())["items"]  # type: ignore[no-any-return]


async def test_edit_regenerate_navigate(client: TestClient[Any, Any]) -> None:
    s = await new_session(client)
    sid = s["id"]
    first = await _send(client, sid, "first question")
    user1 = first["message"]["parent_id"]
    await _send(client, sid, "second question")
    # Edit the first question: a sibling branch, made active, answered; the old branch stays.
    edited = await (
        await client.post(f"/v1/sessions/{sid}/messages/{user1}/edit", json={"content": "first, edited"})
    ).json()
    path = await _path(client, sid)
    assert [m["content"] for m in path if m["role"] == "user"] == ["first, edited"]
    assert path[0]["sibling_index"] == 1 and path[0]["sibling_count"] == 2
    assert path[-1]["id"] == edited["message"]["id"]
    # Regenerate that answer: a new sibling answer on the same question.
    regen = await (
        await client.post(f"/v1/sessions/{sid}/messages/{edited['message']['id']}/regenerate", json={})
    ).json()
    assert regen["message"]["parent_id"] == edited["message"]["parent_id"]
    path = await _path(client, sid)
    assert (path[-1]["sibling_index"], path[-1]["sibling_count"]) == (1, 2)
    # Flip back to the original first question: its newest leaf (the second answer) is active.
    nav = await client.post(f"/v1/sessions/{sid}/navigate", json={"message_id": user1})
    assert nav.status == 200
    path = await _path(client, sid)
    assert [m["content"] for m in path if m["role"] == "user"] == ["first question", "second question"]
    tree = await (await client.get(f"/v1/sessions/{sid}/tree")).json()
    assert len(tree["nodes"]) == 7 and tree["active_leaf_id"] == path[-1]["id"]


async def test_checkpoints_and_restore_with_hint(client: TestClient[Any, Any]) -> None:
    s = await new_session(client)
    sid = s["id"]
    a1 = await _send(client, sid, "step one")
    await _send(client, sid, "step two")
    cps = (await (await client.get(f"/v1/sessions/{sid}/checkpoints")).json())["items"]
    assert cps[0]["message_id"] == a1["message"]["id"] and len(cps) == 2
    # Restore without a hint: the active leaf moves back, nothing is re-run.
    r = await client.post(f"/v1/sessions/{sid}/checkpoints/{cps[0]['id']}/restore", json={})
    assert (await r.json()) == {"active_leaf_id": a1["message"]["id"]}
    assert (await _path(client, sid))[-1]["id"] == a1["message"]["id"]
    # With a hint: a new answer after the checkpoint, steered by the hint.
    resp = await client.post(
        f"/v1/sessions/{sid}/checkpoints/{cps[0]['id']}/restore", json={"hint": "be brief", "stream": True}
    )
    got = await read_until(resp, "task.completed")
    assert got[0].event == "task.started"
    path = await _path(client, sid)
    assert [m["content"] for m in path[:-1]] == ["step one", a1["message"]["content"], "be brief"]
    assert path[-1]["role"] == "assistant" and path[-1]["status"] == "completed"
    assert len((await (await client.get(f"/v1/sessions/{sid}/checkpoints")).json())["items"]) == 3


async def test_cancel_keeps_partial_answer(make_client: ClientFactory) -> None:
    client = await make_client(simulated={"tokens_per_second": 100, "reply_tokens": 1000})
    s = await new_session(client)
    sid = s["id"]
    resp = await client.post(f"/v1/sessions/{sid}/messages", json={"content": "long", "stream": True})
    seen = []
    async for ev in events(resp):
        seen.append(ev)
        if len(seen) == 5:
            cancel = await client.post(f"/v1/sessions/{sid}/cancel")
            assert cancel.status == 200
        if ev.event.startswith("task.") and ev.event != "task.started":
            break
    assert seen[-1].event == "task.cancelled"
    partial = "".join(e.data["delta"] for e in seen if e.event == "message.delta")
    last = (await _path(client, sid))[-1]
    assert last["status"] == "cancelled" and last["content"] == partial and 0 < len(partial.split()) < 1000
    again = await client.post(f"/v1/sessions/{sid}/cancel")
    assert again.status == 409


def _strip_ids(doc: dict[str, Any]) -> str:
    """The export with every id replaced by its order of first appearance."""
    text = json.dumps(doc, sort_keys=False)
    names: dict[str, str] = {}
    return re.sub(r"(ses|msg|ckp)_[0-9a-f]{24}", lambda m: names.setdefault(m.group(0), f"id{len(names)}"), text)


async def test_export_import_round_trip(make_client: ClientFactory, tmp_path: Path) -> None:
    client = await make_client()
    s = await new_session(client, title="round trip", metadata={"a": [1, 2], "b": {"c": None}}, context={"x": 1})
    sid = s["id"]
    first = await _send(client, sid, "one")
    await client.post(f"/v1/sessions/{sid}/messages/{first['message']['id']}/regenerate", json={})
    await _send(client, sid, "two")
    exported = await client.get(f"/v1/sessions/{sid}/export")
    raw = await exported.read()
    doc = json.loads(raw)
    assert doc["format"] == "sessiond.session" and doc["version"] == 1 and len(doc["messages"]) == 5

    # new_id: a copy with fresh ids, byte-identical otherwise.
    imported = await client.post("/v1/sessions/import?new_id=true", data=raw)
    assert imported.status == 201
    new_sid = (await imported.json())["id"]
    assert new_sid != sid
    again = await (await client.get(f"/v1/sessions/{new_sid}/export")).read()
    assert _strip_ids(json.loads(again)) == _strip_ids(doc)
    assert not set(re.findall(r"msg_[0-9a-f]{24}", again.decode())) & set(re.findall(r"msg_[0-9a-f]{24}", raw.decode()))

    # Same ids into another server: the identical session, the identical bytes.
    other = await make_client(data_dir=tmp_path / "other")
    assert (await other.post("/v1/sessions/import", data=raw)).status == 201
    assert await (await other.get(f"/v1/sessions/{sid}/export")).read() == raw
    assert (
        await (await other.get(f"/v1/sessions/{sid}/messages")).json()
        == await (await client.get(f"/v1/sessions/{sid}/messages")).json()
    )
    # Importing the same ids twice is a conflict, not an overwrite.
    dup = await other.post("/v1/sessions/import", data=raw)
    assert dup.status == 409


async def test_import_rejects_inconsistent_documents(client: TestClient[Any, Any]) -> None:
    s = await new_session(client)
    await _send(client, s["id"], "x")
    doc = await (await client.get(f"/v1/sessions/{s['id']}/export")).json()
    doc["messages"].reverse()  # a child before its parent
    bad = await client.post("/v1/sessions/import?new_id=true", json=doc)
    assert bad.status == 422
    doc["messages"].reverse()
    doc["version"] = 99
    assert (await client.post("/v1/sessions/import?new_id=true", json=doc)).status == 422
    assert (await client.post("/v1/sessions/import", json={"format": "nope"})).status == 422


async def test_copy_and_merge(client: TestClient[Any, Any]) -> None:
    a = await new_session(client, title="a")
    b = await new_session(client, title="b")
    await _send(client, a["id"], "from a")
    await _send(client, b["id"], "from b")
    await _send(client, b["id"], "more b")
    copy = await client.post(f"/v1/sessions/{a['id']}/copy", json={"title": "copy of a"})
    assert copy.status == 201
    c = await copy.json()
    assert c["title"] == "copy of a"
    assert [m["content"] for m in await _path(client, c["id"])] == [m["content"] for m in await _path(client, a["id"])]
    merged = await client.post("/v1/sessions/merge", json={"session_ids": [a["id"], b["id"]], "title": "both"})
    assert merged.status == 201
    m = await merged.json()
    contents = [x["content"] for x in await _path(client, m["id"])]
    assert contents == [x["content"] for x in await _path(client, a["id"]) + await _path(client, b["id"])]
    # Sources unchanged.
    assert len(await _path(client, a["id"])) == 2 and len(await _path(client, b["id"])) == 4
    # Merging needs two distinct sessions the caller can see.
    assert (await client.post("/v1/sessions/merge", json={"session_ids": [a["id"]]})).status == 422


def _long_export(doc: dict[str, Any], messages: int) -> dict[str, Any]:
    """``doc`` (an export) with a history of ``messages`` messages in one chain, no checkpoints."""
    user, answer = doc["messages"][0], dict(doc["messages"][1], status="completed")
    chain: list[dict[str, Any]] = []
    for i in range(messages):
        node = dict(user if i % 2 == 0 else answer, id=f"msg_{i:024x}", parent_id=chain[-1]["id"] if chain else None)
        chain.append(node)
    return {**doc, "messages": chain, "active_leaf_id": chain[-1]["id"], "checkpoints": []}


async def test_a_merge_is_bounded_as_an_import_and_settles_what_still_runs(make_client: ClientFactory) -> None:
    client = await make_client(simulated={"tokens_per_second": 20, "reply_tokens": 1000},
                               server={"max_body_bytes": 16 << 20})
    s = await new_session(client)
    r = await client.post(f"/v1/sessions/{s['id']}/messages", json={"content": "q", "stream": True})
    first = await read_until(r, "message.delta")
    assert first[-1].event == "message.delta"
    # Merged while its answer is still being written: the copy of it is interrupted, not running.
    merged = await client.post("/v1/sessions/merge", json={"session_ids": [s["id"], (await new_session(client))["id"]]})
    assert merged.status == 201, await merged.text()
    path = await _path(client, (await merged.json())["id"])
    assert [m["role"] for m in path] == ["user", "assistant"] and path[-1]["status"] == "interrupted"
    r.close()
    assert (await client.post(f"/v1/sessions/{s['id']}/cancel")).status == 200

    # Two sessions of 6 000 messages each, as two imports may be: their merge would be 12 000.
    doc = await (await client.get(f"/v1/sessions/{s['id']}/export")).json()
    ids = []
    for _ in range(2):
        body = io.BytesIO(json.dumps(_long_export(doc, 6_000)).encode())
        imported = await client.post("/v1/sessions/import?new_id=true", data=body)
        assert imported.status == 201, await imported.text()
        ids.append((await imported.json())["id"])
    refused = await client.post("/v1/sessions/merge", json={"session_ids": ids})
    assert refused.status == 422 and "10000" in (await refused.json())["detail"]
    many = await client.post("/v1/sessions/merge", json={"session_ids": [f"ses_{i}" for i in range(257)]})
    assert many.status == 422 and "256" in (await many.json())["detail"]


async def test_bad_branch_operations_change_nothing(client: TestClient[Any, Any]) -> None:
    s = await new_session(client)
    other = await new_session(client)
    sid = s["id"]
    ans = await _send(client, sid, "q")
    user_id = ans["message"]["parent_id"]
    other_ans = await _send(client, other["id"], "q2")
    other_cp = (await (await client.get(f"/v1/sessions/{other['id']}/checkpoints")).json())["items"][0]
    before = await (await client.get(f"/v1/sessions/{sid}/tree")).json()

    async def expect(resp: Any, status: int) -> None:
        assert resp.status == status, await resp.text()
        assert resp.headers["Content-Type"].startswith("application/problem+json")

    await expect(
        await client.post(f"/v1/sessions/{sid}/messages/{ans['message']['id']}/edit", json={"content": "x"}), 422
    )
    await expect(await client.post(f"/v1/sessions/{sid}/messages/{user_id}/regenerate", json={}), 422)
    await expect(
        await client.post(f"/v1/sessions/{sid}/navigate", json={"message_id": other_ans["message"]["id"]}), 404
    )
    await expect(await client.post(f"/v1/sessions/{sid}/checkpoints/{other_cp['id']}/restore", json={}), 404)
    hidden = await client.post("/v1/sessions", json={}, headers={"X-End-User-ID": "someone-else"})
    hidden_id = (await hidden.json())["id"]
    await expect(
        await client.post(
            "/v1/sessions/merge", json={"session_ids": [sid, hidden_id]}, headers={"X-End-User-ID": "me"}
        ),
        404,
    )
    assert await (await client.get(f"/v1/sessions/{sid}/tree")).json() == before


async def test_cli_export_import(client: TestClient[Any, Any], tmp_path: Path) -> None:
    cfg = client.app  # the server writes into its own data dir; the CLI reads it directly
    from server.appkeys import CONFIG

    data_dir = cfg[CONFIG].server.data_dir
    s = await new_session(client, title="cli")
    await _send(client, s["id"], "hello cli")
    out = tmp_path / "s.json"
    env = {"SESSIOND_AUTH_API_KEYS": json.dumps([HEADERS["X-API-Key"]])}
    run = [sys.executable, "-m", "server"]
    done = await asyncio.to_thread(
        subprocess.run,
        [*run, "export", s["id"], str(out), "--data-dir", data_dir],
        capture_output=True,
        env={**_env(), **env},
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text())["session"]["title"] == "cli"
    done = await asyncio.to_thread(
        subprocess.run, [*run, "import", str(out), "--new-id", "--data-dir", data_dir], capture_output=True, env=_env()
    )
    assert done.returncode == 0, done.stderr
    new_sid = done.stdout.decode().strip().splitlines()[-1]
    assert new_sid.startswith("ses_") and new_sid != s["id"]
    assert [m["content"] for m in await _path(client, new_sid)] == [m["content"] for m in await _path(client, s["id"])]
    missing = await asyncio.to_thread(
        subprocess.run,
        [*run, "export", "ses_missing", str(out), "--data-dir", data_dir],
        capture_output=True,
        env=_env(),
    )
    assert missing.returncode == 1 and b"no session" in missing.stderr


def _env() -> dict[str, str]:
    import os

    from tests.conftest import ROOT

    return {**os.environ, "PYTHONPATH": str(ROOT)}


async def test_documents_with_dangling_or_odd_ids_are_refused(client: TestClient[Any, Any]) -> None:
    s = await new_session(client)
    await _send(client, s["id"], "x")
    doc = await (await client.get(f"/v1/sessions/{s['id']}/export")).json()
    dangling = json.loads(json.dumps(doc))
    dangling["checkpoints"][0]["message_id"] = "msg_nowhere"
    orphan = json.loads(json.dumps(doc))
    orphan["messages"][1]["parent_id"] = "msg_nowhere"
    empty_id = json.loads(json.dumps(doc))
    empty_id["session"]["id"] = ""
    for bad in (dangling, orphan, empty_id):
        for query in ("", "?new_id=true"):
            resp = await client.post(f"/v1/sessions/import{query}", json=bad)
            assert resp.status == 422, await resp.text()
    assert (await client.post("/v1/sessions/import?new_id=maybe", json=doc)).status == 422
    merge = await client.post("/v1/sessions/merge", json={"session_ids": [s["id"], ""]})
    assert merge.status == 404
    wrong_method = await client.put("/v1/sessions")
    assert wrong_method.status == 405 and "GET" in wrong_method.headers["Allow"]
