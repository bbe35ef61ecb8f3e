"""The API, browsable: the OpenAPI document matches the router and the live answers; /docs works offline."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema  # type: ignore[import-untyped]
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from server.app import make_app
from server.appkeys import OPENAPI
from server.openapi import build_spec
from tests.conftest import TEST_KEY, ServerProcess, make_config
from tests.sse import SseEvent, read_until


def _route_keys(app: web.Application) -> set[tuple[str, str]]:
    """(method, path template) of every route of ``app``; HEAD twins of GET left out."""
    keys: set[tuple[str, str]] = set()
    for route in app.router.routes():
        resource = route.resource
        if route.method == "HEAD" or resource is None:
            continue
        path = resource.canonical
        if isinstance(resource, web.StaticResource):
            path = path.rstrip("/") + "/{filename}"
        keys.add((route.method, path))
    return keys


def test_every_route_of_the_app_is_in_the_spec(tmp_path: Path) -> None:
    app = make_app(make_config(tmp_path))
    spec = json.loads(app[OPENAPI])
    assert spec == build_spec()
    in_spec = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    missing = sorted(f"{m} {p}" for m, p in _route_keys(app) - in_spec)
    assert not missing, "routes of the app the spec does not have: " + ", ".join(missing)
    stale = sorted(f"{m} {p}" for m, p in in_spec - _route_keys(app))
    assert not stale, f"the spec names routes the app does not have: {stale}"
    assert _route_keys(app) == in_spec
    assert len(in_spec) >= 20


def test_the_spec_is_openapi_3_1_and_every_schema_is_valid_json_schema() -> None:
    spec = build_spec()
    assert spec["openapi"] == "3.1.0"
    for name, schema in spec["components"]["schemas"].items():
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise AssertionError(f"components/schemas/{name}: {exc.message}") from None
    ids = [op["operationId"] for ops in spec["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids)), "operationIds must be unique"
    send = spec["paths"]["/v1/sessions/{session_id}/messages"]["post"]
    assert send["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SendMessageBody"
    }
    assert set(send["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    assert spec["paths"]["/healthz"]["get"]["security"] == []


class _Spec:
    """Validates live answers against the document's schemas; remembers what it saw."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.seen: set[tuple[str, str]] = set()
        self._templates: list[tuple[re.Pattern[str], str]] = [
            (re.compile("^" + re.sub(r"{\w+}", "[^/]+", path) + "$"), path) for path in spec["paths"]
        ]

    def template(self, path: str) -> str:
        # Literal paths win over templated ones (/v1/sessions/import vs /v1/sessions/{session_id}).
        if path in self.spec["paths"]:
            return path
        matches: list[str] = [t for rx, t in self._templates if rx.match(path)]
        assert matches, f"{path} is in no path of the spec"
        return min(matches, key=lambda t: t.count("{"))

    def validate(self, method: str, path: str, status: int, content_type: str, body: Any) -> None:
        template = self.template(path.split("?")[0])
        responses = self.spec["paths"][template][method.lower()]["responses"]
        key = str(status) if str(status) in responses else f"{status // 100}XX"
        assert key in responses, f"{method} {template} answered {status}, which the spec does not list"
        media = content_type.split(";")[0]
        assert media in responses[key]["content"], f"{method} {template} {status}: {media} not in the spec"
        pointer = "/".join(
            ["#", "paths", template.replace("~", "~0").replace("/", "~1"), method.lower(), "responses", key,
             "content", media.replace("/", "~1"), "schema"]
        )
        jsonschema.Draft202012Validator({**self.spec, "$ref": pointer}).validate(body)
        self.seen.add((method.upper(), template))

    def validate_events(self, events: list[SseEvent]) -> None:
        stream_event = {**self.spec, "$ref": "#/components/schemas/StreamEvent"}
        for ev in events:
            assert ev.event == ev.data["type"]
            jsonschema.Draft202012Validator(stream_event).validate(ev.data)


async def _call(c: TestClient[Any, Any], spec: _Spec, method: str, path: str, **kw: Any) -> Any:
    resp = await c.request(method, path, **kw)
    if resp.status == 204:
        assert "204" in spec.spec["paths"][spec.template(path)][method.lower()]["responses"]
        spec.seen.add((method, spec.template(path)))
        return None
    body = await resp.json(content_type=None)
    spec.validate(method, path, resp.status, resp.headers["Content-Type"], body)
    return body


