"""`sessiond cluster`: N nodes and a round-robin proxy, used the way a self-hoster tries it."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import HEADERS, ROOT, TEST_KEY
from tests.pg import create_database, drop_database
from tests.sse import read_until

pytestmark = pytest.mark.slow


async def test_cluster_command_serves_through_the_proxy(redis_url: str, tmp_path: Path) -> None:
    dsn = await create_database()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SESSIOND_AUTH_API_KEYS": f'["{TEST_KEY}"]',
        "SESSIOND_AUTH_CREATE_FIRST_KEY": "false",
        "SESSIOND_LOG_ACCESS": "false",
        "SESSIOND_SIMULATED_TOKENS_PER_SECOND": "0",
        "SESSIOND_CLUSTER_PREFIX": f"t{secrets.token_hex(4)}",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "cluster", "--nodes", "2", "--port", "0", "--data-dir", str(tmp_path),
        "--postgres-dsn", dsn, "--redis-url", redis_url, env=env, stdout=asyncio.subprocess.PIPE, cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        url = ""
        while not url:
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            assert line, "sessiond cluster exited before listening"
            if line.startswith("listening on ") and "round-robin" in line:
                url = line.split()[2]
        async with aiohttp.ClientSession(url, headers=HEADERS) as http:
            nodes = set()
            async with http.post("/v1/sessions", json={}) as r:
                sid = (await r.json())["id"]
                nodes.add(r.headers["X-Sessiond-Node"])
            async with http.post(f"/v1/sessions/{sid}/messages", json={"content": "via proxy", "stream": True}) as r:
                nodes.add(r.headers["X-Sessiond-Node"])
                got = await read_until(r, "task.completed")
            assert got[0].event == "task.started" and got[-1].event == "task.completed"
            async with http.get(f"/v1/sessions/{sid}/messages") as r:
                nodes.add(r.headers["X-Sessiond-Node"])
                items = (await r.json())["items"]
            assert [m["role"] for m in items] == ["user", "assistant"]
            assert len(nodes) == 2, "round-robin spreads requests over both nodes"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await drop_database(dsn)
