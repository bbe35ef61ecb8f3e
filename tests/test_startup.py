"""``sessiond serve`` start-up: what an operator sees when it cannot start, and how it stops.

Every failure is one sentence on stderr and a non-zero exit, at once; never a traceback, never a
process that lives on without listening.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import HEADERS, ROOT, TEST_KEY, ServerProcess
from tests.pg import PG_ADMIN, create_database, drop_database

pytestmark = pytest.mark.slow


def _env(**extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SESSIOND_")}
    return {
        **clean,
        "PYTHONPATH": str(ROOT),
        "SESSIOND_AUTH_API_KEYS": f'["{TEST_KEY}"]',
        "SESSIOND_AUTH_CREATE_FIRST_KEY": "false",
        **extra,
    }


def _serve(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``sessiond serve`` that must exit by itself (a server that keeps running fails the test)."""
    return subprocess.run(
        [sys.executable, "-m", "server", "serve", *args],
        cwd=cwd, env=env or _env(), capture_output=True, text=True, timeout=30,
    )


def _one_sentence(run: subprocess.CompletedProcess[str]) -> str:
    assert run.returncode != 0, run.stdout + run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.startswith("sessiond: ")]
    assert len(lines) == 1, run.stderr
    assert not run.stdout.strip().startswith("listening"), run.stdout
    return lines[0]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_a_port_in_use_is_one_line_and_an_exit(tmp_path: Path, taken_port: int) -> None:
    run = _serve(tmp_path, "--port", str(taken_port), "--data-dir", str(tmp_path / "data"))
    assert _one_sentence(run) == f"sessiond: 127.0.0.1:{taken_port} is in use (another sessiond?)"
    assert run.returncode == 1


@pytest.mark.parametrize("port", ["99999", "-1", "http"])
def test_a_port_outside_the_range_is_refused_by_the_parser(tmp_path: Path, port: str) -> None:
    run = _serve(tmp_path, "--port", port, "--data-dir", str(tmp_path / "data"))
    assert run.returncode == 2
    assert "--port" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "data").exists(), "refused before anything is made"


def test_a_port_outside_the_range_is_refused_from_the_environment(tmp_path: Path) -> None:
    run = _serve(tmp_path, "--data-dir", str(tmp_path / "data"), env=_env(SESSIOND_SERVER_PORT="99999"))
    line = _one_sentence(run)
    assert "port" in line and "65535" in line


def test_a_data_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a directory")
    line = _one_sentence(_serve(tmp_path, "--port", "0", "--data-dir", str(tmp_path / "data")))
    assert line == f"sessiond: {tmp_path / 'data'} is a file, not a directory: point [server] data_dir elsewhere"


def test_a_data_dir_under_proc(tmp_path: Path) -> None:
    line = _one_sentence(_serve(tmp_path, "--port", "0", "--data-dir", "/proc/sessiond"))
    assert line == "sessiond: /proc/sessiond does not exist and cannot be created under /proc"


