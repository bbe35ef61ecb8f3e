"""Numbers in the configuration are bounded: a value the server cannot run with is refused when
the configuration loads, in one sentence naming the setting and its bound, instead of being
accepted and breaking the server later (``[sessions] replay_events = 0`` made every activation
of a session raise IndexError). The values config.toml documents as "off", and the shipped
defaults, still load.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from server.config import Config, ConfigError, load_config
from tests.conftest import ROOT

# (section, setting, a refused value, the type msgspec names, the bound, a value taken beside it)
# Each refused value is just past its bound; the last one is the bound itself (for "> 0.0", 0.001).
BOUNDED: list[tuple[str, str, Any, str, str, Any]] = [
    ("server", "port", 65536, "int", "<= 65535", 65535),
    ("server", "max_body_bytes", 0, "int", ">= 1", 1),
    ("server", "header_timeout_seconds", 0, "float", "> 0.0", 0.001),
    ("server", "body_timeout_seconds", 0, "float", "> 0.0", 0.001),
    ("server", "min_body_bytes_per_second", -1, "int", ">= 0", 0),
    ("server", "backlog", 0, "int", ">= 1", 1),
    ("server", "backlog", 2**31, "int", "<= 2147483647", 2**31 - 1),
    ("server", "shutdown_timeout_seconds", 0, "float", "> 0.0", 0.001),
    ("server", "gc_young_objects", -1, "int", ">= 0", 0),
    ("server", "gc_young_objects", 2**31, "int", "<= 2147483647", 2**31 - 1),
    ("store", "max_batch", 0, "int", ">= 1", 1),
    ("store", "checkpoint_seconds", -0.5, "float", ">= 0.0", 0),
    ("store", "wal_size_limit_bytes", -1, "int", ">= 0", 0),
    ("store", "postgres_pool_size", 0, "int", ">= 1", 1),
    ("sessions", "idle_seconds", 0, "float", "> 0.0", 0.001),
    ("sessions", "mailbox_size", 0, "int", ">= 1", 1),
    ("sessions", "max_live", 0, "int", ">= 1", 1),
    ("sessions", "replay_memory_bytes", 0, "int", ">= 1", 1),
    ("tokens", "refreshes_per_hour", 0, "int", ">= 1", 1),
    ("documents", "max_extractions", 0, "int", ">= 1", 1),
    ("sessions", "event_retention", 0, "int", ">= 1", 1),
    ("sessions", "event_retention_bytes", 0, "int", ">= 1", 1),
    ("sessions", "seq_block", 0, "int", ">= 1", 1),
    ("sessions", "max_queued", -1, "int", ">= 0", 0),
    ("sessions", "replay_events", 0, "int", ">= 1", 1),
    ("sessions", "replay_events", -5, "int", ">= 1", 1),
    ("sessions", "fold_seconds", -1.0, "float", ">= 0.0", 0),
    ("streams", "heartbeat_seconds", 0, "float", "> 0.0", 0.001),
    ("streams", "retry_ms", 0, "int", ">= 1", 1),
    ("streams", "write_timeout_seconds", 0, "float", "> 0.0", 0.001),
    ("streams", "max_batch_bytes", 0, "int", ">= 1", 1),
    ("streams", "direct_write_bytes", -1, "int", ">= 0", 0),
    ("admission", "max_running_tasks", -1, "int", ">= 0", 0),
    ("admission", "max_open_streams", -1, "int", ">= 0", 0),
    ("admission", "max_streams_per_token", -1, "int", ">= 0", 0),
    ("admission", "max_streams_per_guest", -1, "int", ">= 0", 0),
    ("admission", "max_streams_per_end_user", -1, "int", ">= 0", 0),
    ("admission", "max_streams_per_session", -1, "int", ">= 0", 0),
    ("admission", "retry_after_seconds", 0, "int", ">= 1", 1),
    ("simulated", "tokens_per_second", -1, "float", ">= 0.0", 0),
    ("simulated", "reply_tokens", -1, "int", ">= 0", 0),
    ("cluster", "lease_ms", 0, "int", ">= 1", 1),
    ("cluster", "forward_timeout_seconds", 0, "float", "> 0.0", 0.001),
    ("cluster", "stream_maxlen", 0, "int", ">= 1", 1),
    ("cluster", "stream_ttl_seconds", 0, "int", ">= 1", 1),
    ("cluster", "outbox_events", 0, "int", ">= 1", 1),
    ("tokens", "access_ttl_seconds", 0, "int", ">= 1", 1),
    ("tokens", "refresh_ttl_seconds", 0, "int", ">= 1", 1),
    ("guests", "ttl_seconds", -1, "int", ">= 0", 0),
    ("limits", "guest_messages_per_hour", -1, "int", ">= 0", 0),
    ("limits", "guest_messages_per_day", -1, "int", ">= 0", 0),
    ("limits", "guest_tokens_per_day", -1, "int", ">= 0", 0),
    ("limits", "reserve_reply_tokens", -1, "int", ">= 0", 0),
    ("limits", "share_views_per_hour", -1, "int", ">= 0", 0),
    ("limits", "share_views_per_day", -1, "int", ">= 0", 0),
    ("routing", "cooldown_seconds", -1, "float", ">= 0.0", 0),
    ("routing", "probe_interval_seconds", 0, "float", "> 0.0", 0.001),
    ("routing", "probe_timeout_seconds", 0, "float", "> 0.0", 0.001),
    ("tools", "timeout_seconds", 0, "float", "> 0.0", 0.001),
    ("tools", "max_rounds", 0, "int", ">= 1", 1),
    ("tools", "approval_timeout_seconds", 0, "float", "> 0.0", 0.001),
    ("documents", "max_bytes", 0, "int", ">= 1", 1),
    ("documents", "context_tokens", -1, "int", ">= 0", 0),
    ("documents", "chunk_words", 9, "int", ">= 10", 10),
    ("documents", "max_pages", -1, "int", ">= 0", 0),
    ("documents", "max_chars", -1, "int", ">= 0", 0),
    ("documents", "extract_seconds", -1, "float", ">= 0.0", 0),
    ("documents", "extract_cpu_seconds", -1, "int", ">= 0", 0),
    ("documents", "extract_memory_bytes", -1, "int", ">= 0", 0),
    ("context", "default_window", 255, "int", ">= 256", 256),
    ("context", "summary_tokens", 15, "int", ">= 16", 16),
    ("retention", "batch", 0, "int", ">= 1", 1),
    ("retention", "temporary_ttl_seconds", 0, "float", "> 0.0", 0.001),
    ("webhooks", "concurrency", 0, "int", ">= 1", 1),
    ("webhooks", "poll_seconds", 0, "float", "> 0.0", 0.001),
    ("shares", "max_per_session", 0, "int", ">= 1", 1),
]

_IDS = [f"{section}.{name}={bad}" for section, name, bad, *_ in BOUNDED]


def _clean_env(**settings: str) -> dict[str, str]:
    """The environment of a child process: this checkout's code, no SESSIOND_* from outside."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SESSIOND_")}
    return {**clean, "PYTHONPATH": str(ROOT), **settings}


