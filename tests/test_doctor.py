"""``sessiond doctor``: all good says so and exits 0; each fault is named in plain words and exits 1."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.conftest import ROOT


def _env() -> dict[str, str]:
    """This checkout's code, and no SESSIOND_* setting from outside."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SESSIOND_")}
    return {**clean, "PYTHONPATH": str(ROOT)}


def _doctor(cwd: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    run = subprocess.run(
        [sys.executable, "-m", "server", "doctor", *args],
        cwd=cwd, env={**_env(), **(env or {})}, capture_output=True, text=True, timeout=60,
    )
    return run.returncode, run.stdout + run.stderr


def _line(out: str, name: str) -> str:
    return next(line for line in out.splitlines() if line.split()[1:2] == [name])


def test_a_healthy_installation_passes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    created = subprocess.run(
        [sys.executable, "-m", "server", "keys", "create", "--create", "--data-dir", str(data), "--name", "ops"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60,
    )
    assert created.returncode == 0, created.stderr
    code, out = _doctor(tmp_path, "--data-dir", str(data))
    assert code == 0, out
    assert "all checks passed" in out
    assert _line(out, "config").startswith("ok")
    assert "is writable" in _line(out, "data")
    assert "(current)" in _line(out, "store")
    assert "1 active key(s)" in _line(out, "api")
    assert "not used" in _line(out, "redis")
    assert "simulated" in _line(out, "provider")
    # The shipped config.toml parses as it is.
    _, shipped = _doctor(tmp_path, "--config", str(ROOT / "config.toml"), "--data-dir", str(data))
    assert _line(shipped, "config").startswith("ok"), shipped


def test_a_fresh_data_dir_is_fine_and_left_untouched(tmp_path: Path) -> None:
    code, out = _doctor(tmp_path, "--data-dir", str(tmp_path / "new"))
    assert code == 0, out
    assert "will create it" in _line(out, "data")
    assert "no database yet" in _line(out, "store")
    assert not (tmp_path / "new").exists(), "the doctor changes nothing"


def test_a_broken_config_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nport = \n")
    code, out = _doctor(tmp_path, "--config", str(bad))
    assert code == 1
    assert out.startswith("FAIL  config")
    assert "bad.toml" in out
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[server]\nprot = 8080\n")
    code, out = _doctor(tmp_path, "--config", str(unknown))
    assert code == 1
    assert "prot" in out


def test_a_data_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a directory")
    code, out = _doctor(tmp_path, "--data-dir", str(tmp_path / "data"))
    assert code == 1
    assert "is a file, not a directory" in _line(out, "data")
    assert "1 problem(s) found" in out


def test_a_database_from_a_newer_sessiond(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = sqlite3.connect(data / "sessiond.db")
    db.execute("CREATE TABLE sessions (id TEXT)")
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    code, out = _doctor(tmp_path, "--data-dir", str(data))
    assert code == 1
    assert "schema 99, newer than this sessiond knows" in _line(out, "store")
    assert "upgrade sessiond" in out


def test_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "sessiond.db").write_bytes(b"this is not SQLite" * 100)
    code, out = _doctor(tmp_path, "--data-dir", str(data))
    assert code == 1
    assert "cannot open" in _line(out, "store")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again on exit: nothing listens there


def test_redis_in_use_but_unreachable(tmp_path: Path) -> None:
    env = {"SESSIOND_FANOUT_KIND": "redis", "SESSIOND_REDIS_URL": f"redis://:hunter2@127.0.0.1:{_closed_port()}/0"}
    code, out = _doctor(tmp_path, "--data-dir", str(tmp_path / "data"), env=env)
    assert code == 1
    line = _line(out, "redis")
    assert line.startswith("FAIL") and "cannot reach Redis" in line and "[fanout] kind" in line
    assert "hunter2" not in out, "a password in the URL is never printed"


def test_redis_in_use_and_reachable(tmp_path: Path, redis_url: str) -> None:
    env = {"SESSIOND_LIMITS_BACKEND": "redis", "SESSIOND_REDIS_URL": redis_url}
    code, out = _doctor(tmp_path, "--data-dir", str(tmp_path / "data"), env=env)
    assert code == 0, out
    assert "answers" in _line(out, "redis")


async def _doctor_async(tmp_path: Path, config: Path, env: dict[str, str] | None = None) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "doctor", "--config", str(config), "--data-dir", str(tmp_path / "data"),
        cwd=tmp_path, env={**_env(), **(env or {})}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out = (await asyncio.wait_for(proc.communicate(), 60))[0].decode()
    assert proc.returncode is not None
    return proc.returncode, out


def _provider_line(out: str, name: str) -> str:
    return next(line for line in out.splitlines() if line.split()[1:3] == ["provider", f"[providers.{name}]"])


async def test_configured_providers_are_asked_for_their_models(aiohttp_server: Any, tmp_path: Path) -> None:
    from aiohttp import web

    from tests.fake_models import FakeOllama, FakeOpenAI, closed_port_url

    openai, keyed, ollama = FakeOpenAI("gpt-test"), FakeOpenAI("gpt-keyed"), FakeOllama("llama3:latest")
    keyed.api_key = "sk-right"
    root_only = await aiohttp_server(web.Application())  # a host that answers 404 to everything
    for fake in (openai, keyed, ollama):
        await fake.start()
    try:
        config = tmp_path / "providers.toml"
        config.write_text(
            f'[providers.up]\nkind = "openai"\nbase_url = "{openai.url}/v1"\nmodel = "gpt-test"\n'
            f'[providers.wrongmodel]\nkind = "openai"\nbase_url = "{openai.url}/v1"\nmodel = "gpt-5"\n'
            f'[providers.keyed]\nkind = "openai"\nbase_url = "{keyed.url}/v1"\nmodel = "gpt-keyed"\n'
            'api_key_env = "DOCTOR_TEST_KEY"\n'
            f'[providers.local]\nkind = "ollama"\nbase_url = "{ollama.url}"\nmodel = "llama3"\n'
            f'[providers.notanapi]\nkind = "openai"\nbase_url = "{root_only.make_url("/v1")}"\nmodel = "m"\n'
            f'[providers.down]\nkind = "openai"\nbase_url = "{closed_port_url()}/v1"\nmodel = "m"\n'
            '[agents.helper]\nmodel = ["up", "local/llama3", "up/gpt-test-mini"]\n'
        )
        code, out = await _doctor_async(tmp_path, config, {"DOCTOR_TEST_KEY": "sk-wrong"})
        assert code == 1
        assert _provider_line(out, "local").startswith("ok")
        up = _provider_line(out, "up")
        assert up.startswith("FAIL") and "does not list 'gpt-test-mini' (it lists 1: gpt-test)" in up, up
        assert "does not list 'gpt-5'" in _provider_line(out, "wrongmodel")
        keyed_line = _provider_line(out, "keyed")
        assert keyed_line.startswith("FAIL") and "refused the key in $DOCTOR_TEST_KEY (HTTP 401)" in keyed_line
        assert "sk-wrong" not in out, "a key is never printed"
        assert "answered HTTP 404, not a list of models" in _provider_line(out, "notanapi")
        assert "does not answer" in _provider_line(out, "down")

        # The right key, and no route asking for a model the provider lacks: those pass.
        config.write_text(
            f'[providers.up]\nkind = "openai"\nbase_url = "{openai.url}/v1"\nmodel = "gpt-test"\n'
            f'[providers.keyed]\nkind = "openai"\nbase_url = "{keyed.url}/v1"\nmodel = "gpt-keyed"\n'
            'api_key_env = "DOCTOR_TEST_KEY"\n'
        )
        code, out = await _doctor_async(tmp_path, config, {"DOCTOR_TEST_KEY": "sk-right"})
        assert code == 0, out
        assert "lists 'gpt-keyed'" in _provider_line(out, "keyed")
        # An unset key variable is what serve would refuse; the doctor says it first, in the same words.
        code, out = await _doctor_async(tmp_path, config)
        assert code == 1
        assert "FAIL  provider  providers.keyed.api_key_env: the environment variable DOCTOR_TEST_KEY is not set" in out
    finally:
        for fake in (openai, keyed, ollama):
            await fake.stop()


def test_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code, out = _doctor(tmp_path, "--data-dir", str(tmp_path / "data"), env={"SESSIOND_SERVER_PORT": str(port)})
    assert code == 1
    assert _line(out, "port") == f"FAIL  port      127.0.0.1:{port} is in use (another sessiond?)"
    code, out = _doctor(tmp_path, "--data-dir", str(tmp_path / "data"), env={"SESSIOND_SERVER_PORT": str(port)})
    assert code == 0 and "is free" in _line(out, "port")


def test_cluster_mode_with_the_sqlite_store(tmp_path: Path) -> None:
    code, out = _doctor(tmp_path, "--data-dir", str(tmp_path / "data"), env={"SESSIOND_FANOUT_KIND": "redis"})
    assert code == 1
    assert 'needs [store] kind = "postgres"' in _line(out, "cluster")


async def test_a_postgres_database_that_does_not_exist(tmp_path: Path) -> None:
    from tests.pg import create_database, drop_database

    dsn = await create_database()
    await drop_database(dsn)
    name = dsn.rsplit("/", 1)[1]
    config = tmp_path / "pg.toml"
    config.write_text(f'[store]\nkind = "postgres"\npostgres_dsn = "{dsn}"\n')
    code, out = await _doctor_async(tmp_path, config)
    assert code == 1
    line = _line(out, "postgres")
    assert line.startswith("FAIL") and f"the PostgreSQL database '{name}' does not exist" in line
    created = await create_database()
    try:
        config.write_text(f'[store]\nkind = "postgres"\npostgres_dsn = "{created}"\n')
        code, out = await _doctor_async(tmp_path, config)
        assert code == 0, out
        assert "answers (PostgreSQL" in _line(out, "postgres")
    finally:
        await drop_database(created)


def test_a_data_dir_open_to_other_users_is_a_warning(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o755)
    code, out = _doctor(tmp_path, "--data-dir", str(data))
    assert code == 0, out  # a warning, not a failure
    line = _line(out, "data")
    assert line.startswith("warn") and "open to other users (mode 0755)" in line and f"chmod 700 {data}" in line
    data.chmod(0o700)
    _, out = _doctor(tmp_path, "--data-dir", str(data))
    assert _line(out, "data").startswith("ok")


def test_a_model_whose_tokenizer_is_not_on_disk_is_named(tmp_path: Path) -> None:
    from tests.fake_models import closed_port_url

    config = tmp_path / "gpt.toml"
    config.write_text(f'[providers.openai]\nkind = "openai"\nbase_url = "{closed_port_url()}/v1"\nmodel = "gpt-4o"\n')
    _, out = _doctor(tmp_path, "--config", str(config), "--data-dir", str(tmp_path / "data"))
    line = _line(out, "tokenizer")
    assert line.startswith("warn") and "gpt-4o: counted with cl100k_base, an estimate" in line, out
    assert str(tmp_path / "data" / "tiktoken") in line and "is missing" in line


async def test_webhook_endpoints_that_fail_are_named(tmp_path: Path) -> None:
    from actors.core.records import PutDelivery
    from actors.store.sqlite import SqliteStore

    data = tmp_path / "data"
    store = SqliteStore(data / "sessiond.db")
    await store.open()
    now = time.time()
    await store.commit([PutDelivery("whk_1", "flaky", "ses_x", "task.completed", b"{}", now)])
    assert [d.id for d in await store.claim_deliveries("node", now, 60, 10)] == ["whk_1"]
    assert await store.finish_delivery(
        "whk_1", "node", status="failed", attempts=8, next_attempt_at=None,
        last_error="HTTP 500: upstream down", last_status=500, delivered_at=None,
    )
    await store.aclose()
    secret = "whsec_" + base64.b64encode(b"k" * 24).decode()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        up = f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
        down = f"http://127.0.0.1:{_closed_port()}/hook"
        endpoints = ", ".join(
            f'{name} = {{ url = "{url}", secret = "{secret}" }}'
            for name, url in (("flaky", up), ("down", down), ("fine", up))
        )
        env = {"SESSIOND_WEBHOOKS_ENDPOINTS": f"{{ {endpoints} }}"}
        code, out = _doctor(tmp_path, "--data-dir", str(data), env=env)
    assert code == 1, out
    lines = {line.split("[webhooks.endpoints.")[1].split("]")[0]: line
             for line in out.splitlines() if line.split()[1:2] == ["webhook"]}
    assert lines["flaky"].startswith("FAIL") and "1 delivery(ies) failed" in lines["flaky"]
    assert "HTTP 500: upstream down" in lines["flaky"]
    assert lines["down"].startswith("FAIL") and "does not accept a connection" in lines["down"]
    assert lines["fine"].startswith("ok")

    bad = {"SESSIOND_WEBHOOKS_ENDPOINTS": '{ x = { url = "ftp://example.com/", secret = "whsec_AAAA" } }'}
    code, out = _doctor(tmp_path, "--data-dir", str(data), env=bad)
    assert code == 1
    assert _line(out, "webhooks").startswith("FAIL") and "webhooks.endpoints.x.url" in out


def test_postgres_in_use_but_unreachable(tmp_path: Path) -> None:
    dsn = f"postgresql://app:hunter2@127.0.0.1:{_closed_port()}/sessiond"
    env = {"SESSIOND_STORE_KIND": "postgres", "SESSIOND_STORE_POSTGRES_DSN": dsn}
    code, out = _doctor(tmp_path, "--data-dir", str(tmp_path / "data"), env=env)
    assert code == 1
    line = _line(out, "postgres")
    assert line.startswith("FAIL") and "cannot reach PostgreSQL at postgresql://app:***@127.0.0.1:" in line, out
    assert "hunter2" not in out, "a password in the DSN is never printed"


def test_an_sqlite_library_too_old_for_the_store_is_named() -> None:
    """The store needs SQLite 3.35 (RETURNING) and the JSON functions: the check says so before
    anything opens, instead of a syntax error at the first commit. This Python's own library
    passes it (else nothing here would run)."""
    from server.preflight import FAIL, SQLITE_OLDEST, check_sqlite_library

    assert sqlite3.sqlite_version_info >= SQLITE_OLDEST
    assert check_sqlite_library() is None
    old = check_sqlite_library((3, 34, 1))
    assert old is not None and old.state == FAIL and old.name == "store"
    assert "SQLite library is 3.34.1; sessiond needs 3.35.0 or newer" in old.detail
    assert check_sqlite_library((3, 35, 0)) is None
