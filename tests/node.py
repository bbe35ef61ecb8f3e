"""Running the frontend client libraries (npm packages from tests/js, installed from its lock
file) in Node against the test server."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import ROOT

__all__ = ["JS_DIR", "base_url", "require_node", "run_node"]

JS_DIR = ROOT / "tests" / "js"


def require_node() -> None:
    """Skip without node and npm, except in CI (CI set), where they must be there."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        reason = f"{' and '.join(missing)} not found: the frontend client tests need Node"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    # npm keeps what it installed in node_modules/.package-lock.json: none, or older than the
    # committed lock file, and the packages are installed (again) from the lock.
    installed = JS_DIR / "node_modules" / ".package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < (JS_DIR / "package-lock.json").stat().st_mtime:
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=JS_DIR, check=True, capture_output=True)


def base_url(client: TestClient[Any, Any]) -> str:
    return str(client.make_url("")).rstrip("/")


async def run_node(script: str, *args: Any) -> Any:
    """Run ``tests/js/<script>`` with ``args`` (non-strings as JSON); its stdout as JSON."""
    argv = [a if isinstance(a, str) else json.dumps(a) for a in args]
    proc = await asyncio.create_subprocess_exec(
        "node", str(JS_DIR / script), *argv, cwd=JS_DIR,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode == 0, f"node {script} failed:\n{err.decode()}"
    return json.loads(out)