def test_an_unwritable_data_dir(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        target = Path("/sys")  # a directory even root cannot write in
    else:
        target = tmp_path / "ro"
        target.mkdir(mode=0o500)
    line = _one_sentence(_serve(tmp_path, "--port", "0", "--data-dir", str(target)))
    assert line.startswith(f"sessiond: cannot write in {target}: ")


async def _serve_async(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(_serve, tmp_path, "--port", "0", "--data-dir", str(tmp_path / "data"), env=env)


async def test_a_postgres_database_that_does_not_exist(tmp_path: Path) -> None:
    dsn = await create_database()  # skips without PostgreSQL
    await drop_database(dsn)
    name = dsn.rsplit("/", 1)[1]
    run = await _serve_async(tmp_path, _env(SESSIOND_STORE_KIND="postgres", SESSIOND_STORE_POSTGRES_DSN=dsn))
    line = _one_sentence(run)
    assert run.returncode == 1  # as README says of what serve cannot start with
    assert f"the PostgreSQL database '{name}' does not exist" in line
    assert f"createdb {name}" in line


async def test_postgres_unreachable(tmp_path: Path) -> None:
    dsn = f"postgresql://postgres:hunter2@127.0.0.1:{_closed_port()}/sessiond"
    run = await _serve_async(tmp_path, _env(SESSIOND_STORE_KIND="postgres", SESSIOND_STORE_POSTGRES_DSN=dsn))
    line = _one_sentence(run)
    assert run.returncode == 1
    assert line.startswith("sessiond: cannot reach PostgreSQL at postgresql://postgres:***@127.0.0.1:")
    assert "hunter2" not in run.stderr + run.stdout
    assert PG_ADMIN  # the tests' own server is not the one asked


async def test_redis_down_in_cluster_mode(tmp_path: Path) -> None:
    dsn = await create_database()
    try:
        url = f"redis://127.0.0.1:{_closed_port()}/0"
        env = _env(
            SESSIOND_FANOUT_KIND="redis", SESSIOND_REDIS_URL=url, SESSIOND_STORE_KIND="postgres",
            SESSIOND_STORE_POSTGRES_DSN=dsn, SESSIOND_TOKENS_SECRET=secrets.token_urlsafe(48),
        )
        run = await _serve_async(tmp_path, env)
        line = _one_sentence(run)
        assert run.returncode == 1
        assert line.startswith(f"sessiond: cannot reach Redis at {url} (needed by [fanout] kind)")
    finally:
        await drop_database(dsn)


def test_cluster_mode_refuses_a_secret_of_its_own_and_sqlite(tmp_path: Path) -> None:
    run = _serve(tmp_path, "--port", "0", "--data-dir", str(tmp_path / "data"), env=_env(
        SESSIOND_FANOUT_KIND="redis", SESSIOND_STORE_KIND="postgres",
    ))
    assert _one_sentence(run).startswith(
        "sessiond: cluster mode needs one token signing secret on every node: set [tokens] secret"
    )
    assert not (tmp_path / "data" / "jwt_secret").exists(), "no per-node secret was made"
    run = _serve(tmp_path, "--port", "0", "--data-dir", str(tmp_path / "data"), env=_env(SESSIOND_FANOUT_KIND="redis"))
    assert 'needs [store] kind = "postgres"' in _one_sentence(run)


async def test_the_data_dir_and_database_are_private(
    server_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = server_process()
    url = server.start()
    async with aiohttp.ClientSession(url, headers=HEADERS) as http:
        async with http.post("/v1/sessions", json={"title": "private"}) as r:
            assert r.status == 201
    data = tmp_path / "data"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in data.iterdir()}
    assert {"sessiond.db", "sessiond.db-wal", "sessiond.db-shm", "jwt_secret"} <= set(files), files
    assert all(mode == 0o600 for mode in files.values()), files


def test_sigterm_says_it_stops(server_process: Callable[..., ServerProcess]) -> None:
    server = server_process()
    server.start()
    assert server.terminate() == 0
    assert "sessiond: stopping (SIGTERM)" in server.output


def test_a_data_dir_open_to_others_is_a_warning_and_serve_goes_on(
    server_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o755)
    server = server_process()
    server.start()
    warning = f"sessiond: warning: {data} is writable"
    assert any(line.startswith(warning) and "chmod 700" in line for line in server.output), server.output
    assert server.terminate() == 0


@pytest.mark.parametrize("kind", ["not a database", "newer schema"])
def test_a_database_serve_cannot_use(tmp_path: Path, kind: str) -> None:
    import sqlite3

    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    path = data / "sessiond.db"
    if kind == "not a database":
        path.write_bytes(b"this is not SQLite" * 100)
    else:
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE sessions (id TEXT)")
        db.execute("PRAGMA user_version = 99")
        db.commit()
        db.close()
    line = _one_sentence(_serve(tmp_path, "--port", "0", "--data-dir", str(data)))
    if kind == "not a database":
        assert line == f"sessiond: cannot open {path} as an SQLite database: file is not a database"
    else:
        assert line.startswith(f"sessiond: {path} has schema 99, newer than this sessiond knows")
