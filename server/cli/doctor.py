"""``sessiond doctor``: check that this installation can run, and say what is wrong in plain words.

Checks, in order: the configuration parses; the data directory exists (or can be made), is
writable and private; cluster mode has what it needs; the port is free; the store opens with a
schema this sessiond knows; API keys exist; PostgreSQL and Redis answer where they are used;
each model provider lists the models asked of it (server.cli.modelcheck); the models whose
tokenizer does not ship with sessiond (o200k_base) find it in the tokenizer directory; each webhook
endpoint accepts connections and had no failed deliveries in the last day (server.cli.webhookcheck).
The sentences are
server.preflight's, the ones ``sessiond serve`` stops with. Nothing is changed: the database is
opened read-only and never migrated, the port is bound and released at once.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from actors.agent.agents import parse_route
from actors.agent.tokens import Tokenizers, encoding_for
from server.cli.modelcheck import check_providers
from server.cli.webhookcheck import check_webhooks
from server.config import Config, ConfigError
from server.preflight import (
    FAIL,
    OK,
    WARN,
    Check,
    StartupError,
    bind_socket,
    check_cluster,
    check_data_dir,
    check_postgres,
    check_redis,
    check_store,
    used_by_redis,
)

__all__ = ["Check", "register", "run_checks", "used_by_redis"]

def _data_dir(config: Config) -> Iterator[Check]:
    yield check_data_dir(config)


def _store(config: Config) -> Iterator[Check]:
    yield check_store(config, thorough=True)


def _port(config: Config) -> Check:
    host, port = config.server.host, config.server.port
    if port == 0:
        return Check(OK, "port", "0: the server takes any free port")
    try:
        bind_socket(host, port, 1).close()
    except StartupError as exc:
        return Check(FAIL, "port", str(exc))
    return Check(OK, "port", f"{host}:{port} is free")


def _keys(config: Config) -> Iterator[Check]:
    path = (config.data_dir / config.store.sqlite_file).resolve()
    if config.auth.api_keys:
        yield Check(OK, "api keys", f"{len(config.auth.api_keys)} key(s) in [auth] api_keys")
        return
    count = 0
    if config.store.kind == "sqlite" and path.exists():
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
            try:
                count = db.execute("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL").fetchone()[0]
            finally:
                db.close()
        except sqlite3.Error:
            return  # the store check already said what is wrong
    if count:
        yield Check(OK, "api keys", f"{count} active key(s) in the store")
    elif config.auth.create_first_key:
        yield Check(OK, "api keys", "none yet: the first start creates one and prints it")
    else:
        yield Check(WARN, "api keys", "no key and create_first_key = false: nobody can call the API "
                    "(run `sessiond keys create`)")


def _tokenizers(config: Config) -> Iterator[Check]:
    """A line for the models counted with an encoding read from the tokenizer directory."""
    models = {p.model for p in config.providers.values() if p.model}
    models |= {e.model for a in config.agents.values() for e in parse_route(a.model) if e.model}
    tokenizers = Tokenizers(config.tokenizer_dir)
    for encoding in sorted({e for m in models if (e := encoding_for(m)) is not None and e != "cl100k_base"}):
        named = sorted(m for m in models if encoding_for(m) == encoding)
        counter = tokenizers.for_model(named[0])
        counter.count("probe")  # loads the vocabulary (from the disk only)
        if counter.exact:
            yield Check(OK, "tokenizer", f"{encoding} for {', '.join(named)}")
        else:
            yield Check(WARN, "tokenizer", f"{', '.join(named)}: counted with cl100k_base, an estimate: "
                        f"{counter.reason or encoding + ' is not read by sessiond'} (docs/agents.md, Token counting)")


async def _async_checks(config: Config) -> list[Check]:
    return [
        await check_postgres(config),
        await check_redis(config),
        *await check_providers(config),
        *await check_webhooks(config),
    ]


def run_checks(load: Callable[[], Config], source: str = "the configuration parses") -> list[Check]:
    """Every check, in order; a configuration that does not load stops the rest."""
    try:
        config = load()
    except ConfigError as exc:
        return [Check(FAIL, "config", str(exc))]
    checks = [Check(OK, "config", source)]
    checks += _data_dir(config)
    checks.append(check_cluster(config))
    checks.append(_port(config))
    checks += _store(config)
    checks += _keys(config)
    checks += _tokenizers(config)
    checks += asyncio.run(_async_checks(config))
    return checks


def register(sub: Any, common: Callable[[argparse.ArgumentParser], None], config_from: Any) -> None:
    p = sub.add_parser("doctor", help="check config, data dir, store, Redis, providers and webhooks")
    common(p)
    p.set_defaults(func=lambda args: _cmd_doctor(args, config_from))


def _cmd_doctor(args: argparse.Namespace, config_from: Callable[[argparse.Namespace], Config]) -> int:
    path = args.config or ("config.toml" if Path("config.toml").is_file() else None)
    source = f"{path} parses" if path else "no config file: the defaults (and SESSIOND_* variables) apply"
    checks = run_checks(lambda: config_from(args), source)
    width = max(len(c.name) for c in checks)
    for c in checks:
        print(f"{c.state:<4}  {c.name:<{width}}  {c.detail}")
    failed = [c for c in checks if c.state == FAIL]
    if failed:
        print(f"\n{len(failed)} problem(s) found.", file=sys.stderr)
        return 1
    print("\nall checks passed.")
    return 0
