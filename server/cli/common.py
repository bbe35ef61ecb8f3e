"""What the ``sessiond`` commands share: the configuration they read, serving until a signal,
a store opened for one operation."""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from actors.store.base import Store
from server.config import Config, load_config, unknown_env

__all__ = ["config_from", "serve_until_signalled", "with_store"]

T = TypeVar("T")


def config_from(args: argparse.Namespace) -> Config:
    """The configuration a command runs with: --config (or ./config.toml), SESSIOND_* and its flags."""
    for name, close in unknown_env():
        hint = f" (did you mean {close}?)" if close else ""
        print(f"sessiond: warning: {name} is not a setting and is ignored{hint}", file=sys.stderr)
    path = args.config
    if path is None and Path("config.toml").is_file():
        path = "config.toml"
    overrides: dict[str, dict[str, Any]] = {"server": {}}
    for name in ("host", "port", "data_dir"):
        value = getattr(args, name, None)
        if value is not None:
            overrides["server"][name] = value
    return load_config(path, overrides=overrides)


async def serve_until_signalled(runner: web.AppRunner, sock: socket.socket, *, note: str = "") -> None:
    """Serve on ``sock`` (from :func:`server.preflight.bind_socket`), say ``listening on
    http://H:P`` once connections are accepted, and on SIGTERM or SIGINT say so and clean up
    (aiohttp's order: stop listening, on_shutdown, wait for handlers, cleanup)."""
    received: list[signal.Signals] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig)
        stop.set()

    # Before the announcement: a supervisor may signal as soon as it reads it.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    await web.SockSite(runner, sock).start()
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"listening on http://{shown}:{port}{note}", flush=True)
    await stop.wait()
    print(f"sessiond: stopping ({received[0].name})", flush=True)
    await runner.cleanup()


async def with_store(config: Config, fn: Callable[[Store], Awaitable[T]]) -> T:
    """``fn(store)`` with the configured store open for its duration."""
    from server.app import make_store

    store = make_store(config)
    await store.open()
    try:
        return await fn(store)
    finally:
        await store.aclose()


