"""Configuration: config.toml, then ``SESSIOND_SECTION_KEY`` environment overrides.

Every setting has a working default here and a comment in config.toml.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from actors.cluster.node import ClusterSettings
from actors.core.bounds import AtLeastOne, NonNegative, NonNegativeFloat, Positive
from actors.core.retention import MAX_TTL_SECONDS, Retention
from actors.store.tables import RouteEntry
from actors.webhooks.deliverer import DeliverySettings

__all__ = [
    "AdmissionSection",
    "AgentSection",
    "AuthSection",
    "Config",
    "ConfigError",
    "ContextSection",
    "DocumentsSection",
    "FanoutSection",
    "GuestsSection",
    "HttpToolSection",
    "LimitSet",
    "LimitsSection",
    "LogSection",
    "McpServerSection",
    "MetricsSection",
    "ProviderSection",
    "RedisSection",
    "RetentionSection",
    "RoutingSection",
    "ServerSection",
    "SessionsSection",
    "SharesSection",
    "SimulatedSection",
    "StoreSection",
    "StreamsSection",
    "TokensSection",
    "ToolsSection",
    "WebhookEndpointSection",
    "WebhooksSection",
    "env_settings",
    "load_config",
    "unknown_env",
]


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


# Bounds on numbers (actors/core/bounds.py, and these): where config.toml says 0 means "off"
# or "no limit", 0 stays allowed.
_C_INT_MAX = 2**31 - 1  # the most socket.listen() and gc.set_threshold() take (OverflowError past it)
_MIN_WINDOW = 256  # tokens: the smallest context window taken ([context], [providers.NAME])
_MIN_CHUNK_WORDS = 10  # server/agents.py cuts documents into passages of at least this many words


class ServerSection(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8080
    data_dir: str = "./data"
    max_body_bytes: AtLeastOne = 1_048_576  # aiohttp would take 0 as "no limit at all"
    # Slow clients: a connection must finish its request line and headers within this (and an
    # idle kept-alive connection closes after it), and a body must arrive within
    # body_timeout_seconds plus its length at min_body_bytes_per_second (0: no allowance for its
    # length). aiohttp takes a header timeout of 0 as none for a new connection (and closes a
    # kept-alive one at once), and a shutdown timeout of 0 as "wait for ever".
    header_timeout_seconds: Positive = 30.0
    body_timeout_seconds: Positive = 30.0
    min_body_bytes_per_second: NonNegative = 8192
    backlog: Annotated[int, msgspec.Meta(ge=1, le=_C_INT_MAX)] = 2048
    shutdown_timeout_seconds: Positive = 10.0
    cors_origins: list[str] = msgspec.field(default_factory=list)
    gc_young_objects: Annotated[int, msgspec.Meta(ge=0, le=_C_INT_MAX)] = 50_000


class StoreSection(_Section):
    kind: str = "sqlite"
    sqlite_file: str = "sessiond.db"
    synchronous: str = "FULL"
    max_batch: AtLeastOne = 2000
    checkpoint_seconds: NonNegativeFloat = 0.5
    wal_size_limit_bytes: NonNegative = 64 << 20
    postgres_dsn: str = "postgresql://postgres@127.0.0.1:5432/sessiond"
    postgres_pool_size: AtLeastOne = 8


class SessionsSection(_Section):
    idle_seconds: Positive = 300.0  # 0 would passivate every session as soon as a request ends
    max_live: AtLeastOne = 20_000
    replay_memory_bytes: AtLeastOne = 1 << 30
    mailbox_size: AtLeastOne = 64
    event_retention: AtLeastOne = 10000
    event_retention_bytes: AtLeastOne = 4 << 20
    seq_block: AtLeastOne = 4096
    max_queued: NonNegative = 16  # 0: no message waits (a queued send gets 409)
    replay_events: AtLeastOne = 1000  # activation reads the oldest of those it loads
    fold_seconds: NonNegativeFloat = 1.0


class StreamsSection(_Section):
    heartbeat_seconds: Positive = 15.0  # 0: an idle stream would write heartbeats without pause
    retry_ms: AtLeastOne = 3000
    write_timeout_seconds: Positive = 30.0
    max_batch_bytes: AtLeastOne = 262_144
    direct_write_bytes: NonNegative = 65_536


class AdmissionSection(_Section):
    # Measured on the 2-core machine with `python -m bench` (config.toml says how).
    # 0 refuses every new task (or stream).
    max_running_tasks: NonNegative = 300
    max_open_streams: NonNegative = 10000
    # Per holder (0 = no cap): one caller cannot take every slot of max_open_streams.
    max_streams_per_token: NonNegative = 8
    max_streams_per_guest: NonNegative = 8
    max_streams_per_end_user: NonNegative = 32
    max_streams_per_session: NonNegative = 256
    retry_after_seconds: AtLeastOne = 1  # "Retry-After: 0": refused clients would retry at once


class SimulatedSection(_Section):
    tokens_per_second: NonNegativeFloat = 20.0  # 0: as fast as possible
    reply_tokens: NonNegative = 40


class AuthSection(_Section):
    api_keys: list[str] = msgspec.field(default_factory=list)
    create_first_key: bool = True


class FanoutSection(_Section):
    kind: str = "local"


class RedisSection(_Section):
    url: str = "redis://127.0.0.1:6379/0"


class MetricsSection(_Section):
    enabled: bool = True
    # Metrics name sessions' load and the server's shape: an API key is asked for unless opened.
    public: bool = False


class LogSection(_Section):
    level: str = "info"
    # auto: text on a terminal, JSON lines otherwise (a file, a pipe, journald).
    format: Literal["auto", "json", "text"] = "auto"
    access: bool = True


# -- agents, model providers, routing, tools, documents --------------------------------------


class ProviderSection(_Section):
    """``[providers.NAME]``: a model server (kind openai | ollama | simulated)."""

    kind: str = "openai"
    # openai: the API root ending in /v1 (default https://api.openai.com/v1);
    # ollama: the server root (default http://127.0.0.1:11434).
    base_url: str = ""
    api_key_env: str = ""  # the environment variable holding the API key ("" = none)
    model: str = ""  # the model a route entry naming only this provider gets
    # aiohttp takes a connect or read timeout of 0 as "no timeout".
    connect_timeout_seconds: Positive = 5.0
    first_token_timeout_seconds: Positive = 30.0
    read_timeout_seconds: Positive = 60.0
    stream_usage: bool = True  # openai: ask for usage in the stream (stream_options)
    max_tokens: NonNegative = 0  # openai: cap on the answer (0 = the server's default)
    context_window: NonNegative = 0  # tokens the model takes, prompt and answer (0: by its name, [context])
    keep_alive: str = ""  # ollama: how long the model stays loaded ("" = Ollama's default)

    def __post_init__(self) -> None:
        # As [context] windows and default_window: no model's window is under 256 tokens. (msgspec
        # turns this ValueError into a ValidationError, which load_config reports.)
        if 0 < self.context_window < _MIN_WINDOW:
            raise ValueError(f"context_window must be 0 (by the model's name) or at least {_MIN_WINDOW}")


class RoutingSection(_Section):
    cooldown_seconds: NonNegativeFloat = 30.0  # 0: probed again at once
    probe_interval_seconds: Positive = 10.0  # 0: a provider that is down would be probed without pause
    probe_timeout_seconds: Positive = 5.0


class AgentSection(_Section):
    """``[agents.NAME]``: an agent defined in the configuration (its id is NAME)."""

    name: str = ""
    system_prompt: str = ""
    model: list[str | RouteEntry] = msgspec.field(default_factory=lambda: ["simulated"])
    tools: list[str] = msgspec.field(default_factory=list)
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None  # as the agents API takes it
    approval: Literal["always", "never"] = "never"  # "always": every tool call waits for a person


class DocumentsSection(_Section):
    max_bytes: AtLeastOne = 10_485_760
    allowed_types: list[str] = msgspec.field(default_factory=lambda: ["txt", "md", "json", "csv", "html", "pdf"])
    context_tokens: NonNegative = 1500  # 0: none
    chunk_words: Annotated[int, msgspec.Meta(ge=_MIN_CHUNK_WORDS)] = 120  # fewer would be taken as 10
    # The extraction bounds: 0 turns one off.
    max_pages: NonNegative = 1000
    max_chars: NonNegative = 5_000_000
    extract_seconds: NonNegativeFloat = 30.0
    extract_cpu_seconds: NonNegative = 20
    extract_memory_bytes: NonNegative = 1_073_741_824
    max_extractions: AtLeastOne = 4


class ContextSection(_Section):
    """How a conversation is fitted into its model's context window (docs/agents.md)."""

    strategy: Literal["truncate", "summarize"] = "truncate"
    default_window: Annotated[int, msgspec.Meta(ge=_MIN_WINDOW)] = 8192
    reserve_tokens: NonNegative = 1024
    summary_tokens: Annotated[int, msgspec.Meta(ge=16)] = 512
    windows: dict[str, Annotated[int, msgspec.Meta(ge=_MIN_WINDOW)]] = msgspec.field(default_factory=dict)
    tokenizer_dir: str = ""


