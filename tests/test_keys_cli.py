"""``sessiond keys``: says which database it uses, and never makes an empty one by surprise."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def _keys(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIOND_")}
    return subprocess.run(
        [sys.executable, "-m", "server", "keys", *args],
        cwd=cwd, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60,
    )


def test_keys_refuse_where_there_is_no_database(tmp_path: Path) -> None:
    for command in (["create", "--name", "ops"], ["list"]):
        run = _keys(tmp_path, *command)
        assert run.returncode == 1, run.stdout + run.stderr
        assert "Traceback" not in run.stderr
        expected = tmp_path / "data" / "sessiond.db"
        assert run.stderr.strip() == (
            f"sessiond: no database at {expected}: run this where the server runs (or pass --data-dir or"
            " --config), or add --create to make a new one"
        )
        assert "sk" not in run.stdout
    assert not (tmp_path / "data").exists(), "nothing was made"


def test_keys_create_with_create_makes_a_private_database_and_says_where(tmp_path: Path) -> None:
    made = _keys(tmp_path, "create", "--create", "--name", "ops")
    assert made.returncode == 0, made.stderr
    db = tmp_path / "data" / "sessiond.db"
    assert f"database: {db}" in made.stderr
    assert made.stdout.splitlines()[-1].startswith("sk")
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
    listed = _keys(tmp_path, "list")
    assert listed.returncode == 0, listed.stderr
    assert f"database: {db}" in listed.stderr
    assert "\tops\t" in listed.stdout
    # From elsewhere, with --data-dir: the same database, the same key.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    again = _keys(elsewhere, "list", "--data-dir", str(db.parent))
    assert again.returncode == 0 and "\tops\t" in again.stdout
    assert f"database: {db}" in again.stderr
