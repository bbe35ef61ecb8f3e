"""``sessiond cluster``: try cluster mode on one machine.

Starts N sessiond nodes on 127.0.0.1 (PostgreSQL store, Redis fan-out, leases) and a tiny
round-robin proxy in front of them, so every request may land on a different node, as behind
a real load balancer. For production, put nginx (or any balancer) in front instead.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import sys
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web

__all__ = ["make_proxy", "register"]

_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "host", "content-length"}


def register(sub: Any, common: Any) -> None:
    p = sub.add_parser("cluster", help="run N nodes and a round-robin proxy on this machine (a demo of cluster mode)")
    common(p)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument(
        "--port", type=int, default=8080, help="the proxy's port; nodes use the next ones (0: any free ports)"
    )
    p.add_argument("--postgres-dsn", default=None, help="default: [store] postgres_dsn")
    p.add_argument("--redis-url", default=None, help="default: [redis] url")
    p.set_defaults(func=_cmd_cluster)


def make_proxy(upstreams: list[str]) -> web.Application:
    """Round-robin every request over ``upstreams``, streaming bodies both ways (SSE works)."""
    turn = itertools.cycle(upstreams)
    app = web.Application(client_max_size=1 << 30)

    async def start(app: web.Application) -> Any:
        app["http"] = ClientSession(timeout=ClientTimeout(total=None, sock_connect=5), auto_decompress=False)
        yield
        await app["http"].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        upstream = next(turn)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        headers["X-Forwarded-For"] = request.remote or ""
        async with app["http"].request(
            request.method,
            upstream + request.rel_url.raw_path_qs,
            headers=headers,
            data=request.content,
            allow_redirects=False,
        ) as up:
            resp = web.StreamResponse(
                status=up.status, headers={k: v for k, v in up.headers.items() if k.lower() not in _HOP}
            )
            resp.headers["X-Sessiond-Node"] = upstream
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    app.cleanup_ctx.append(start)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def _cmd_cluster(args: argparse.Namespace) -> int:
    from server.cli.main import _config_from

    config = _config_from(args)
    dsn = args.postgres_dsn or config.store.postgres_dsn
    redis_url = args.redis_url or config.redis.url
    return asyncio.run(_run(args, dsn, redis_url))


async def _run(args: argparse.Namespace, dsn: str, redis_url: str) -> int:
    procs: list[asyncio.subprocess.Process] = []
    urls: list[str] = []
    base = dict(os.environ)
    base.update(
        SESSIOND_STORE_KIND="postgres",
        SESSIOND_STORE_POSTGRES_DSN=dsn,
        SESSIOND_FANOUT_KIND="redis",
        SESSIOND_REDIS_URL=redis_url,
    )
    data_dir = args.data_dir or "./data"
    try:
        for i in range(args.nodes):
            env = {**base, "SESSIOND_CLUSTER_NODE_ID": f"node{i + 1}"}
            port = 0 if args.port == 0 else args.port + 1 + i
            cmd = [
                sys.executable,
                "-m",
                "server",
                "serve",
                "--port",
                str(port),
                "--data-dir",
                f"{data_dir}/node{i + 1}",
            ]
            if args.config:
                cmd += ["--config", args.config]
            proc = await asyncio.create_subprocess_exec(*cmd, env=env, stdout=asyncio.subprocess.PIPE)
            procs.append(proc)
            assert proc.stdout is not None
            while True:
                line = (await proc.stdout.readline()).decode()
                if not line:
                    print(f"node{i + 1} exited before listening (is PostgreSQL at {dsn} and Redis at {redis_url} up?)")
                    return 1
                print(f"node{i + 1}: {line.rstrip()}", flush=True)
                if line.startswith("listening on "):
                    urls.append(line.removeprefix("listening on ").strip())
                    break
        from server.cli.main import serve_until_signalled
        from server.preflight import bind_socket

        sock = bind_socket("127.0.0.1", args.port, 128)
        runner = web.AppRunner(make_proxy(urls), access_log=None)
        await runner.setup()
        await serve_until_signalled(runner, sock, note=f" (round-robin over {', '.join(urls)})")
        return 0
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            await proc.wait()