class McpServerSection(_Section):
    """``[tools.mcp.NAME]``: an MCP server whose tools are NAME.TOOL: ``command`` (stdio) or ``url``."""

    command: str = ""
    args: list[str] = msgspec.field(default_factory=list)
    env: dict[str, str] = msgspec.field(default_factory=dict)  # child variable -> OUR variable holding it
    url: str = ""  # streamable HTTP endpoint
    headers: dict[str, str] = msgspec.field(default_factory=dict)  # header -> variable holding its value


class HttpToolSection(_Section):
    """``[tools.http.NAME]``: a tool that is an HTTP endpoint (its host must be in allow_hosts)."""

    url: str
    method: str = "POST"
    description: str = ""
    parameters: dict[str, Any] = msgspec.field(default_factory=lambda: {"type": "object"})
    headers: dict[str, str] = msgspec.field(default_factory=dict)  # header -> variable holding its value


class ToolsSection(_Section):
    # 0 would fail every call at once (and aiohttp takes it as "no timeout" for HTTP tools).
    timeout_seconds: Positive = 10.0
    max_rounds: AtLeastOne = 8  # 0: a model could never use a tool it is offered
    # How long a call may wait for a person's approval or a frontend's result; then the task fails.
    approval_timeout_seconds: Positive = 3600.0
    approval: dict[str, Literal["always", "never"]] = msgspec.field(default_factory=dict)  # per tool name
    allow_hosts: list[str] = msgspec.field(default_factory=list)  # hosts (or host:port) HTTP tools may call
    mcp: dict[str, McpServerSection] = msgspec.field(default_factory=dict)
    http: dict[str, HttpToolSection] = msgspec.field(default_factory=dict)


