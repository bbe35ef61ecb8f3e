"""Configuration: config.toml, then ``SESSIOND_SECTION_KEY`` environment overrides.

Every setting has a working default here and a comment in config.toml.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

__all__ = ["Config", "load_config", "ConfigError", "AdmissionSection"]


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class ServerSection(_Section):
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: str = "./data"
    max_body_bytes: int = 1_048_576
    shutdown_timeout_seconds: float = 10.0


class StoreSection(_Section):
    kind: str = "sqlite"
    sqlite_file: str = "sessiond.db"
    synchronous: str = "FULL"
    max_batch: int = 2000
    postgres_dsn: str = "postgresql://postgres@127.0.0.1:5432/sessiond"
    postgres_pool_size: int = 8


class SessionsSection(_Section):
    idle_seconds: float = 300.0
    mailbox_size: int = 64
    event_retention: int = 10000
    seq_block: int = 4096
    max_queued: int = 16
    replay_events: int = 1000


class StreamsSection(_Section):
    heartbeat_seconds: float = 15.0
    retry_ms: int = 3000
    write_timeout_seconds: float = 30.0
    max_batch_bytes: int = 262_144


class AdmissionSection(_Section):
    max_running_tasks: int = 600
    max_open_streams: int = 12000
    retry_after_seconds: int = 1


class SimulatedSection(_Section):
    tokens_per_second: float = 20.0
    reply_tokens: int = 40


class AuthSection(_Section):
    api_keys: list[str] = msgspec.field(default_factory=list)
    create_first_key: bool = True


class FanoutSection(_Section):
    kind: str = "local"


class ClusterSection(_Section):
    node_id: str = ""
    lease_ms: int = 5000
    forward_timeout_seconds: float = 5.0
    stream_maxlen: int = 10000
    stream_ttl_seconds: int = 86400
    prefix: str = "sessiond"


class RedisSection(_Section):
    url: str = "redis://127.0.0.1:6379/0"


class LogSection(_Section):
    level: str = "info"
    format: str = "json"
    access: bool = True


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    server: ServerSection = msgspec.field(default_factory=ServerSection)
    store: StoreSection = msgspec.field(default_factory=StoreSection)
    sessions: SessionsSection = msgspec.field(default_factory=SessionsSection)
    streams: StreamsSection = msgspec.field(default_factory=StreamsSection)
    admission: AdmissionSection = msgspec.field(default_factory=AdmissionSection)
    simulated: SimulatedSection = msgspec.field(default_factory=SimulatedSection)
    auth: AuthSection = msgspec.field(default_factory=AuthSection)
    fanout: FanoutSection = msgspec.field(default_factory=FanoutSection)
    redis: RedisSection = msgspec.field(default_factory=RedisSection)
    cluster: ClusterSection = msgspec.field(default_factory=ClusterSection)
    log: LogSection = msgspec.field(default_factory=LogSection)

    @property
    def data_dir(self) -> Path:
        return Path(self.server.data_dir)


class ConfigError(Exception):
    """The configuration cannot be used; the message says which setting and why."""


_PREFIX = "SESSIOND_"


def _env_value(raw: str, field_type: Any) -> Any:
    if field_type is str:
        return raw
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> None:
    for section in msgspec.structs.fields(Config):
        section_type = section.type
        for field in msgspec.structs.fields(section_type):
            name = f"{_PREFIX}{section.name}_{field.name}".upper()
            if name in env:
                data.setdefault(section.name, {})[field.name] = _env_value(env[name], field.type)


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Read ``path`` (if given), apply the environment, then explicit ``overrides``."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from exc
    _apply_env(data, os.environ if env is None else env)
    for section, values in (overrides or {}).items():
        data.setdefault(section, {}).update(values)
    try:
        return msgspec.convert(data, Config, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from exc
