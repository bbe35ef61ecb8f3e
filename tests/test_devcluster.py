"""`sessiond cluster`: N nodes and a round-robin proxy, used the way a self-hoster tries it."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
from pathlib import Path
from typing import Any

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
            # A session token minted on one node is good on every node: they share one secret.
            async with http.post(f"/v1/sessions/{sid}/tokens") as r:
                assert r.status == 200
                access = (await r.json())["access_token"]
            token_nodes = set()
            for _ in range(4):
                async with aiohttp.ClientSession(url) as bare, bare.get(
                    f"/v1/sessions/{sid}/messages", headers={"Authorization": f"Bearer {access}"}
                ) as r:
                    assert r.status == 200, await r.text()
                    token_nodes.add(r.headers["X-Sessiond-Node"])
            assert len(token_nodes) == 2
        assert (tmp_path / "jwt_secret").stat().st_mode & 0o077 == 0, "the demo's one secret is private"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await drop_database(dsn)


async def test_the_proxy_leaves_out_a_dead_node_and_says_when_none_answers(aiohttp_client: Any) -> None:
    from aiohttp import web

    from server.cli.devcluster import make_proxy
    from tests.fake_models import closed_port_url

    runners = []
    live = []
    for name in ("a", "b"):
        async def who(_r: web.Request, name: str = name) -> web.Response:
            return web.Response(text=name)

        app = web.Application()
        app.router.add_get("/who", who)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        live.append(f"http://127.0.0.1:{runner.addresses[0][1]}")
    dead = closed_port_url()
    try:
        proxy = await aiohttp_client(make_proxy([live[0], dead, live[1]]))
        answers = []
        for _ in range(9):
            r = await proxy.get("/who")
            assert r.status == 200, "a request that met the dead node went on to the next"
            answers.append(await r.text())
        assert set(answers) == {"a", "b"}

        # A node that takes the connection and drops it: that request is not sent twice (502),
        # and the node is left out afterwards.
        accepted = 0

        async def drop(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal accepted
            accepted += 1
            writer.close()

        dropper = await asyncio.start_server(drop, "127.0.0.1", 0)
        try:
            port = dropper.sockets[0].getsockname()[1]
            flaky = await aiohttp_client(make_proxy([f"http://127.0.0.1:{port}", live[0]]))
            first = await flaky.get("/who")
            assert first.status == 502 and first.content_type == "application/problem+json"
            seen = accepted  # aiohttp may retry an idempotent request once on a fresh connection
            later = [(await flaky.get("/who")).status for _ in range(6)]
            assert later == [200] * 6
            assert accepted == seen, "the node that dropped a request got no more"
        finally:
            dropper.close()
            await dropper.wait_closed()
        nothing = await aiohttp_client(make_proxy([dead, closed_port_url()]))
        r = await nothing.get("/v1/sessions")
        assert r.status == 503
        assert r.content_type == "application/problem+json"
        assert r.headers["Retry-After"] == "1"
        problem = await r.json()
        assert problem["status"] == 503 and "no sessiond node answers" in problem["detail"]
    finally:
        for runner in runners:
            await runner.cleanup()


def test_make_cluster_takes_a_port() -> None:
    import subprocess

    run = subprocess.run(
        ["make", "-C", str(ROOT), "-n", "-o", ".venv/bin/sessiond", "cluster", "PORT=9123"],
        capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert "cluster --nodes 3 --port 9123" in run.stdout
