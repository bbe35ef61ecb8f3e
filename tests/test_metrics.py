"""Operations: GET /metrics in Prometheus format, and the JSON request log with secrets redacted."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from actors.agent.backends.base import ModelCall, ModelItem
from actors.agent.router import Router
from actors.core.model import Chunk
from actors.store.tables import RouteEntry
from server.appkeys import METRICS
from server.metrics import Metrics
from tests.conftest import ROOT, TEST_KEY, ClientFactory, new_session
from tests.sse import read_until


async def _scrape(client: TestClient[Any, Any]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = await client.get("/metrics")  # the test client sends its API key
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(await resp.text()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_show_actors_streams_events_commits_and_requests(make_client: ClientFactory) -> None:
    client = await make_client(simulated={"tokens_per_second": 0, "reply_tokens": 30})
    s = await new_session(client)
    stream = await client.get(f"/v1/sessions/{s['id']}/stream", headers={"Last-Event-ID": "0"})
    sent = await client.post(f"/v1/sessions/{s['id']}/messages", json={"content": "count me"})
    assert sent.status == 200
    events = await read_until(stream, "task.completed")

    m = await _scrape(client)  # the stream is still open
    assert m[("sessiond_actors_active", ())] == 1
    assert m[("sessiond_streams_open", ())] == 1
    assert m[("sessiond_activations_total", ())] >= 1
    assert m[("sessiond_tasks_started_total", ())] == 1
    assert m[("sessiond_tasks_running", ())] == 0
    assert m[("sessiond_events_total", ())] == events[-1].id == len(events)
    assert m[("sessiond_crashes_total", ())] == 0
    assert m[("sessiond_passivations_total", ())] == 0
    assert m[("sessiond_mailbox_depth_sum", ())] == 0
    assert ("sessiond_mailbox_depth_max", ()) in m
    assert m[("sessiond_store_commit_seconds_count", ())] >= 2  # the session row, then the turn
    assert m[("sessiond_store_commit_ops_total", ())] >= m[("sessiond_store_commit_seconds_count", ())]
    assert m[("sessiond_provider_seconds_count", (("outcome", "ok"), ("provider", "simulated")))] == 1
    assert m[("sessiond_provider_first_chunk_seconds_count", (("provider", "simulated"),))] == 1
    assert not [k for k in m if k[0] == "sessiond_provider_errors_total"]
    created = ("sessiond_http_requests_total", (("method", "POST"), ("route", "/v1/sessions"), ("status", "201")))
    sent_key = (
        "sessiond_http_requests_total",
        (("method", "POST"), ("route", "/v1/sessions/{session_id}/messages"), ("status", "200")),
    )
    assert m[created] == 1 and m[sent_key] == 1
    assert ("process_resident_memory_bytes", ()) in m
    stream.close()

    missing = await client.get("/v1/sessions/ses_missing")
    assert missing.status == 404
    m = await _scrape(client)
    not_found = (
        "sessiond_http_requests_total",
        (("method", "GET"), ("route", "/v1/sessions/{session_id}"), ("status", "404")),
    )
    assert m[not_found] == 1, "labelled by route template, never by raw path"
    for made_up in ("BREW", "PROPFIND", "X1"):  # a method is any token the client likes
        assert (await client.request(made_up, "/v1/sessions")).status in (400, 405)
    m = await _scrape(client)
    methods = {dict(labels)["method"] for name, labels in m if name == "sessiond_http_requests_total"}
    assert methods == {"GET", "POST", "other"}, "a method the server does not know is labelled 'other'"


async def test_metrics_can_be_turned_off_require_a_key_by_default_or_be_opened(make_client: ClientFactory) -> None:
    off = await make_client(metrics={"enabled": False})
    assert (await off.get("/metrics")).status == 404
    assert METRICS not in off.app
    locked = await make_client()  # by default a scraper needs a key
    assert (await locked.get("/metrics", headers={"X-API-Key": ""})).status == 401
    assert (await locked.get("/metrics", headers={"X-End-User-ID": "u1"})).status == 403
    assert (await locked.get("/metrics")).status == 200  # the client sends the test key
    opened = await make_client(metrics={"public": True})
    assert (await opened.get("/metrics", headers={"X-API-Key": ""})).status == 200


class _BrokenModel:
    """A model backend that fails after its first chunk, as a real one may."""

    name = "broken"
    kind = "broken"
    default_model = "broken-1"

    async def stream(self, call: ModelCall) -> AsyncIterator[ModelItem]:
        yield Chunk(["Hel"])
        raise ConnectionResetError("upstream went away")

    async def probe(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


async def test_provider_latency_and_errors_are_recorded() -> None:
    metrics = Metrics(process=False)
    router = Router({"broken": _BrokenModel()}, cooldown=1.0, probe_interval=1.0, observer=metrics)
    got = []
    with pytest.raises(ConnectionResetError):
        async for chunk in router.stream([RouteEntry("broken", "")], ModelCall(messages=[], model="")):
            got.append(chunk)
    assert got == [Chunk(["Hel"])]
    text = metrics.render().decode()
    assert 'sessiond_provider_errors_total{error="ConnectionResetError",provider="broken"} 1.0' in text
    assert 'sessiond_provider_seconds_count{outcome="error",provider="broken"} 1.0' in text
    assert 'sessiond_provider_first_chunk_seconds_count{provider="broken"} 1.0' in text


# -- the request log ----------------------------------------------------------------------


class _LoggingServer:
    """``python -m server serve`` with its request log on; every line it writes goes to a queue."""

    def __init__(self, tmp_path: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIOND_")}
        env.update({
            "PYTHONPATH": str(ROOT),
            "SESSIOND_AUTH_API_KEYS": f'["{TEST_KEY}"]',
            "SESSIOND_AUTH_CREATE_FIRST_KEY": "false",
            "SESSIOND_LOG_ACCESS": "true",
            "SESSIOND_LOG_FORMAT": "json",
        })
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server", "serve", "--port", "0", "--data-dir", str(tmp_path / "data")],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        self.url = self.until("listening on ")[-1].removeprefix("listening on ")

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put(raw.decode(errors="replace").rstrip("\n"))

    def until(self, needle: str, timeout: float = 20) -> list[str]:
        """Lines written so far, up to the first containing ``needle``."""
        deadline = time.monotonic() + timeout
        while not any(needle in line for line in self.seen):
            try:
                self.seen.append(self.lines.get(timeout=max(deadline - time.monotonic(), 0.001)))
            except queue.Empty:
                raise AssertionError(f"no line with {needle!r} in {self.seen}") from None
        return self.seen

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def _request(url: str, headers: dict[str, str], data: bytes | None = None) -> tuple[int, dict[str, str]]:
    req = urllib.request.Request(url, headers=headers, data=data, method="POST" if data else "GET")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, dict(resp.headers)


def test_request_log_is_one_json_line_with_request_id_and_no_secret(tmp_path: Path) -> None:
    server = _LoggingServer(tmp_path)
    try:
        _check_log(server)
    finally:
        server.stop()


def _check_log(server: _LoggingServer) -> None:
    url = server.url
    secret = "SECRET-TOKEN-31337"
    status, _ = _request(
        f"{url}/v1/sessions?limit=5&token={secret}&access_token={secret}",
        {"X-API-Key": TEST_KEY, "X-Request-ID": "req-42", "Authorization": f"Bearer {secret}"},
    )
    assert status == 200
    status, headers = _request(
        f"{url}/v1/sessions", {"X-API-Key": TEST_KEY, "Content-Type": "application/json"},
        data=json.dumps({"metadata": {"password": secret}}).encode(),
    )
    assert status == 201
    rid = headers["X-Request-ID"]
    lines = server.until(f'"request_id":"{rid}"')
    logged = "\n".join(lines)
    assert secret not in logged, "no token, key or body ever reaches the log"
    assert TEST_KEY not in logged
    records = [json.loads(line) for line in lines if line.startswith("{")]
    first = next(r for r in records if r.get("request_id") == "req-42")
    assert first["method"] == "GET" and first["status"] == 200
    assert first["path"].startswith("/v1/sessions?")
    assert "limit=5" in first["path"] and "token=[redacted]" in first["path"]
    assert {"ts", "level", "seconds", "remote"} <= first.keys()
    second = next(r for r in records if r.get("request_id") == rid)
    assert second["method"] == "POST" and second["status"] == 201
    assert sum(1 for r in records if r.get("msg") == "request") == 2, "one line per request"


async def test_every_429_is_a_counted_rejection(make_client: ClientFactory) -> None:
    # One message an hour for this end user: the second is refused by the limiter (429).
    client = await make_client(limits={"end_users": {"u1": {"messages_per_hour": 1}}})
    s = await new_session(client, end_user_id="u1")
    headers = {"X-End-User-ID": "u1"}
    first = await client.post(f"/v1/sessions/{s['id']}/messages", json={"content": "one"}, headers=headers)
    assert first.status == 200
    second = await client.post(f"/v1/sessions/{s['id']}/messages", json={"content": "two"}, headers=headers)
    assert second.status == 429
    m = await _scrape(client)
    refused = (
        "sessiond_http_requests_total",
        (("method", "POST"), ("route", "/v1/sessions/{session_id}/messages"), ("status", "429")),
    )
    assert m[refused] == 1
    rejections = {k[1]: v for k, v in m.items() if k[0] == "sessiond_rate_limit_rejections_total"}
    assert rejections == {(("limit", "end_user_messages_per_hour"),): 1}, "counted once, by the limit's name"


async def test_a_guest_over_its_hourly_limit_is_counted_by_that_limit(make_client: ClientFactory) -> None:
    client = await make_client(limits={"guest_messages_per_hour": 2})
    guest = await (await client.post("/v1/guests/sessions", json={"ip": "192.0.2.9"})).json()
    path = f"/v1/sessions/{guest['id']}/messages"
    bearer = {"Authorization": f"Bearer {guest['access_token']}"}
    statuses = []
    async with aiohttp.ClientSession(base_url=str(client.make_url(""))) as browser:  # the guest: no API key
        for text in ("one", "two", "three"):
            async with browser.post(path, json={"content": text}, headers=bearer) as resp:
                statuses.append(resp.status)
    assert statuses == [200, 200, 429]
    m = await _scrape(client)
    assert m[("sessiond_rate_limit_rejections_total", (("limit", "guest_messages_per_hour"),))] == 1
    assert ("sessiond_rate_limit_rejections_total", (("limit", "unnamed"),)) not in m