class TokensSection(_Section):
    issuer: str = "sessiond"
    audience: str = "sessiond"
    access_ttl_seconds: AtLeastOne = 900  # 0: every token would be expired when it is made
    refresh_ttl_seconds: AtLeastOne = 2_592_000
    refreshes_per_hour: AtLeastOne = 120
    secret: str = ""
    secret_file: str = "jwt_secret"


class GuestsSection(_Section):
    ttl_seconds: NonNegative = 86_400  # 0: a guest expires as soon as it is made
    # Shared with the site's backend, which signs its own long-lived visitor ids with it ("" = off).
    id_secret: str = ""


class LimitSet(_Section):
    """One subject's limits; a missing (or 0) value means that dimension is not limited."""

    messages_per_hour: NonNegative | None = None
    messages_per_day: NonNegative | None = None
    tokens_per_day: NonNegative | None = None


class LimitsSection(_Section):
    backend: str = "memory"
    # 0 turns a limit off (a negative one would be off too, silently: refused).
    guest_messages_per_hour: NonNegative = 20
    guest_messages_per_day: NonNegative = 50
    guest_tokens_per_day: NonNegative = 100_000
    # Model tokens reserved for an answer when its message is admitted (with the prompt's estimate);
    # a negative one would give tokens back to the day's tally.
    reserve_reply_tokens: NonNegative = 1024
    # Share links are opened without a credential: counted per client address (0 = no limit).
    share_views_per_hour: NonNegative = 600
    share_views_per_day: NonNegative = 5000
    keys: dict[str, LimitSet] = msgspec.field(default_factory=dict)
    end_users: dict[str, LimitSet] = msgspec.field(default_factory=dict)


class RetentionSection(_Section):
    sweep_seconds: NonNegativeFloat = 60.0
    batch: AtLeastOne = 100
    temporary_ttl_seconds: Annotated[float, msgspec.Meta(gt=0, le=MAX_TTL_SECONDS)] = 900.0
    namespaces: dict[str, Retention] = msgspec.field(default_factory=dict)
    agents: dict[str, Retention] = msgspec.field(default_factory=dict)


_WEBHOOK_EVENTS = ["task.completed", "task.failed", "task.cancelled", "tool.approval_requested", "session.deleted"]


class WebhookEndpointSection(_Section):
    """``[webhooks.endpoints.NAME]``: a receiver of signed event POSTs (server/webhooks.py checks it)."""

    url: str
    secret: str = ""  # "whsec_<base64>"
    secret_env: str = ""  # or the environment variable holding it
    events: list[str] = msgspec.field(default_factory=lambda: list(_WEBHOOK_EVENTS))
    namespaces: list[str] = msgspec.field(default_factory=list)  # empty: every namespace
    agents: list[str] = msgspec.field(default_factory=list)  # empty: every agent


