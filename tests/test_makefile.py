"""The Makefile: `make serve` installs what the server needs, `make test` the test tools too."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import ROOT


def _dry_run(target: str, venv: Path) -> list[str]:
    run = subprocess.run(
        ["make", "-C", str(ROOT), "-n", target, f"VENV={venv}"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    return [line for line in run.stdout.splitlines() if "pip install" in line]


def test_serve_installs_the_server_alone_and_test_adds_the_dev_tools(tmp_path: Path) -> None:
    serve = _dry_run("serve", tmp_path / "venv")
    assert any(line.rstrip().endswith("pip install --quiet -e .") for line in serve), serve
    assert not any("[dev]" in line for line in serve), "serve never installs the test tools"
    test = _dry_run("test", tmp_path / "venv")
    assert any(line.rstrip().endswith("pip install --quiet -e .") for line in test), test
    assert any("-e '.[dev]'" in line for line in test), test
