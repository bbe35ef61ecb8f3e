"""config.toml is the one source of settings: every one is documented, loads, and is in README."""

from __future__ import annotations

import re

import msgspec

from server.cli.configdoc import END, START, reference, update_readme
from server.config import Config, load_config
from tests.conftest import ROOT


def test_readme_reference_matches_config_toml() -> None:
    readme = (ROOT / "README.md").read_text()
    toml_text = (ROOT / "config.toml").read_text()
    assert START in readme and END in readme
    assert update_readme(readme, toml_text) == readme, "run `python -m server.cli.configdoc --write`"


def test_every_setting_has_a_comment_and_a_working_default() -> None:
    toml_text = (ROOT / "config.toml").read_text()
    rows = [line for line in reference(toml_text).splitlines() if line.startswith("| `")]
    undocumented = [row for row in rows if row.rstrip().endswith("|  |")]
    assert not undocumented, undocumented
    # The file as shipped loads, and means what the built-in defaults mean.
    from_file = load_config(ROOT / "config.toml", env={})
    for section in msgspec.structs.fields(Config):
        if section.name in ("agents", "providers"):
            continue
        assert getattr(from_file, section.name) == getattr(Config(), section.name), section.name
    # Every plain setting of the Config type is in the file.
    names = set(re.findall(r"^\| `([a-z0-9_]+)` \|", reference(toml_text), re.M))
    for section in msgspec.structs.fields(Config):
        if section.name in ("agents", "providers"):
            continue
        for field in msgspec.structs.fields(section.type):
            assert field.name in names, f"[{section.name}] {field.name} is missing from config.toml"
