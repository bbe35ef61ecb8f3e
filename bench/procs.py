"""The servers under test, as child processes of the bench: start, watch (RSS, CPU), stop.

Only 127.0.0.1 is ever targeted. Every child is ended by its own pid when the bench ends.
"""

from __future__ import annotations

import asyncio
import os
import platform
import resource
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

__all__ = [
    "BENCH_KEY",
    "Child",
    "Profiler",
    "machine_info",
    "maybe_profile",
    "raise_nofile",
    "reference",
    "remove_data",
    "sessiond",
]

BENCH_KEY = "sk-bench-0123456789abcdef"
ROOT = Path(__file__).resolve().parent.parent
_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICKS = os.sysconf("SC_CLK_TCK")


def raise_nofile(wanted: int) -> int:
    """Raise this process's open-file limit towards ``wanted`` (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(wanted, soft), hard) if hard != resource.RLIM_INFINITY else max(wanted, soft)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Child:
    """A server process that prints ``listening on http://H:P`` once it accepts connections."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], log_path: Path, cwd: Path, data_dir: Path | None = None
    ) -> None:
        self.name = name
        self.data_dir = data_dir
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.cwd = cwd
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self._drain: asyncio.Task[None] | None = None
        self.started_at = 0.0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, within: float = 60.0) -> str:
        loop = asyncio.get_running_loop()
        self.started_at = loop.time()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, cwd=self.cwd, env=self.env, stdout=asyncio.subprocess.PIPE, stderr=log
            )
        finally:
            log.close()
        assert self.proc.stdout is not None
        seen: list[str] = []
        async with asyncio.timeout(within):
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise RuntimeError(f"{self.name} exited before listening; see {self.log_path}: {seen}")
                line = raw.decode().rstrip()
                seen.append(line)
                if line.startswith("listening on "):
                    self.url = line.removeprefix("listening on ")
                    break
        self._drain = loop.create_task(self._drain_stdout())
        return self.url

    async def _drain_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while await self.proc.stdout.read(65536):
            pass

    def rss_bytes(self) -> int:
        """Resident memory now (0 once the process is gone)."""
        try:
            with open(f"/proc/{self.pid}/statm") as f:
                return int(f.read().split()[1]) * _PAGE
        except (OSError, IndexError, ValueError):
            return 0

    def cpu_seconds(self) -> float:
        """User + system CPU time the process used so far."""
        return _cpu_seconds(f"/proc/{self.pid}/stat")

    def loop_cpu_seconds(self) -> float:
        """User + system CPU time of the process's main thread so far: the event loop's, for both
        servers (the rest of sessiond's is its store's threads)."""
        return _cpu_seconds(f"/proc/{self.pid}/task/{self.pid}/stat")

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)

    async def wait(self) -> int:
        assert self.proc is not None
        code = await self.proc.wait()
        if self._drain is not None:
            await asyncio.gather(self._drain, return_exceptions=True)
        return code

    async def stop(self, grace: float = 30.0) -> int | None:
        """SIGTERM, and SIGKILL if it has not exited after ``grace`` seconds."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(grace):
                    return await self.wait()
            except TimeoutError:
                self.proc.send_signal(signal.SIGKILL)
        return await self.wait()


def _cpu_seconds(stat: str) -> float:
    """User + system CPU time in a /proc ``stat`` file (0 once the process is gone)."""
    try:
        with open(stat) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS
    except (OSError, IndexError, ValueError):
        return 0.0


def _base_env(extra: dict[str, str]) -> dict[str, str]:
    # SESSIOND_* settings of the caller pass through (e.g. SESSIOND_STORE_SYNCHRONOUS=NORMAL);
    # the bench's own settings below take precedence.
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


def sessiond(
    out_dir: Path,
    *,
    tokens_per_second: float,
    reply_tokens: int,
    data_dir: Path | None = None,
    config: Path | None = None,
    env: dict[str, str] | None = None,
    name: str = "sessiond",
) -> Child:
    """``python -m server serve`` on a free port, a data dir of its own, the bench's API key."""
    data = data_dir or Path(tempfile.mkdtemp(prefix="sessiond-bench-"))
    settings = {
        "SESSIOND_AUTH_API_KEYS": f'["{BENCH_KEY}"]',
        "SESSIOND_AUTH_CREATE_FIRST_KEY": "false",
        "SESSIOND_LOG_ACCESS": "false",
        "SESSIOND_LOG_LEVEL": "warning",
        "SESSIOND_SIMULATED_TOKENS_PER_SECOND": repr(float(tokens_per_second)),
        "SESSIOND_SIMULATED_REPLY_TOKENS": str(reply_tokens),
        **(env or {}),
    }
    argv = [sys.executable, "-m", "server", "serve", "--host", "127.0.0.1", "--port", "0", "--data-dir", str(data)]
    if config is not None:
        argv += ["--config", str(config)]
    return Child(name, argv, _base_env(settings), out_dir / f"{name}.log", ROOT, data)


def reference(out_dir: Path, *, tokens_per_second: float, reply_tokens: int) -> Child:
    """The bare aiohttp SSE server (bench/reference.py) with the same model settings."""
    argv = [
        sys.executable, "-m", "bench.reference", "--port", "0",
        "--tokens-per-second", repr(float(tokens_per_second)), "--reply-tokens", str(reply_tokens),
    ]
    return Child("reference", argv, _base_env({}), out_dir / "reference.log", ROOT)


def remove_data(child: Child) -> None:
    data = child.data_dir
    if data is not None and data.name.startswith("sessiond-bench-"):
        shutil.rmtree(data, ignore_errors=True)


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    import aiohttp
    import msgspec

    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "msgspec": msgspec.__version__,
        "platform": platform.platform(),
    }
    try:
        import uvloop

        info["uvloop"] = getattr(uvloop, "__version__", None)
    except ImportError:
        info["uvloop"] = None
    try:
        with open("/proc/meminfo") as f:
            total_kb = int(f.readline().split()[1])
        info["memory_gib"] = round(total_kb / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        info["memory_gib"] = None
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        info["cpu"] = ""
    return info


def _py_spy() -> str:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        raise SystemExit("--profile needs py-spy: pip install -e '.[bench]'")
    return exe


class Profiler:
    """py-spy sampling the server child while a step runs (``--profile``)."""

    def __init__(self, child: Child, path: Path, fmt: str = "flamegraph", rate: int = 250) -> None:
        self.child = child
        self.path = path
        self.fmt = fmt
        self.rate = rate
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Profiler:
        exe = _py_spy()
        self.proc = await asyncio.create_subprocess_exec(
            exe, "record", "--pid", str(self.child.pid), "--rate", str(self.rate), "--format", self.fmt,
            "--output", str(self.path), "--nonblocking",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                async with asyncio.timeout(30):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def maybe_profile(stack: Any, params: dict[str, Any], child: Child, label: str, stamp: str) -> Path | None:
    """Enter a Profiler on ``stack`` when the run was asked for ``--profile FORMAT``."""
    fmt = params.get("profile")
    if not fmt:
        return None
    ext = {"flamegraph": "svg", "speedscope": "json", "raw": "txt"}[fmt]
    path = child.log_path.parent / f"profile-{stamp}-{label.replace(' ', '-').replace('=', '')}.{ext}"
    await stack.enter_async_context(Profiler(child, path, fmt))
    return path
