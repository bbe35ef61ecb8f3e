"""Property test: random send/edit/regenerate/navigate/restore/restart against the real server
and a tiny model of the tree kept here; the active path, sibling counts and tree always agree."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.app import make_app
from tests.conftest import HEADERS, make_config


class TreeModel:
    def __init__(self) -> None:
        self.parent: dict[str, str | None] = {}
        self.role: dict[str, str] = {}
        self.children: dict[str | None, list[str]] = {None: []}
        self.leaf: str | None = None
        self.checkpoints: list[str] = []  # message ids, in creation order

    def add(self, node_id: str, parent: str | None, role: str) -> None:
        self.parent[node_id] = parent
        self.role[node_id] = role
        self.children[node_id] = []
        self.children[parent].append(node_id)

    def answer(self, user_id: str, user_parent: str | None, reply_id: str, *, new_user: bool) -> None:
        if new_user:
            self.add(user_id, user_parent, "user")
        self.add(reply_id, user_id, "assistant")
        self.leaf = reply_id
        self.checkpoints.append(reply_id)

    def path(self) -> list[str]:
        out: list[str] = []
        node = self.leaf
        while node is not None:
            out.append(node)
            node = self.parent[node]
        return out[::-1]

    def newest_leaf(self, node_id: str) -> str:
        while self.children[node_id]:
            node_id = self.children[node_id][-1]
        return node_id

    def of_role(self, role: str) -> list[str]:
        return [n for n, r in self.role.items() if r == role]


OPS = st.lists(
    st.tuples(
        st.sampled_from(["send", "send", "edit", "regen", "nav", "restore", "hint", "restart"]), st.integers(0, 50)
    ),
    min_size=1,
    max_size=14,
)


async def _start(data_dir: Path) -> TestClient[Any, Any]:
    cfg = make_config(data_dir, simulated={"reply_tokens": 3})
    client: TestClient[Any, Any] = TestClient(TestServer(make_app(cfg)), headers=HEADERS)
    await client.start_server()
    return client


async def _check(client: TestClient[Any, Any], sid: str, model: TreeModel) -> None:
    path = (await (await client.get(f"/v1/sessions/{sid}/messages")).json())["items"]
    assert [m["id"] for m in path] == model.path()
    for m in path:
        sibs = model.children[model.parent[m["id"]]]
        assert (m["sibling_index"], m["sibling_count"]) == (sibs.index(m["id"]), len(sibs))
    tree = await (await client.get(f"/v1/sessions/{sid}/tree")).json()
    assert {n["id"]: (n["parent_id"], n["children"]) for n in tree["nodes"]} == {
        n: (model.parent[n], model.children[n]) for n in model.parent
    }
    assert tree["active_leaf_id"] == model.leaf
    cps = (await (await client.get(f"/v1/sessions/{sid}/checkpoints")).json())["items"]
    assert [c["message_id"] for c in cps] == model.checkpoints


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
async def test_tree_operations_agree_with_a_model(ops: list[tuple[str, int]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        client = await _start(data_dir)
        try:
            sid = (await (await client.post("/v1/sessions", json={})).json())["id"]
            model = TreeModel()
            for op, i in ops:
                url = f"/v1/sessions/{sid}"
                if op == "send":
                    r = await (await client.post(f"{url}/messages", json={"content": f"m{i}"})).json()
                    model.answer(r["message"]["parent_id"], model.leaf, r["message"]["id"], new_user=True)
                elif op == "edit" and model.of_role("user"):
                    users = model.of_role("user")
                    u = users[i % len(users)]
                    r = await (await client.post(f"{url}/messages/{u}/edit", json={"content": f"e{i}"})).json()
                    model.answer(r["message"]["parent_id"], model.parent[u], r["message"]["id"], new_user=True)
                elif op == "regen" and model.of_role("assistant"):
                    answers = model.of_role("assistant")
                    a = answers[i % len(answers)]
                    r = await (await client.post(f"{url}/messages/{a}/regenerate", json={})).json()
                    user = model.parent[a]
                    assert user is not None and r["message"]["parent_id"] == user
                    model.answer(user, None, r["message"]["id"], new_user=False)
                elif op == "nav" and model.parent:
                    nodes = list(model.parent)
                    n = nodes[i % len(nodes)]
                    assert (await client.post(f"{url}/navigate", json={"message_id": n})).status == 200
                    model.leaf = model.newest_leaf(n)
                elif op in ("restore", "hint") and model.checkpoints:
                    cps = (await (await client.get(f"{url}/checkpoints")).json())["items"]
                    cp = cps[i % len(cps)]
                    body = {"hint": f"h{i}"} if op == "hint" else {}
                    r = await (await client.post(f"{url}/checkpoints/{cp['id']}/restore", json=body)).json()
                    if op == "hint":
                        model.answer(r["message"]["parent_id"], cp["message_id"], r["message"]["id"], new_user=True)
                    else:
                        model.leaf = cp["message_id"]
                elif op == "restart":
                    await client.close()
                    client = await _start(data_dir)
                await _check(client, sid, model)
            await client.close()
            client = await _start(data_dir)
            await _check(client, sid, model)
        finally:
            await client.close()
