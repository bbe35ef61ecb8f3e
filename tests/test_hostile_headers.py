"""Hostile headers: a blank or repeated ``X-End-User-ID`` fails closed (400), never acting as
the operator, who sees every end user's sessions; an over-long header line never puts the
credential it carried into the log; responses name no versions; /docs cannot be framed."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
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


async def test_an_over_long_header_line_keeps_the_credential_out_of_the_log(
    client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    secret = "sk_abcdef_" + "s3cr3t" * 8
    caplog.set_level(logging.DEBUG, logger="aiohttp.server")
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(b"GET /v1/sessions HTTP/1.1\r\nHost: x\r\nX-API-Key: " + secret.encode() + b"A" * 9000 + b"\r\n\r\n")
    await writer.drain()
    answer = await reader.read()
    writer.close()
    assert answer.split(b" ", 2)[1] == b"400", answer[:100]
    assert "Error handling request" in caplog.text  # what happened is still logged...
    assert "s3cr3t" not in caplog.text  # ...without the bytes that carried the key


async def test_no_versions_in_the_server_header(client: TestClient[Any, Any]) -> None:
    for path in ("/healthz", "/v1/sessions", "/v1/sessions/ses_missing", "/docs", "/openapi.json"):
        resp = await client.get(path)
        assert resp.headers["Server"] == "sessiond", path
        assert "aiohttp" not in resp.headers["Server"] and "Python" not in resp.headers["Server"]


async def test_docs_keep_no_key_and_cannot_be_framed(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/docs")
    assert resp.status == 200
    page = await resp.text()
    assert "persistAuthorization: true" not in page and "persistAuthorization: false" in page
    csp = resp.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp
    assert "'unsafe-inline'" not in csp.split("script-src", 1)[1].split(";", 1)[0]
    assert resp.headers["X-Frame-Options"] == "DENY"
