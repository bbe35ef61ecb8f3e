"""The README a newcomer reads first: two set-up commands, where `sessiond` is, links that work."""

from __future__ import annotations

import re

from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_the_readme_starts_with_exactly_the_two_set_up_commands() -> None:
    first_block = README.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["make serve", "make test"]
    assert README.index("```sh") < README.index("\n## "), "before anything else"


def test_the_readme_says_where_sessiond_lives() -> None:
    head = README.split("\n## ", 1)[0]
    assert ".venv/bin/sessiond" in head


def test_the_test_services_are_documented() -> None:
    for name in ("SESSIOND_TEST_REDIS_URL", "SESSIOND_TEST_POSTGRES_URL", "SESSIOND_REQUIRE_REDIS", "sessiond_test_"):
        assert name in README, name


def test_every_relative_link_points_into_the_repository() -> None:
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if re.match(r"^[a-z]+:", target):
                continue  # an absolute URL
            resolved = (doc.parent / target).resolve()
            assert resolved.is_relative_to(ROOT), f"{doc.name}: {target} points outside the repository"
            assert resolved.exists(), f"{doc.name}: {target} does not exist"
