"""Fixtures: the real server on an ephemeral port, a real SQLite file in tmp_path, real Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from server.app import make_app
from server.config import Config, load_config

TEST_KEY = "sk-test-0123456789abcdef"
HEADERS = {"X-API-Key": TEST_KEY}
ROOT = Path(__file__).resolve().parent.parent

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


def make_config(data_dir: Path, **sections: dict[str, Any]) -> Config:
    """A config for tests: isolated data dir, a known API key, a fast simulated model."""
    overrides: dict[str, dict[str, Any]] = {
        "server": {"data_dir": str(data_dir)},
        "auth": {"api_keys": [TEST_KEY], "create_first_key": False},
        "simulated": {"tokens_per_second": 0, "reply_tokens": 20},
        "log": {"access": False},
    }
    for name, values in sections.items():
        overrides.setdefault(name, {}).update(values)
    return load_config(None, env={}, overrides=overrides)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path / "data")


@pytest.fixture
async def make_client(aiohttp_client: Any, tmp_path: Path) -> ClientFactory:
    """Start a real server (make_app on 127.0.0.1:0); sections override the test config."""

    async def factory(data_dir: Path | None = None, **sections: dict[str, Any]) -> TestClient[Any, Any]:
        cfg = make_config(data_dir or tmp_path / "data", **sections)
        return await aiohttp_client(make_app(cfg), headers=HEADERS)  # type: ignore[no-any-return]

    return factory


@pytest.fixture
async def client(make_client: ClientFactory) -> TestClient[Any, Any]:
    return await make_client()


async def new_session(client: TestClient[Any, Any], **body: Any) -> dict[str, Any]:
    resp = await client.post("/v1/sessions", json=body)
    assert resp.status == 201, await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


class ServerProcess:
    """``python -m server serve`` as a child process, for crash and CLI tests."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, args: list[str] | None = None) -> None:
        self.data_dir = data_dir
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),  # the code of this checkout, whatever is installed
            "SESSIOND_AUTH_API_KEYS": f'["{TEST_KEY}"]',
            "SESSIOND_AUTH_CREATE_FIRST_KEY": "false",
            "SESSIOND_LOG_ACCESS": "false",
            "SESSIOND_SIMULATED_TOKENS_PER_SECOND": "0",
            **(env or {}),
        }
        self.args = args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.output: list[str] = []
        self._drainer: threading.Thread | None = None

    def start(self) -> str:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server", "serve", "--port", "0", "--data-dir", str(self.data_dir), *self.args],
            cwd=self.data_dir.parent,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode().rstrip()
            self.output.append(line)
            if line.startswith("listening on "):
                self.url = line.removeprefix("listening on ")
                # Keep reading its output, or a chatty server would block on a full pipe.
                self._drainer = threading.Thread(target=self._drain, daemon=True)
                self._drainer.start()
                return self.url
        raise RuntimeError("server exited before listening:\n" + "\n".join(self.output))

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            for raw in self.proc.stdout:
                self.output.append(raw.decode(errors="replace").rstrip())
                del self.output[:-500]
        except (OSError, ValueError):
            pass  # closed by stop()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(20)
        if self._drainer is not None:
            self._drainer.join(10)  # every line it printed, up to its exit, is in self.output
        return code

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    made: list[ServerProcess] = []

    def factory(env: dict[str, str] | None = None, data_dir: Path | None = None) -> ServerProcess:
        proc = ServerProcess(data_dir or tmp_path / "data", env)
        made.append(proc)
        return proc

    yield factory
    for proc in made:
        proc.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=HEADERS) as session:
        yield session


# -- Redis --------------------------------------------------------------------------------

REDIS_URL = os.environ.get("SESSIOND_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    """A Redis database of our own (13), flushed before and after; skip if none answers."""
    import redis.asyncio as aioredis

    conn = aioredis.from_url(REDIS_URL)
    try:
        await asyncio.wait_for(conn.ping(), 2)
    except Exception as exc:  # no server, refused, timeout
        await conn.aclose()
        if os.environ.get("SESSIOND_REQUIRE_REDIS") == "1":
            pytest.fail(f"SESSIOND_REQUIRE_REDIS=1 but no Redis answers at {REDIS_URL}: {exc}")
        pytest.skip(f"no Redis answers at {REDIS_URL} ({exc})")
    await conn.flushdb()
    try:
        yield REDIS_URL
    finally:
        await conn.flushdb()
        await conn.aclose()
