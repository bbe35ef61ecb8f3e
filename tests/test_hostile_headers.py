"""Hostile headers: a blank or repeated ``X-End-User-ID`` fails closed (400), never acting as
the operator, who sees every end user's sessions."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient
from multidict import CIMultiDict

from tests.conftest import HEADERS


async def test_a_blank_or_repeated_end_user_header_is_a_400(client: TestClient[Any, Any]) -> None:
    victim = await client.post("/v1/sessions", json={"title": "u2's private notes"}, headers={"X-End-User-ID": "u2"})
    assert victim.status == 201
    sid = (await victim.json())["id"]
    attempts: list[list[tuple[str, str]]] = [
        [("X-End-User-ID", "")],
        [("X-End-User-ID", "   ")],
        [("X-End-User-ID", ""), ("X-End-User-ID", "u1")],
        [("X-End-User-ID", "u1"), ("X-End-User-ID", "u2")],
    ]
    for extra in attempts:
        headers = CIMultiDict([*HEADERS.items(), *extra])
        routes = (("GET", f"/v1/sessions/{sid}"), ("GET", "/v1/sessions"), ("DELETE", f"/v1/sessions/{sid}"))
        for method, path in routes:
            resp = await client.request(method, path, headers=headers)
            body = await resp.text()
            assert resp.status == 400, f"{extra} {method} {path}: {resp.status} {body}"
            assert resp.headers["Content-Type"].startswith("application/problem+json")
            assert "X-End-User-ID" in body and "private notes" not in body
    # The session is untouched, and a well-formed header still works.
    own = await client.get(f"/v1/sessions/{sid}", headers={"X-End-User-ID": "u2"})
    assert own.status == 200 and (await own.json())["title"] == "u2's private notes"
    assert (await client.get(f"/v1/sessions/{sid}", headers={"X-End-User-ID": "u1"})).status == 404
