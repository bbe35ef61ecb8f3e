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
import socket
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import ClientConnectionError, ClientConnectorError, ClientSession, ClientTimeout, web

from server.errors import problem_response

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


class _Upstream:
    """One node behind the proxy, and until when it is left out after failing to answer."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.down_until = 0.0


def make_proxy(upstreams: list[str], *, cooldown_seconds: float = 5.0) -> web.Application:
    """Round-robin every request over ``upstreams``, streaming answers back (SSE works).

    A node that refuses or drops the connection before answering is left out for
    ``cooldown_seconds`` and the request goes to the next one; when none answers, the proxy
    says so as problem+json 503 with Retry-After, as sessiond itself would.
    """
    nodes = [_Upstream(u) for u in upstreams]
    turn = itertools.count()
    app = web.Application(client_max_size=1 << 30)
    http_key = web.AppKey("http", ClientSession)

    async def start(app: web.Application) -> Any:
        app[http_key] = ClientSession(timeout=ClientTimeout(total=None, sock_connect=5), auto_decompress=False)
        yield
        await app[http_key].close()

    def candidates() -> list[_Upstream]:
        now = time.monotonic()
        start = next(turn) % len(nodes)
        order = nodes[start:] + nodes[:start]
        up = [n for n in order if n.down_until <= now]
        return up or order  # all down: try them all anyway, one may be back

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        headers["X-Forwarded-For"] = request.remote or ""
        # Read once: a request a dead node never received can go to the next one.
        body = await request.read() if request.body_exists else None
        tried = []
        for node in candidates():
            try:
                up = await app[http_key].request(
                    request.method, node.url + request.rel_url.raw_path_qs,
                    headers=headers, data=body, allow_redirects=False,
                )
            except (ClientConnectorError, TimeoutError) as exc:
                # Not connected: the node never saw the request, so the next one may take it.
                node.down_until = time.monotonic() + cooldown_seconds
                tried.append(f"{node.url} ({type(exc).__name__})")
                continue
            except ClientConnectionError as exc:
                # Dropped after sending: the node may have acted on it, so it is not sent again.
                node.down_until = time.monotonic() + cooldown_seconds
                return problem_response(
                    502, "bad_gateway", "Bad Gateway", f"{node.url} dropped the connection ({type(exc).__name__})",
                    instance=request.path,
                )
            async with up:
                node.down_until = 0.0
                resp = web.StreamResponse(
                    status=up.status, headers={k: v for k, v in up.headers.items() if k.lower() not in _HOP}
                )
                resp.headers["X-Sessiond-Node"] = node.url
                await resp.prepare(request)
                async for chunk in up.content.iter_any():
                    await resp.write(chunk)
                await resp.write_eof()
                return resp
        return problem_response(
            503, "unavailable", "Service Unavailable",
            f"no sessiond node answers (tried {', '.join(tried)})", retry_after=1, instance=request.path,
        )

    app.cleanup_ctx.append(start)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def _cmd_cluster(args: argparse.Namespace) -> int:
    from server.auth.tokens import load_secret
    from server.cli.common import config_from
    from server.preflight import bind_socket

    config = config_from(args)
    dsn = args.postgres_dsn or config.store.postgres_dsn
    redis_url = args.redis_url or config.redis.url
    # The proxy's port first: if it is taken, say so before starting any node.
    sock = bind_socket("127.0.0.1", args.port, 128)
    # Every node signs and checks session tokens with one secret (a token minted on one node is
    # presented to another): the configured one, else one made once in the demo's data dir.
    config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    secret = load_secret(config.tokens, config.data_dir)
    return asyncio.run(_run(args, config.data_dir, dsn, redis_url, secret, sock))


async def _run(
    args: argparse.Namespace, data_dir: Path, dsn: str, redis_url: str, secret: str, sock: socket.socket
) -> int:
    procs: list[asyncio.subprocess.Process] = []
    urls: list[str] = []
    base = dict(os.environ)
    base.update(
        SESSIOND_STORE_KIND="postgres",
        SESSIOND_STORE_POSTGRES_DSN=dsn,
        SESSIOND_FANOUT_KIND="redis",
        SESSIOND_REDIS_URL=redis_url,
        SESSIOND_TOKENS_SECRET=secret,
    )
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
                str(data_dir / f"node{i + 1}"),
            ]
            if args.config:
                cmd += ["--config", args.config]
            proc = await asyncio.create_subprocess_exec(*cmd, env=env, stdout=asyncio.subprocess.PIPE)
            procs.append(proc)
            assert proc.stdout is not None
            while True:
                line = (await proc.stdout.readline()).decode()
                if not line:
                    print(f"sessiond: node{i + 1} exited before listening (its reason is above)", file=sys.stderr)
                    return 1
                print(f"node{i + 1}: {line.rstrip()}", flush=True)
                if line.startswith("listening on "):
                    urls.append(line.removeprefix("listening on ").strip())
                    break
        from server.cli.common import serve_until_signalled

        runner = web.AppRunner(make_proxy(urls), access_log=None)
        await runner.setup()
        await serve_until_signalled(runner, sock, note=f" (round-robin over {', '.join(urls)})")
        return 0
    finally:
        sock.close()
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            await proc.wait()
