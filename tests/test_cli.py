"""The ``sessiond`` command's manners: --version, misspelt variables, logs for people or machines,
and an API key sent where an access token goes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pexpect  # type: ignore[import-untyped]
import pytest

from server.app import make_app
from tests.conftest import ROOT, TEST_KEY, ServerProcess, make_config

SECRET_LOG = "created the token signing secret"


def _env(**extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SESSIOND_")}
    return {**clean, "PYTHONPATH": str(ROOT), **extra}


def _run(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", *args], cwd=cwd, env=env or _env(), capture_output=True, text=True, timeout=60
    )


def test_version(tmp_path: Path) -> None:
    from importlib.metadata import version

    run = _run(tmp_path, "--version")
    assert run.returncode == 0
    assert run.stdout.strip() == f"sessiond {version('sessiond')}"


def test_a_misspelt_variable_is_named_with_the_closest_setting(tmp_path: Path) -> None:
    env = _env(SESSIOND_SERVER_PROT="9000", SESSIOND_NONSENSE="1", SESSIOND_URL="http://x", SESSIOND_TEST_REDIS_URL="r")
    run = _run(tmp_path, "keys", "list", env=env)
    warnings = [line for line in run.stderr.splitlines() if "warning" in line]
    assert warnings == [
        "sessiond: warning: SESSIOND_NONSENSE is not a setting and is ignored",
        "sessiond: warning: SESSIOND_SERVER_PROT is not a setting and is ignored (did you mean SESSIOND_SERVER_PORT?)",
    ]


@pytest.mark.slow
def test_logs_are_json_lines_when_not_on_a_terminal(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data")
    try:
        server.start()
        assert server.terminate() == 0
    finally:
        server.stop()
    record = json.loads(next(line for line in server.output if SECRET_LOG in line))
    assert record["level"] == "info" and record["logger"] == "sessiond.auth"


def _serve_on_a_terminal(tmp_path: Path, **env: str) -> str:
    tmp_path.mkdir()
    child = pexpect.spawn(
        sys.executable, ["-m", "server", "serve", "--port", "0", "--data-dir", str(tmp_path / "data")],
        cwd=str(tmp_path), env=_env(SESSIOND_AUTH_CREATE_FIRST_KEY="false", **env), encoding="utf-8", timeout=30,
    )
    child.expect_exact("listening on http://127.0.0.1:")
    before = str(child.before)
    child.kill(signal.SIGTERM)
    child.expect_exact("sessiond: stopping (SIGTERM)")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    return next(line for line in before.splitlines() if SECRET_LOG in line)


@pytest.mark.slow
def test_logs_are_text_on_a_terminal_unless_told(tmp_path: Path) -> None:
    line = _serve_on_a_terminal(tmp_path / "a")
    assert " INFO sessiond.auth: created the token signing secret in " in line
    assert not line.lstrip().startswith("{")
    forced = _serve_on_a_terminal(tmp_path / "b", SESSIOND_LOG_FORMAT="json")
    assert json.loads(forced)["msg"].startswith(SECRET_LOG)


async def test_an_api_key_sent_as_a_bearer_token_is_told_where_it_goes(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await aiohttp_client(make_app(make_config(tmp_path / "data")))
    for key in (TEST_KEY, "sk_abc123_secret"):
        resp = await client.get("/v1/sessions", headers={"Authorization": f"Bearer {key}"})
        assert resp.status == 401
        assert resp.content_type == "application/problem+json"
        assert "X-API-Key" in (await resp.json())["detail"]
    ok = await client.get("/v1/sessions", headers={"X-API-Key": TEST_KEY})
    assert ok.status == 200
