"""The ``sessiond`` command: serve, and the operator's tools (keys, ...)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from server.config import Config, ConfigError, load_config

__all__ = ["build_parser", "main"]


def _config_from(args: argparse.Namespace) -> Config:
    path = args.config
    if path is None and Path("config.toml").is_file():
        path = "config.toml"
    overrides: dict[str, dict[str, Any]] = {"server": {}}
    for name in ("host", "port", "data_dir"):
        value = getattr(args, name, None)
        if value is not None:
            overrides["server"][name] = value
    return load_config(path, overrides=overrides)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="config.toml to read (default: ./config.toml if present)")
    p.add_argument("--data-dir", dest="data_dir", help="where the database and files live")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sessiond", description="A self-hosted server for AI agent sessions.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server")
    _common(serve)
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(func=_cmd_serve)

    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create an API key and print it (once)")
    _common(create)
    create.add_argument("--name", default="default")
    create.set_defaults(func=_cmd_keys_create)
    list_ = keys_sub.add_parser("list", help="list API keys (ids and names; never secrets)")
    _common(list_)
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
    register_doctor(sub, _common, _config_from)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"sessiond: {exc}", file=sys.stderr)
        return 2


# -- serve --------------------------------------------------------------------------------


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvloop

    from server.logs import setup_logging

    config = _config_from(args)
    setup_logging(config.log.level, config.log.format)
    uvloop.run(_serve(config))
    return 0


async def _serve(config: Config) -> None:
    from server.app import make_app
    from server.appkeys import STORE
    from server.auth.keys import create_key
    from server.logs import AccessLogger

    app = make_app(config)
    access: dict[str, Any] = {"access_log_class": AccessLogger} if config.log.access else {"access_log": None}
    runner = web.AppRunner(
        app, handler_cancellation=True, shutdown_timeout=config.server.shutdown_timeout_seconds, **access
    )
    await runner.setup()
    store = app[STORE]
    if config.auth.create_first_key and not config.auth.api_keys and not await store.list_api_keys():
        _, key = await create_key(store, "first")
        print(
            "No API key existed, so one was created. It is shown only this once; only its hash is kept,"
            f" in {store.path}.\nAPI key: {key}",
            flush=True,
        )
    await serve_until_signalled(runner, config.server.host, config.server.port, backlog=config.server.backlog)


async def serve_until_signalled(
    runner: web.AppRunner, host: str, port: int, *, backlog: int = 128, note: str = ""
) -> None:
    """Listen, say ``listening on http://H:P`` once connections are accepted, and on SIGTERM or
    SIGINT clean up (aiohttp's order: stop listening, on_shutdown, wait for handlers, cleanup)."""
    await web.TCPSite(runner, host, port, backlog=backlog).start()
    host, port = runner.addresses[0][:2]
    print(f"listening on http://{host}:{port}{note}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


# -- keys ---------------------------------------------------------------------------------


async def _with_store(config: Config, fn: Any) -> Any:
    from server.app import make_store

    store = make_store(config)
    await store.open()
    try:
        return await fn(store)
    finally:
        await store.aclose()


def _cmd_keys_create(args: argparse.Namespace) -> int:
    from server.auth.keys import create_key

    config = _config_from(args)
    record, key = asyncio.run(_with_store(config, lambda s: create_key(s, args.name)))
    print(f"created {record.id} ({record.name}); the key is shown only this once:")
    print(key)
    return 0


def _cmd_keys_list(args: argparse.Namespace) -> int:
    config = _config_from(args)
    keys = asyncio.run(_with_store(config, lambda s: s.list_api_keys()))
    for k in keys:
        state = f"revoked {k.revoked_at}" if k.revoked_at else "active"
        print(f"{k.id}\t{k.name}\t{k.created_at}\t{state}")
    return 0


def _cmd_keys_revoke(args: argparse.Namespace) -> int:
    from actors.core.ids import utcnow

    config = _config_from(args)
    done = asyncio.run(_with_store(config, lambda s: s.revoke_api_key(args.key_id, utcnow())))
    if not done:
        print(f"sessiond: no active key {args.key_id}", file=sys.stderr)
        return 1
    print(f"revoked {args.key_id}")
    return 0