async def test_live_answers_match_the_spec(client: TestClient[Any, Any]) -> None:
    spec = _Spec(await (await client.get("/openapi.json")).json())
    s = await _call(client, spec, "POST", "/v1/sessions", json={"title": "t", "metadata": {"k": "v"}})
    sid = s["id"]
    base = f"/v1/sessions/{sid}"
    sent = await _call(client, spec, "POST", f"{base}/messages", json={"content": "hello"},
                       headers={"Idempotency-Key": "openapi-1"})
    await _call(client, spec, "GET", "/v1/sessions?limit=5")
    await _call(client, spec, "GET", "/v1/sessions/search?q=hello")
    await _call(client, spec, "GET", base)
    await _call(client, spec, "PATCH", base, json={"title": "t2"})
    await _call(client, spec, "GET", f"{base}/metadata")
    await _call(client, spec, "POST", f"{base}/prepare")
    await _call(client, spec, "GET", f"{base}/messages")
    tree = await _call(client, spec, "GET", f"{base}/tree")
    user_id = sent["message"]["parent_id"]
    regen = await _call(client, spec, "POST", f"{base}/messages/{sent['message']['id']}/regenerate", json={})
    await _call(client, spec, "POST", f"{base}/messages/{user_id}/edit", json={"content": "hello again"})
    await _call(client, spec, "POST", f"{base}/navigate", json={"message_id": regen["message"]["id"]})
    cps = await _call(client, spec, "GET", f"{base}/checkpoints")
    cp = cps["items"][0]["id"]
    await _call(client, spec, "POST", f"{base}/checkpoints/{cp}/restore", json={})
    await _call(client, spec, "POST", f"{base}/checkpoints/{cp}/restore", json={"hint": "shorter"})
    await _call(client, spec, "POST", f"{base}/cancel")  # nothing running: a problem, also in the spec
    exported = await _call(client, spec, "GET", f"{base}/export")
    await _call(client, spec, "POST", "/v1/sessions/import?new_id=true", json=exported)
    copy = await _call(client, spec, "POST", f"{base}/copy", json={"title": "copy"})
    await _call(client, spec, "POST", f"{base}/fork", json={"message_id": user_id})
    await _call(client, spec, "POST", "/v1/sessions/merge", json={"session_ids": [sid, copy["id"]]})
    # Tokens, guests, usage.
    pair = await _call(client, spec, "POST", f"{base}/tokens")
    refresh = {"Authorization": f"Bearer {pair['refresh_token']}"}
    await _call(client, spec, "POST", "/v1/tokens/refresh", headers=refresh)
    guest = await _call(client, spec, "POST", "/v1/guests/sessions", json={"ip": "192.0.2.7", "fingerprint": "fp1"})
    await _call(client, spec, "GET", "/v1/guests?ip=192.0.2.7")
    await _call(client, spec, "GET", f"/v1/guests/{guest['guest']['id']}/usage")
    await _call(client, spec, "GET", "/v1/usage?end_user_id=u1")
    # Agents, providers, tools.
    agent = await _call(client, spec, "POST", "/v1/agents", json={"name": "helper", "system_prompt": "Be brief."})
    await _call(client, spec, "GET", "/v1/agents")
    await _call(client, spec, "GET", f"/v1/agents/{agent['id']}")
    await _call(client, spec, "PATCH", f"/v1/agents/{agent['id']}", json={"name": "helper 2"})
    await _call(client, spec, "DELETE", f"/v1/agents/{agent['id']}")
    await _call(client, spec, "GET", "/v1/providers")
    tools = await _call(client, spec, "GET", "/v1/tools")
    await _call(client, spec, "GET", f"{base}/tools")
    await _call(client, spec, "PUT", f"{base}/tools", json={"tools": [t["name"] for t in tools["items"]][:1]})
    # Documents: multipart uploads.
    form = aiohttp.FormData()
    form.add_field("file", b"sessiond keeps every event.", filename="notes.txt", content_type="text/plain")
    doc = await _call(client, spec, "POST", "/v1/documents", data=form)
    await _call(client, spec, "GET", "/v1/documents")
    await _call(client, spec, "GET", f"/v1/documents/{doc['id']}")
    await _call(client, spec, "POST", f"{base}/documents", json={"document_ids": [doc["id"]]})
    form = aiohttp.FormData()
    form.add_field("file", b"# Title\n\ntext", filename="two.md", content_type="text/markdown")
    await _call(client, spec, "POST", f"{base}/upload", data=form)
    await _call(client, spec, "GET", f"{base}/documents")
    await _call(client, spec, "DELETE", f"{base}/documents/{doc['id']}")
    await _call(client, spec, "DELETE", f"/v1/documents/{doc['id']}")
    # Share links: made, listed, opened, continued as a copy, revoked.
    share = await _call(client, spec, "POST", f"{base}/shares", json={"expires_in": 3600})
    await _call(client, spec, "GET", f"{base}/shares")
    await _call(client, spec, "GET", f"/v1/shares/{share['token']}?format=html")
    await _call(client, spec, "POST", f"/v1/shares/{share['token']}/fork", json={})
    await _call(client, spec, "DELETE", f"{base}/shares/{share['id']}")
    await _call(client, spec, "GET", f"/v1/shares/{share['token']}")  # 404 problem
    await _call(client, spec, "GET", "/v1/sessions/ses_nope")  # 404 problem
    await _call(client, spec, "POST", f"{base}/messages", json={"content": "x", "bogus": 1})  # 422 problem
    await _call(client, spec, "GET", "/healthz")
    await _call(client, spec, "GET", "/readyz")
    await _call(client, spec, "GET", "/openapi.json")
    await _call(client, spec, "GET", "/v1/webhooks/deliveries", params={"status": "failed"})
    assert len(tree["nodes"]) == 2

    # Tool calls that wait: a client tool's result (its events are StreamEvents of the spec), and
    # approve / deny of a call that does not wait (404 problems).
    resp = await client.post(
        f"{base}/messages", json={"content": "/tool pick", "stream": True, "client_tools": [{"name": "pick"}]}
    )
    waiting = await read_until(resp, "tool.call")
    await _call(client, spec, "POST", f"{base}/tool-calls/{waiting[-1].data['call_id']}/result", json={"output": "red"})
    spec.validate_events([*waiting, *await read_until(resp, "task.completed")])
    resp.close()
    await _call(client, spec, "POST", f"{base}/tool-calls/call_nope/approve")
    await _call(client, spec, "POST", f"{base}/tool-calls/call_nope/deny", json={"reason": "no"})

    # Streams: every event's data is a StreamEvent of the spec, named by its SSE event type.
    resp = await client.post(f"{base}/messages", json={"content": "stream it", "stream": True})
    assert resp.content_type in spec.spec["paths"]["/v1/sessions/{session_id}/messages"]["post"]["responses"][
        "200"]["content"]
    events = await read_until(resp, "task.completed")
    spec.validate_events(events)
    again = await client.get(f"{base}/stream", headers={"Last-Event-ID": str(events[0].id)})
    replay = await read_until(again, "task.completed")
    again.close()
    spec.validate_events(replay)
    spec.seen.add(("GET", "/v1/sessions/{session_id}/stream"))

    # The protocol adapters (their streams are tested in their own files).
    await _call(client, spec, "GET", f"/v1/ai-sdk/chat/{sid}/messages")
    await _call(client, spec, "POST", f"/v1/ai-sdk/chat/{sid}/stop")
    await _call(client, spec, "GET", f"/v1/ai-sdk/chat/{sid}/stream")  # nothing runs: 204
    oa = "/openai/v1"
    resp = await _call(client, spec, "POST", f"{oa}/responses", json={"input": "hi", "conversation": sid})
    await _call(client, spec, "GET", f"{oa}/responses/{resp['id']}")
    await _call(client, spec, "GET", f"{oa}/responses/{resp['id']}/input_items")
    await _call(client, spec, "POST", f"{oa}/responses/{resp['id']}/cancel")
    await _call(client, spec, "DELETE", f"{oa}/responses/{resp['id']}")  # not supported: its error shape
    conv = await _call(client, spec, "POST", f"{oa}/conversations", json={"metadata": {"k": "v"}})
    await _call(client, spec, "GET", f"{oa}/conversations")
    await _call(client, spec, "GET", f"{oa}/conversations/{conv['id']}")
    await _call(client, spec, "POST", f"{oa}/conversations/{conv['id']}", json={"metadata": {}})
    items = await _call(client, spec, "GET", f"{oa}/conversations/{sid}/items")
    await _call(client, spec, "GET", f"{oa}/conversations/{sid}/items/{items['data'][0]['id']}")
    await _call(client, spec, "POST", f"{oa}/conversations/{sid}/items", json={"items": []})
    await _call(client, spec, "DELETE", f"{oa}/conversations/{sid}/items/{items['data'][0]['id']}")
    await _call(client, spec, "DELETE", f"{oa}/conversations/{conv['id']}")

    await _call(client, spec, "DELETE", base)

    json_ops = {
        (m.upper(), p)
        for p, ops in spec.spec["paths"].items()
        for m, op in ops.items()
        if any("application/json" in r.get("content", {}) for r in op["responses"].values() if r is not None)
    }
    not_seen = json_ops - spec.seen - {("GET", "/metrics"), ("GET", "/docs"), ("GET", "/docs/assets/{name}")}
    assert not not_seen, f"operations this test does not call yet (add a line above): {sorted(not_seen)}"