def _toml(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _load_toml(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load_config(path, env={})


def _load_one(tmp_path: Path, source: str, section: str, name: str, value: Any) -> Config:
    """The configuration with ``[section] name = value``, from a file or from SESSIOND_SECTION_NAME."""
    if source == "toml":
        return _load_toml(tmp_path, f"[{section}]\n{name} = {_toml(value)}\n")
    return load_config(None, env={f"SESSIOND_{section}_{name}".upper(): _toml(value)})


@pytest.mark.parametrize("source", ["toml", "env"])
@pytest.mark.parametrize(("section", "name", "bad", "kind", "bound", "least"), BOUNDED, ids=_IDS)
def test_a_value_past_its_bound_is_refused_naming_the_setting(
    tmp_path: Path, source: str, section: str, name: str, bad: Any, kind: str, bound: str, least: Any
) -> None:
    with pytest.raises(ConfigError) as refused:
        _load_one(tmp_path, source, section, name, bad)
    assert str(refused.value) == f"invalid configuration: Expected `{kind}` {bound} - at `$.{section}.{name}`"


@pytest.mark.parametrize(
    ("section", "name", "bad", "kind", "bound", "least"), BOUNDED,
    ids=[f"{section}.{name}={least}" for section, name, *_, least in BOUNDED],
)
def test_the_bound_itself_is_taken(
    tmp_path: Path, section: str, name: str, bad: Any, kind: str, bound: str, least: Any
) -> None:
    for source in ("toml", "env"):
        loaded = _load_one(tmp_path, source, section, name, least)
        assert getattr(getattr(loaded, section), name) == least, source


# Tables of named entries ([providers.NAME], [agents.NAME], [limits] keys and end_users): msgspec
# says [...] for the entry; the loader names it (a name that is not a bare word in quotes). The
# first entry of some is valid, so the one named is found, not guessed.
NESTED = [
    ("[providers.local]\nmodel = 'm'\nconnect_timeout_seconds = 0\n",
     "Expected `float` > 0.0 - at `$.providers.local.connect_timeout_seconds`"),
    ("[providers.local]\nmodel = 'm'\nfirst_token_timeout_seconds = 0\n",
     "Expected `float` > 0.0 - at `$.providers.local.first_token_timeout_seconds`"),
    ("[providers.local]\nmodel = 'm'\nread_timeout_seconds = -1.0\n",
     "Expected `float` > 0.0 - at `$.providers.local.read_timeout_seconds`"),
    ("[providers.fine]\nmodel = 'm'\n[providers.local]\nmodel = 'm'\nmax_tokens = -1\n",
     "Expected `int` >= 0 - at `$.providers.local.max_tokens`"),
    ("[providers.local]\nmodel = 'm'\ncontext_window = -1\n",
     "Expected `int` >= 0 - at `$.providers.local.context_window`"),
    ("[providers.local]\nmodel = 'm'\ncontext_window = 255\n",
     "context_window must be 0 (by the model's name) or at least 256 - at `$.providers.local`"),
    ("[agents.calm]\ntemperature = 0.5\n[agents.default]\ntemperature = 2.5\n",
     "Expected `float` <= 2.0 - at `$.agents.default.temperature`"),
    ("[agents.default]\ntemperature = -0.1\n", "Expected `float` >= 0.0 - at `$.agents.default.temperature`"),
    ("[limits]\nkeys = { '*' = { messages_per_hour = -1 } }\n",
     'Expected `int` >= 0 - at `$.limits.keys."*".messages_per_hour`'),
    ("[limits]\nend_users = { u0 = { messages_per_day = 5 }, u1 = { messages_per_day = -1 } }\n",
     "Expected `int` >= 0 - at `$.limits.end_users.u1.messages_per_day`"),
    ("[limits]\nend_users = { '*' = { tokens_per_day = -1 } }\n",
     'Expected `int` >= 0 - at `$.limits.end_users."*".tokens_per_day`'),
    ("[context]\nwindows = { tiny = 100 }\n", "Expected `int` >= 256 - at `$.context.windows.tiny`"),
    # Across two settings: a webhook claim must outlast its attempt.
    ("[webhooks]\ntimeout_seconds = 60\n",
     "lease_seconds (60) must be longer than timeout_seconds (60): a claim must outlast the attempt it is for"
     " - at `$.webhooks`"),
    ("[webhooks]\ntimeout_seconds = 5\nlease_seconds = 2\n",
     "lease_seconds (2) must be longer than timeout_seconds (5): a claim must outlast the attempt it is for"
     " - at `$.webhooks`"),
]


@pytest.mark.parametrize(("text", "sentence"), NESTED, ids=[t.strip().splitlines()[-1] for t, _ in NESTED])
def test_a_bad_value_in_a_table_of_entries_is_refused(tmp_path: Path, text: str, sentence: str) -> None:
    with pytest.raises(ConfigError) as refused:
        _load_toml(tmp_path, text)
    assert str(refused.value) == f"invalid configuration: {sentence}"


def test_a_named_table_takes_an_environment_override_through_the_same_bounds() -> None:
    env = {"SESSIOND_LIMITS_KEYS": "{ '*' = { messages_per_hour = -1 } }"}
    with pytest.raises(ConfigError, match=r"`\$\.limits\.keys\.\"\*\"\.messages_per_hour`"):
        load_config(None, env=env)


# What config.toml documents 0 as meaning: off, no limit, none, or "at once". Each loads as given.
OFF = [
    ("server", "port", 0),  # a free port
    ("server", "gc_young_objects", 0),  # Python's defaults
    ("server", "min_body_bytes_per_second", 0),  # no allowance for the body's length
    ("store", "checkpoint_seconds", 0),  # the writer checkpoints itself
    ("sessions", "max_queued", 0),  # no message waits
    ("sessions", "fold_seconds", 0),  # stored only when the answer ends
    ("streams", "direct_write_bytes", 0),  # direct writes off
    ("admission", "max_running_tasks", 0),  # no task admitted
    ("admission", "max_open_streams", 0),  # no stream admitted
    ("admission", "max_streams_per_token", 0),  # no cap
    ("admission", "max_streams_per_guest", 0),
    ("admission", "max_streams_per_end_user", 0),
    ("admission", "max_streams_per_session", 0),
    ("simulated", "tokens_per_second", 0),  # as fast as possible
    ("simulated", "reply_tokens", 0),  # empty replies
    ("guests", "ttl_seconds", 0),  # a guest expires at once
    ("limits", "guest_messages_per_hour", 0),  # 0 turns a limit off
    ("limits", "guest_messages_per_day", 0),
    ("limits", "guest_tokens_per_day", 0),
    ("limits", "reserve_reply_tokens", 0),
    ("limits", "share_views_per_hour", 0),
    ("limits", "share_views_per_day", 0),
    ("routing", "cooldown_seconds", 0),  # probed at once
    ("documents", "context_tokens", 0),  # no passages
    ("documents", "max_pages", 0),  # that extraction bound off
    ("documents", "max_chars", 0),
    ("documents", "extract_seconds", 0),
    ("documents", "extract_cpu_seconds", 0),
    ("documents", "extract_memory_bytes", 0),
    ("retention", "sweep_seconds", 0),  # no sweeps
]


@pytest.mark.parametrize("source", ["toml", "env"])
@pytest.mark.parametrize(("section", "name", "value"), OFF, ids=[f"{s}.{n}" for s, n, _ in OFF])
def test_a_documented_off_value_still_loads(tmp_path: Path, source: str, section: str, name: str, value: Any) -> None:
    loaded = _load_one(tmp_path, source, section, name, value)
    assert getattr(getattr(loaded, section), name) == value


def test_zero_in_a_table_of_entries_still_means_its_default(tmp_path: Path) -> None:
    loaded = _load_toml(tmp_path, (
        "[limits]\nkeys = { '*' = { messages_per_hour = 0, messages_per_day = 0, tokens_per_day = 0 } }\n"
        "[providers.local]\nmodel = 'm'\nmax_tokens = 0\ncontext_window = 0\n"
        "[providers.big]\nmodel = 'm'\ncontext_window = 256\n"
        "[agents.default]\ntemperature = 0.0\n[agents.hot]\ntemperature = 2.0\n"
    ))
    assert msgspec.to_builtins(loaded.limits.keys["*"]) == {"messages_per_hour": 0, "messages_per_day": 0,
                                                            "tokens_per_day": 0}
    assert (loaded.providers["local"].max_tokens, loaded.providers["local"].context_window) == (0, 0)
    assert loaded.providers["big"].context_window == 256
    assert (loaded.agents["default"].temperature, loaded.agents["hot"].temperature) == (0.0, 2.0)


def test_the_shipped_defaults_load_and_keep_their_bounds() -> None:
    shipped = load_config(ROOT / "config.toml", env={})
    builtin = load_config(None, env={})
    for section in msgspec.structs.fields(Config):
        if section.name not in ("agents", "providers"):
            assert getattr(shipped, section.name) == getattr(builtin, section.name) == getattr(Config(), section.name)
    # A default is not checked against its own bound when a struct is made: convert them back
    # through the loader's types, so a default outside its bound fails here.
    everything = msgspec.to_builtins(Config())
    assert msgspec.convert(everything, Config, strict=False) == Config()
    assert load_config(None, env={}, overrides=everything) == Config()


def test_serve_with_replay_events_0_says_so_in_one_sentence_and_exits(tmp_path: Path) -> None:
    """``sessiond serve`` with SESSIOND_SESSIONS_REPLAY_EVENTS=0: one sentence, an exit, nothing made."""
    data = tmp_path / "data"
    run = subprocess.run(
        [sys.executable, "-m", "server", "serve", "--port", "0", "--data-dir", str(data)],
        cwd=tmp_path, env=_clean_env(SESSIOND_SESSIONS_REPLAY_EVENTS="0"),
        capture_output=True, text=True, timeout=30,
    )
    assert run.returncode == 2, run.stdout + run.stderr  # what main() returns for a ConfigError
    assert "Traceback" not in run.stderr, run.stderr
    assert "listening" not in run.stdout, run.stdout
    assert run.stderr.splitlines() == [
        "sessiond: invalid configuration: Expected `int` >= 1 - at `$.sessions.replay_events`"
    ]
    assert not data.exists(), "refused before anything is made"


def test_the_doctor_names_the_same_setting(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "server", "doctor", "--data-dir", str(tmp_path / "data")],
        cwd=tmp_path, env=_clean_env(SESSIOND_STREAMS_HEARTBEAT_SECONDS="0"),
        capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert run.stdout.startswith("FAIL  config  invalid configuration: Expected `float` > 0.0 - at"
                                 " `$.streams.heartbeat_seconds`"), run.stdout
    assert "Traceback" not in run.stdout + run.stderr
