"""Preflight: what must hold before ``sessiond serve`` listens, each in one plain sentence.

``sessiond serve`` runs these checks and stops with the sentence of the first that fails;
``sessiond doctor`` runs the same checks without changing anything and prints every finding.
One wording for both, so an operator reads the same sentence from either.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import sqlite3
import stat
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import msgspec

from server.config import Config

__all__ = [
    "FAIL",
    "OK",
    "SQLITE_OLDEST",
    "WARN",
    "Check",
    "StartupError",
    "bind_socket",
    "check_cluster",
    "check_data_dir",
    "check_postgres",
    "check_redis",
    "check_sqlite_library",
    "check_store",
    "explain",
    "missing_key",
    "prepare_data_dir",
    "used_by_redis",
    "without_password",
]

OK, WARN, FAIL = "ok", "warn", "FAIL"


class Check(msgspec.Struct):
    """One finding: its state (ok, warn, FAIL), what was checked, and what was found."""

    state: str
    name: str
    detail: str


class StartupError(Exception):
    """sessiond cannot start; the message is the one sentence to show."""


def without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@", 1)
    return url


# -- the data directory -------------------------------------------------------------------


def _writable(d: Path) -> OSError | None:
    """Whether a file can be made in ``d`` (tried, not guessed: root passes every access())."""
    try:
        with tempfile.NamedTemporaryFile(dir=d, prefix=".sessiond-check-"):
            return None
    except OSError as exc:
        return exc


def check_data_dir(config: Config) -> Check:
    """Whether the data dir is (or can become) a private directory sessiond can write in."""
    d = config.data_dir.resolve()
    if d.exists() and not d.is_dir():
        return Check(FAIL, "data dir", f"{d} is a file, not a directory: point [server] data_dir elsewhere")
    if not d.exists():
        parent = next((p for p in d.parents if p.exists()), None)
        if parent is None or not parent.is_dir() or _writable(parent) is not None:
            return Check(FAIL, "data dir", f"{d} does not exist and cannot be created under {parent}")
        return Check(OK, "data dir", f"{d} does not exist yet; the server will create it")
    failed = _writable(d)
    if failed is not None:
        return Check(FAIL, "data dir", f"cannot write in {d}: {failed.strerror or failed}")
    free = os.statvfs(d)
    free_mib = free.f_bavail * free.f_frsize // (1 << 20)
    mode = stat.S_IMODE(d.stat().st_mode)
    if mode & 0o077:
        # The database holds every conversation: the directory is the owner's alone.
        return Check(
            WARN, "data dir",
            f"{d} is writable ({free_mib} MiB free) but open to other users (mode {mode:04o}): chmod 700 {d}",
        )
    return Check(OK if free_mib >= 100 else WARN, "data dir", f"{d} is writable ({free_mib} MiB free)")


def prepare_data_dir(config: Config) -> None:
    """Make the data dir (0700) and an empty SQLite file (0600) before anything writes there.

    SQLite gives the -wal and -shm files the mode of the database file, so they are private too.
    Existing files keep the mode the operator gave them.
    """
    d = config.data_dir
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    if config.store.kind == "sqlite":
        path = d / config.store.sqlite_file
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass


# -- the SQLite database -------------------------------------------------------------------

# The oldest SQLite library the store runs on: RETURNING (3.35) and the JSON functions, built
# in since 3.38 and compiled into most older builds (the group commit's one statement needs
# them, actors/store/sqlite_writer.py).
SQLITE_OLDEST = (3, 35, 0)


def check_sqlite_library(version: tuple[int, int, int] = sqlite3.sqlite_version_info) -> Check | None:
    """A FAIL if the SQLite library this Python links is too old or lacks the JSON functions
    (None: it will do). Said before anything is opened, instead of a syntax error at the
    first commit."""
    found = ".".join(map(str, version))
    if version < SQLITE_OLDEST:
        oldest = ".".join(map(str, SQLITE_OLDEST))
        return Check(
            FAIL, "store", f"this Python's SQLite library is {found}; sessiond needs {oldest} or newer"
            " (run it with a Python built against a newer SQLite, or use store.kind = \"postgres\")",
        )
    db = sqlite3.connect(":memory:")
    try:
        db.execute("SELECT json_extract(value, '$[0]') FROM json_each('[[1]]')").fetchall()
    except sqlite3.OperationalError:
        return Check(FAIL, "store", f"this Python's SQLite library ({found}) was built without its JSON functions,"
                     " which sessiond needs: run it with a Python whose SQLite has them")
    finally:
        db.close()
    return None


def check_store(config: Config, *, thorough: bool = False) -> Check:
    """Whether the SQLite database opens and has a schema this sessiond knows (read-only; never
    migrates). ``thorough`` also reads every page (``PRAGMA quick_check``): the doctor's, since
    on a large database it takes a while."""
    from actors.store.migrations.sqlite import MIGRATIONS

    known = len(MIGRATIONS)
    if config.store.kind != "sqlite":
        return Check(OK, "store", f"store.kind is {config.store.kind!r}: see the postgres check")
    library = check_sqlite_library()
    if library is not None:
        return library
    path = (config.data_dir / config.store.sqlite_file).resolve()
    if not path.exists():
        return Check(OK, "store", f"no database yet at {path}; the server will create it (schema {known})")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            integrity = db.execute("PRAGMA quick_check").fetchone()[0] if thorough else "ok"
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            db.close()
    except sqlite3.Error as exc:
        return Check(FAIL, "store", f"cannot open {path} as an SQLite database: {exc}")
    if integrity != "ok":
        return Check(FAIL, "store", f"{path} is damaged (quick_check: {integrity}); restore it from a backup")
    if version > known:
        return Check(
            FAIL, "store", f"{path} has schema {version}, newer than this sessiond knows ({known}): upgrade sessiond"
        )
    if version < known:
        return Check(OK, "store", f"{path} opens (schema {version}; the server will migrate it to {known})")
    if "sessions" not in tables:
        return Check(FAIL, "store", f"{path} has schema {version} but no sessions table: it is not sessiond's")
    return Check(OK, "store", f"{path} opens, schema {version} (current)")


# -- the configuration as a whole -----------------------------------------------------------


def missing_key(provider: str, env: str) -> str:
    return f"providers.{provider}.api_key_env: the environment variable {env} is not set"


def check_cluster(config: Config) -> Check:
    """Cluster mode (``[fanout] kind = "redis"``) needs what every node shares: one database
    and one token signing secret (a token minted on one node is checked on another)."""
    if config.fanout.kind != "redis":
        return Check(OK, "cluster", "not in cluster mode ([fanout] kind is not \"redis\")")
    if config.store.kind != "postgres":
        return Check(
            FAIL, "cluster",
            '[fanout] kind = "redis" (cluster mode) needs [store] kind = "postgres": nodes cannot share SQLite',
        )
    secret_file = config.data_dir / config.tokens.secret_file
    if not config.tokens.secret and not secret_file.is_file():
        return Check(
            FAIL, "cluster",
            "cluster mode needs one token signing secret on every node: set [tokens] secret"
            f" (or SESSIOND_TOKENS_SECRET), or put the shared secret in {secret_file}",
        )
    return Check(OK, "cluster", "PostgreSQL store and a shared token secret")


# -- PostgreSQL and Redis -----------------------------------------------------------------


async def check_postgres(config: Config) -> Check:
    """Whether the configured PostgreSQL database exists and answers (when it is the store)."""
    if config.store.kind != "postgres":
        return Check(OK, "postgres", "not used by this configuration")
    import asyncpg  # type: ignore[import-untyped]

    dsn = config.store.postgres_dsn
    shown = without_password(dsn)
    try:
        conn = await asyncio.wait_for(asyncpg.connect(dsn, timeout=5), 8)
    except asyncpg.InvalidCatalogNameError:
        name = urlsplit(dsn).path.lstrip("/") or "sessiond"
        return Check(
            FAIL, "postgres",
            f"the PostgreSQL database {name!r} does not exist ({shown}): create it (createdb {name})"
            " or fix [store] postgres_dsn",
        )
    except (OSError, TimeoutError) as exc:
        return Check(FAIL, "postgres", f"cannot reach PostgreSQL at {shown}: {exc or type(exc).__name__}")
    except Exception as exc:  # authentication, TLS, a malformed DSN: asyncpg's own words
        return Check(FAIL, "postgres", f"PostgreSQL at {shown} refused the connection: {exc}")
    try:
        version = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    return Check(OK, "postgres", f"{shown} answers (PostgreSQL {version})")


def used_by_redis(config: Config) -> list[str]:
    """The settings that make sessiond use Redis (``[section] key = "redis"``)."""
    found = []
    for section, values in msgspec.to_builtins(config).items():
        if isinstance(values, dict):
            found += [f"[{section}] {k}" for k, v in values.items() if v == "redis"]
    return found


async def check_redis(config: Config) -> Check:
    users = used_by_redis(config)
    if not users:
        return Check(OK, "redis", "not used by this configuration")
    import redis.asyncio as aioredis

    url = config.redis.url
    shown = without_password(url)
    conn = aioredis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    try:
        await asyncio.wait_for(conn.ping(), 5)
    except Exception as exc:
        return Check(
            FAIL, "redis", f"cannot reach Redis at {shown} (needed by {', '.join(users)}): it does not answer ({exc})"
        )
    finally:
        await conn.aclose()
    return Check(OK, "redis", f"{shown} answers (used by {', '.join(users)})")


# -- the listening socket -----------------------------------------------------------------


def bind_socket(host: str, port: int, backlog: int) -> socket.socket:
    """A listening socket on host:port, or StartupError saying in one sentence why not."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise StartupError(f"cannot listen on {host}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise StartupError(_bind_sentence(host, port, exc)) from None
    sock.setblocking(False)
    return sock


def _bind_sentence(host: str, port: int, exc: OSError) -> str:
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return f"{where} is in use (another sessiond?)"
    if exc.errno == errno.EACCES:
        return f"{where} cannot be used: permission denied (ports below 1024 need privileges)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{host} is not an address of this machine: fix [server] host"
    return f"cannot listen on {where}: {exc.strerror or exc}"


def explain(exc: BaseException, config: Config) -> str | None:
    """The one sentence for a start-up failure preflight did not see coming, if we know it."""
    if isinstance(exc, sqlite3.Error):
        return f"cannot use the database in {config.data_dir}: {exc}"
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"cannot use {exc.filename}: {exc.strerror or exc}"
    module = type(exc).__module__
    if module.startswith("asyncpg") or (isinstance(exc, OSError) and config.store.kind == "postgres"):
        return f"PostgreSQL at {without_password(config.store.postgres_dsn)} failed at start-up: {exc}"
    if module.startswith("redis"):
        return f"Redis at {without_password(config.redis.url)} failed at start-up: {exc}"
    return None
