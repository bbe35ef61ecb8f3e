"""The ``sessiond`` command: serve, and the operator's tools (keys, ...)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from server.cli.common import config_from, serve_until_signalled, with_store
from server.config import Config, ConfigError
from server.preflight import StartupError

__all__ = ["build_parser", "main", "port_number"]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sessiond")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 0 (any free port) to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port: use 0 to 65535")
    return port


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="config.toml to read (default: ./config.toml if present)")
    p.add_argument("--data-dir", dest="data_dir", help="where the database and files live")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sessiond", description="A self-hosted server for AI agent sessions.")
    parser.add_argument("--version", action="version", version=f"sessiond {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server")
    _common(serve)
    serve.add_argument("--host")
    serve.add_argument("--port", type=port_number, help="0: any free port")
    serve.set_defaults(func=_cmd_serve)

    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create an API key and print it (once)")
    _common(create)
    create.add_argument("--name", default="default")
    create.add_argument("--create", action="store_true", help="make the database if there is none yet")
    create.set_defaults(func=_cmd_keys_create)
    list_ = keys_sub.add_parser("list", help="list API keys (ids and names; never secrets)")
    _common(list_)
    list_.add_argument("--create", action="store_true", help="make the database if there is none yet")
    list_.set_defaults(func=_cmd_keys_list)
    revoke = keys_sub.add_parser("revoke", help="revoke an API key by id")
    _common(revoke)
    revoke.add_argument("key_id")
    revoke.set_defaults(func=_cmd_keys_revoke)

    from server.cli.transfer import register as register_transfer

    register_transfer(sub, _common)

    from server.cli.devcluster import register as register_cluster

    register_cluster(sub, _common)

    from server.cli.doctor import register as register_doctor
    from server.client.chat import register as register_chat

    register_chat(sub)
    register_doctor(sub, _common, config_from)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"sessiond: {exc}", file=sys.stderr)
        return 2
    except StartupError as exc:
        return _fail(str(exc))


# -- serve --------------------------------------------------------------------------------


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvloop

    from server.logs import setup_logging

    config = config_from(args)
    setup_logging(config.log.level, config.log.format)
    return uvloop.run(_serve(config))


def _fail(sentence: str) -> int:
    print(f"sessiond: {sentence}", file=sys.stderr, flush=True)
    return 1


async def _serve(config: Config) -> int:
    from server.app import make_app
    from server.appkeys import STORE
    from server.auth.keys import create_key
    from server.logs import AccessLogger
    from server.preflight import (
        FAIL,
        WARN,
        bind_socket,
        check_cluster,
        check_data_dir,
        check_postgres,
        check_redis,
        check_store,
        explain,
    )

    # Everything serve needs, checked before anything is opened: one sentence, not a traceback
    # and not a process that lives on without listening.
    for check in (check_data_dir(config), check_cluster(config), check_store(config)):
        if check.state == FAIL:
            return _fail(check.detail)
        if check.state == WARN:  # e.g. a data dir other users can read: say so, and serve
            print(f"sessiond: warning: {check.detail}", file=sys.stderr, flush=True)
    for check in (await check_postgres(config), await check_redis(config)):
        if check.state == FAIL:
            return _fail(check.detail)
    try:
        sock = bind_socket(config.server.host, config.server.port, config.server.backlog)
    except StartupError as exc:
        return _fail(str(exc))
    try:
        app = make_app(config)
        access: dict[str, Any] = {"access_log_class": AccessLogger} if config.log.access else {"access_log": None}
        runner = web.AppRunner(
            app, handler_cancellation=True, shutdown_timeout=config.server.shutdown_timeout_seconds, **access
        )
        try:
            await runner.setup()
        except Exception as exc:
            await runner.cleanup()
            sentence = str(exc) if isinstance(exc, ConfigError) else explain(exc, config)
            if sentence is None:
                raise
            return _fail(sentence)
        store = app[STORE]
        if config.auth.create_first_key and not config.auth.api_keys and not await store.list_api_keys():
            _, key = await create_key(store, "first")
            print(
                "No API key existed, so one was created. It is shown only this once; only its hash is kept,"
                f" in {_where(config)}.\nAPI key: {key}",
                flush=True,
            )
        _tune_gc(config.server.gc_young_objects)
        await serve_until_signalled(runner, sock)
    finally:
        sock.close()
    return 0


def _tune_gc(young_objects: int) -> None:
    """Collect cycles less often than Python's default (``[server] gc_young_objects``), and
    never scan again what was made while setting up (modules, routes, the configuration)."""
    import gc

    if young_objects > 0:
        gc.collect()
        gc.freeze()
        gc.set_threshold(young_objects, 20, 100)


# -- keys ---------------------------------------------------------------------------------


def _where(config: Config) -> str:
    """Where the configured store keeps its data: the SQLite file, or the PostgreSQL DSN without its password."""
    from server.preflight import without_password

    if config.store.kind == "postgres":
        return without_password(config.store.postgres_dsn)
    return str((config.data_dir / config.store.sqlite_file).resolve())


def _store_for(args: argparse.Namespace) -> tuple[Config, str]:
    """The configuration and where its database is, said first: a key made in the wrong
    directory's database is a key nobody's server knows. Without ``--create``, refuses to
    make a new (empty) SQLite database."""
    from server.preflight import StartupError, prepare_data_dir

    config = config_from(args)
    where = _where(config)
    if config.store.kind == "sqlite":
        if not Path(where).exists():
            if not getattr(args, "create", False):
                raise StartupError(
                    f"no database at {where}: run this where the server runs (or pass --data-dir or --config),"
                    " or add --create to make a new one"
                )
            prepare_data_dir(config)
    print(f"database: {where}", file=sys.stderr)
    return config, where


def _cmd_keys_create(args: argparse.Namespace) -> int:
    from server.auth.keys import create_key

    config, _ = _store_for(args)
    record, key = asyncio.run(with_store(config, lambda s: create_key(s, args.name)))
    print(f"created {record.id} ({record.name}); the key is shown only this once:")
    print(key)
    return 0


def _cmd_keys_list(args: argparse.Namespace) -> int:
    config, _ = _store_for(args)
    keys = asyncio.run(with_store(config, lambda s: s.list_api_keys()))
    for k in keys:
        state = f"revoked {k.revoked_at}" if k.revoked_at else "active"
        print(f"{k.id}\t{k.name}\t{k.created_at}\t{state}")
    return 0


def _cmd_keys_revoke(args: argparse.Namespace) -> int:
    from actors.core.ids import utcnow

    config, _ = _store_for(args)
    done = asyncio.run(with_store(config, lambda s: s.revoke_api_key(args.key_id, utcnow())))
    if not done:
        print(f"sessiond: no active key {args.key_id}", file=sys.stderr)
        return 1
    print(f"revoked {args.key_id}")
    return 0
