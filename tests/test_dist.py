"""``make dist``: one self-contained sessiond.pyz that serves with nothing but Python."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

KEY = "sk-dist-0123456789abcdef"


def _lines(proc: subprocess.Popen[bytes]) -> queue.Queue[str]:
    out: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            out.put(raw.decode(errors="replace").rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    return out


def _call(url: str, body: dict[str, object] | None = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url, data=data, headers={"X-API-Key": KEY, "Content-Type": "application/json"}, method="POST" if data else "GET"
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, resp.read()


def test_make_dist_builds_a_pyz_that_serves(tmp_path: Path) -> None:
    pyz = tmp_path / "out" / "sessiond.pyz"
    # -o: use the virtualenv as it is (make test has just made it), never reinstall it here.
    build = subprocess.run(
        ["make", "-C", str(ROOT), "-o", ".venv/bin/sessiond", "-o", ".venv/.dev", "dist", f"DIST={pyz}"],
        capture_output=True, text=True, timeout=900,
    )
    assert build.returncode == 0, build.stdout[-5000:] + build.stderr[-5000:]
    assert pyz.is_file() and pyz.stat().st_size > 1_000_000

    # Every CPython 3.11 on this machine, the system's own first (Debian 12's is 3.11.2, where
    # the build's may be a later 3.11), then the one under the virtualenv: only Python, none of
    # the virtualenv's packages.
    pythons = [*_other_pythons(), getattr(sys, "_base_executable", sys.executable)]
    for i, python in enumerate(pythons):
        _serve_from_the_pyz(python, pyz, tmp_path / f"run{i}")


def _version_of(python: str) -> tuple[int, ...] | None:
    try:
        out = subprocess.run(
            [python, "-I", "-c", "import sys; print(*sys.version_info[:3])"],
            capture_output=True, text=True, timeout=30,
        ).stdout
    except OSError:
        return None
    return tuple(int(x) for x in out.split()) or None


def _other_pythons() -> list[str]:
    """The 3.11 interpreters of this machine whose version differs from the build's."""
    build = tuple(sys.version_info[:3])
    found: dict[tuple[int, ...], str] = {}
    for candidate in ("/usr/bin/python3", "/usr/bin/python3.11", "/usr/local/bin/python3.11"):
        version = _version_of(candidate) if Path(candidate).exists() else None
        if version is not None and version[:2] == (3, 11) and version != build:
            found.setdefault(version, candidate)
    return list(found.values())


def _serve_from_the_pyz(python: str, pyz: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SESSIOND_", "PYTHON", "VIRTUAL_ENV"))}
    env.update({
        "SHIV_ROOT": str(tmp_path / "shiv"),
        "SESSIOND_AUTH_API_KEYS": json.dumps([KEY]),
        "SESSIOND_AUTH_CREATE_FIRST_KEY": "false",
        "SESSIOND_SIMULATED_TOKENS_PER_SECOND": "0",
    })
    proc = subprocess.Popen(
        [python, "-I", str(pyz), "serve", "--port", "0", "--data-dir", str(run_dir / "data")],
        cwd=run_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    lines = _lines(proc)
    seen: list[str] = []
    try:
        while not any(line.startswith("listening on ") for line in seen):
            try:
                seen.append(lines.get(timeout=120))
            except queue.Empty:
                raise AssertionError(f"no `listening on` from the pyz under {python}:\n" + "\n".join(seen)) from None
            assert proc.poll() is None or not lines.empty(), f"the pyz exited under {python}:\n" + "\n".join(seen)
        url = next(line for line in seen if line.startswith("listening on ")).removeprefix("listening on ")
        assert _call(f"{url}/healthz")[0] == 200
        status, body = _call(f"{url}/v1/sessions", {"title": "from the pyz"})
        assert status == 201
        sid = json.loads(body)["id"]
        status, body = _call(f"{url}/v1/sessions/{sid}/messages", {"content": "hello"})
        assert status == 200 and json.loads(body)["message"]["content"].startswith("Simulated")
        status, asset = _call(f"{url}/docs/assets/swagger-ui.css")  # package data travels in the file
        assert status == 200 and len(asset) > 1000
        # What ran came out of the pyz, not from an installed sessiond.
        extracted = list((tmp_path / "shiv").glob("sessiond.pyz_*/site-packages/server/app.py"))
        assert extracted, "the pyz unpacks its own code under SHIV_ROOT"
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        assert proc.stdout is not None
        proc.stdout.close()
    assert code == 0, f"a clean stop on SIGTERM under {python}"