async def test_docs_page_renders_the_spec_with_local_assets(client: TestClient[Any, Any]) -> None:
    page = await client.get("/docs")
    assert page.status == 200
    assert page.content_type == "text/html"
    html = await page.text()
    assert "SwaggerUIBundle" in html
    assert 'url: "openapi.json"' in html
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert refs, "the page loads its assets"
    assert not [r for r in refs if "//" in r], "no asset may come from another host (no CDN)"
    for ref in refs:
        resp = await client.get("/" + ref)
        assert resp.status == 200, ref
        assert len(await resp.read()) > 100, ref
    bundle = await client.get("/docs/assets/swagger-ui-bundle.js")
    # Swagger UI 5 renders OpenAPI 3.1 (4.x cannot).
    assert b"3.1" in await bundle.read()
    assert (await client.get("/docs/assets/..%2fconfig.toml")).status == 404


# -- schemathesis -------------------------------------------------------------------------

# The checks about the contract: no server error, and every answer (status, media type, headers,
# body) as the document says. Left out: positive_data_acceptance and negative_data_rejection (the
# server refuses some schema-valid data on its meaning, e.g. an empty message is 422, and is
# lenient with some malformed values, e.g. `?queue=null` reads as false) and unsupported_method
# (a 405 rendered as problem+json carries no Allow header yet).
_CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,"
    "response_schema_conformance,use_after_free,ensure_resource_availability,ignored_auth"
)

