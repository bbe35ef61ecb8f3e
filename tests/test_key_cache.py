"""API keys are remembered between requests, and a revocation still holds: at once when this
process revokes, within 2 s when another one does (``sessiond keys revoke``), on both stores."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from server.appkeys import KEYRING, STORE
from server.auth.keys import create_key
from tests.conftest import ROOT, ClientFactory, new_session
from tests.pg import database

Client = TestClient[Any, Any]


class _Served:
    """A server on one store, and the environment a ``sessiond`` command needs to reach it."""

    def __init__(self, client: Client, cli_env: dict[str, str], cli_args: list[str]) -> None:
        self.client = client
        self.cli_env = cli_env
        self.cli_args = cli_args


@pytest.fixture(params=["sqlite", "postgres"])
async def served(request: Any, make_client: ClientFactory, tmp_path: Path) -> AsyncIterator[_Served]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIOND_")}
    env["PYTHONPATH"] = str(ROOT)
    if request.param == "sqlite":
        data = tmp_path / "data"
        yield _Served(await make_client(data_dir=data), env, ["--data-dir", str(data)])
        return
    async with database() as dsn:
        client = await make_client(store={"kind": "postgres", "postgres_dsn": dsn})
        env.update(SESSIOND_STORE_KIND="postgres", SESSIOND_STORE_POSTGRES_DSN=dsn)
        yield _Served(client, env, ["--data-dir", str(tmp_path / "cli")])
        await client.close()  # before the database is dropped


async def _status(client: Client, headers: dict[str, str], path: str = "/v1/sessions") -> int:
    """The status of a request with only ``headers`` (none of the test client's own)."""
    async with aiohttp.ClientSession(base_url=str(client.make_url(""))) as http:
        async with http.get(path, headers=headers) as resp:
            await resp.read()
            return resp.status


async def test_a_key_revoked_by_this_process_is_refused_at_once(served: _Served) -> None:
    client = served.client
    record, key = await create_key(client.app[STORE], "backend")
    s = await new_session(client)
    pair = await (await client.post(f"/v1/sessions/{s['id']}/tokens", headers={"X-API-Key": key})).json()
    token = {"Authorization": f"Bearer {pair['access_token']}"}
    whole = {"X-API-Key": key}
    split = {"X-Client-ID": record.id, "X-Client-Secret": key.split("_")[2]}
    for _ in range(3):  # remembered after the first
        assert await _status(client, whole) == 200
        assert await _status(client, split) == 200
    assert await _status(client, token, f"/v1/sessions/{s['id']}/messages") == 200

    assert await client.app[KEYRING].revoke(record.id, "2026-01-01T00:00:00Z")
    assert await _status(client, whole) == 401
    assert await _status(client, split) == 401
    # The tokens it minted die with it, at once too.
    assert await _status(client, token, f"/v1/sessions/{s['id']}/messages") == 401


async def test_a_wrong_secret_is_refused_beside_a_remembered_key(served: _Served) -> None:
    client = served.client
    record, key = await create_key(client.app[STORE], "backend")
    assert await _status(client, {"X-API-Key": key}) == 200
    secret = key.split("_")[2]
    altered = secret[:-1] + ("1" if secret[-1] == "0" else "0")
    assert await _status(client, {"X-API-Key": f"sk_{record.id.removeprefix('key_')}_{altered}"}) == 401
    assert await _status(client, {"X-Client-ID": record.id, "X-Client-Secret": altered}) == 401
    assert await _status(client, {"X-API-Key": key}) == 200


async def test_a_key_revoked_by_another_process_is_refused_within_two_seconds(served: _Served) -> None:
    client = served.client
    record, key = await create_key(client.app[STORE], "backend")
    assert await _status(client, {"X-API-Key": key}) == 200
    revoke = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "keys", "revoke", record.id, *served.cli_args,
        env=served.cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(revoke.communicate(), 60)
    assert revoke.returncode == 0, err.decode()
    assert f"revoked {record.id}" in out.decode()
    revoked_at = time.monotonic()
    # No event tells this server: poll, with a deadline of the recheck interval and some slack.
    while (status := await _status(client, {"X-API-Key": key})) == 200:
        assert time.monotonic() - revoked_at < 3.0, "still accepted 3 s after another process revoked it"
        await asyncio.sleep(0.05)
    assert status == 401
    assert time.monotonic() - revoked_at < 3.0
