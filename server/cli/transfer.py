"""``sessiond export SESSION_ID FILE`` and ``sessiond import FILE [--new-id]``, on the store itself.

They read and write the database directly (no server or key needed), so an operator can move
sessions between installations; a running server sees an imported session on its first use.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import msgspec

from actors.core.errors import SessiondError
from actors.core.export import SessionExport, build_export
from actors.core.tree import MessageTree
from actors.registry import Registry
from actors.session.actor import ActorSettings
from server import sse

__all__ = ["register"]


def register(sub: Any, common: Any) -> None:
    exp = sub.add_parser("export", help="write a session as one JSON document")
    common(exp)
    exp.add_argument("session_id")
    exp.add_argument("file", help="where to write it (- for standard output)")
    exp.set_defaults(func=_cmd_export)
    imp = sub.add_parser("import", help="read a session exported by `sessiond export` or GET .../export")
    common(imp)
    imp.add_argument("file", help="the JSON document (- for standard input)")
    imp.add_argument("--new-id", action="store_true", help="give the session (and its messages) fresh ids")
    imp.set_defaults(func=_cmd_import)


def _store_of(args: argparse.Namespace) -> Any:
    from server.app import make_store
    from server.cli.common import config_from

    return make_store(config_from(args))


def _cmd_export(args: argparse.Namespace) -> int:
    async def run() -> bytes | None:
        store = _store_of(args)
        await store.open()
        try:
            loaded = await store.load_session(args.session_id, events=0)
        finally:
            await store.aclose()
        if loaded is None:
            return None
        tree = MessageTree.from_nodes(loaded.nodes, loaded.record.active_leaf_id)
        return msgspec.json.encode(build_export(loaded.record, tree.in_order(), loaded.checkpoints))

    data = asyncio.run(run())
    if data is None:
        print(f"sessiond: no session {args.session_id}", file=sys.stderr)
        return 1
    if args.file == "-":
        sys.stdout.write(data.decode() + "\n")
    else:
        Path(args.file).write_bytes(data)
        print(f"exported {args.session_id} to {args.file}")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    raw = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    try:
        doc = msgspec.json.decode(raw, type=SessionExport)
    except msgspec.DecodeError as exc:
        print(f"sessiond: {args.file} is not a session export: {exc}", file=sys.stderr)
        return 2

    async def run() -> str:
        store = _store_of(args)
        await store.open()
        try:
            registry = Registry(store, None, settings=ActorSettings(), idle_seconds=60, frame=sse.frame)  # type: ignore[arg-type]
            record = await registry.import_session(doc, new_id=args.new_id)
        finally:
            await store.aclose()
        return record.id

    try:
        session_id = asyncio.run(run())
    except SessiondError as exc:
        print(f"sessiond: {exc.detail}", file=sys.stderr)
        return 1
    print(f"imported as {session_id}")
    print(session_id)
    return 0