# Operations with a server error schemathesis found and that is not fixed yet; each one leaves
# this list with its fix.
# - POST /v1/sessions/import: a checkpoint naming a message the document does not have raises
#   KeyError in actors/export.py remap_ids (500) instead of answering 422.
# - POST /v1/sessions/merge: an empty string in session_ids raises KeyError in
#   server/routes/common.py session_actor (`session_id or request.match_info[...]`): 500, not 404.
# - POST /v1/documents and POST /v1/sessions/{session_id}/upload: a multipart part whose header
#   is not valid HTTP raises aiohttp's InvalidHeader in server/routes/documents.py _upload (500),
#   which "the multipart body is malformed" (422) does not catch.
KNOWN_5XX: tuple[str, ...] = ()


@pytest.mark.slow
def test_schemathesis_finds_no_server_error(server_process: Any, tmp_path: Path) -> None:
    server: ServerProcess = server_process()
    url = server.start()
    cmd = [
        sys.executable, "-c", "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())",
        "run", f"{url}/openapi.json",
        "--header", f"X-API-Key: {TEST_KEY}",
        "--checks", _CHECKS,
        "--max-examples", "20",
        "--seed", "20261122",
        "--generation-database", "none",
        "--request-timeout", "20",
        # The live stream stays open for as long as the client does, by design: tested above.
        "--exclude-path", "/v1/sessions/{session_id}/stream",
        *[arg for path in KNOWN_5XX for arg in ("--exclude-path", path)],
        "--workers", "1",
        "--no-color",
    ]
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    out = run.stdout + run.stderr
    errors = "\n".join(line for line in server.output if '"level":"error"' in line and "Probe-Null" not in line)
    assert run.returncode == 0, out[-20000:] + "\n\nserver errors:\n" + errors[-20000:]
    assert "Tested:" in out
    tested = int(re.search(r"Tested: (\d+)", out).group(1))  # type: ignore[union-attr]
    assert tested >= 20, out[-3000:]
    assert server.proc is not None and server.proc.poll() is None, "the server survived the run"