class WebhooksSection(DeliverySettings, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[webhooks]``: the deliverer's own settings (bounded where they are declared), and the
    endpoints."""

    endpoints: dict[str, WebhookEndpointSection] = msgspec.field(default_factory=dict)


class SharesSection(_Section):
    max_per_session: AtLeastOne = 20
    link_base: str = ""  # "" = the scheme and Host of the request that made the link


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
    metrics: MetricsSection = msgspec.field(default_factory=MetricsSection)
    cluster: ClusterSettings = msgspec.field(default_factory=ClusterSettings)
    log: LogSection = msgspec.field(default_factory=LogSection)
    tokens: TokensSection = msgspec.field(default_factory=TokensSection)
    guests: GuestsSection = msgspec.field(default_factory=GuestsSection)
    limits: LimitsSection = msgspec.field(default_factory=LimitsSection)
    providers: dict[str, ProviderSection] = msgspec.field(default_factory=dict)
    routing: RoutingSection = msgspec.field(default_factory=RoutingSection)
    agents: dict[str, AgentSection] = msgspec.field(default_factory=dict)
    documents: DocumentsSection = msgspec.field(default_factory=DocumentsSection)
    context: ContextSection = msgspec.field(default_factory=ContextSection)
    tools: ToolsSection = msgspec.field(default_factory=ToolsSection)
    retention: RetentionSection = msgspec.field(default_factory=RetentionSection)
    webhooks: WebhooksSection = msgspec.field(default_factory=WebhooksSection)
    shares: SharesSection = msgspec.field(default_factory=SharesSection)

    @property
    def data_dir(self) -> Path:
        return Path(self.server.data_dir)

    @property
    def tokenizer_dir(self) -> Path:
        """Where tiktoken encodings that do not ship with sessiond are read from."""
        return Path(self.context.tokenizer_dir) if self.context.tokenizer_dir else self.data_dir / "tiktoken"


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
        if not (isinstance(section_type, type) and issubclass(section_type, msgspec.Struct)):
            continue  # tables of named entries ([agents.NAME], [providers.NAME]): config.toml only
        for field in msgspec.structs.fields(section_type):
            name = f"{_PREFIX}{section.name}_{field.name}".upper()
            if name in env:
                data.setdefault(section.name, {})[field.name] = _env_value(env[name], field.type)


# SESSIOND_* variables that are not settings: the client's, and the test suite's and bench's.
_NOT_SETTINGS = ("SESSIOND_URL", "SESSIOND_API_KEY", "SESSIOND_TEST_", "SESSIOND_REQUIRE_", "SESSIOND_BENCH_")


def env_settings() -> list[str]:
    """Every SESSIOND_SECTION_KEY variable a setting reads."""
    names = []
    for section in msgspec.structs.fields(Config):
        if isinstance(section.type, type) and issubclass(section.type, msgspec.Struct):
            names += [f"{_PREFIX}{section.name}_{f.name}".upper() for f in msgspec.structs.fields(section.type)]
    return names


def unknown_env(env: Mapping[str, str] | None = None) -> list[tuple[str, str | None]]:
    """The SESSIOND_* variables in ``env`` that no setting reads, each with the closest known name
    (a misspelt override is otherwise silently ignored)."""
    import difflib

    known = env_settings()
    out = []
    for name in sorted(os.environ if env is None else env):
        if name.startswith(_PREFIX) and name not in known and not name.startswith(_NOT_SETTINGS):
            # Compared without the prefix every name shares, which would make anything look close.
            tail = name.removeprefix(_PREFIX)
            close = difflib.get_close_matches(tail, [k.removeprefix(_PREFIX) for k in known], n=1, cutoff=0.75)
            out.append((name, _PREFIX + close[0] if close else None))
    return out


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
        raise ConfigError(f"invalid configuration: {_named(data, str(exc))}") from exc


_UNNAMED = "[...]"


def _named(data: dict[str, Any], message: str) -> str:
    """``message`` with the table entry it is about named: msgspec says ``$.providers[...].x``
    for a value inside ``[providers.NAME]`` (any table of named entries); this finds the entry
    that alone fails the same way and writes ``$.providers.NAME.x`` instead."""
    head, sep, path = message.rpartition(" - at `$.")
    if not sep or _UNNAMED not in path:
        return message
    outer, _, rest = path.partition(_UNNAMED)
    keys = outer.split(".")
    table: Any = data
    for key in keys:
        table = table.get(key) if isinstance(table, dict) else None
    if not isinstance(table, dict):
        return message
    for name, entry in table.items():
        trial = dict(data)
        node = trial
        for key in keys[:-1]:
            node[key] = dict(node[key])
            node = node[key]
        node[keys[-1]] = {name: entry}
        try:
            msgspec.convert(trial, Config, strict=False)
        except msgspec.ValidationError as again:
            if str(again) == message:
                label = name if name.replace("_", "").replace("-", "").isalnum() else msgspec.json.encode(name).decode()
                return f"{head}{sep}{outer}.{label}{rest}"
    return message
