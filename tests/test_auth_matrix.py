"""Who may call what: every /v1 route of the app (enumerated from its router, so routes added later
are covered too) against every kind of credential, and nothing of one user or session showing
through to another."""

from __future__ import annotations

import re
import time
from typing import Any

import aiohttp
import jwt
from aiohttp.test_utils import TestClient

from server.appkeys import TOKENS
from server.middleware.auth import REFRESH_ROUTE
from server.table import ROUTES
from tests.conftest import TEST_KEY, ClientFactory

Client = TestClient[Any, Any]

MARKER = "alice-private-7f3a"  # in alice's session title and messages: must never reach anyone else
_PARAM = re.compile(r"\{([^}]*)\}")


def _routes(client: Client) -> list[tuple[str, str]]:
    out = []
    for route in client.app.router.routes():
        canonical = route.resource.canonical if route.resource is not None else ""
        if canonical.startswith("/v1/") and route.method not in ("HEAD", "OPTIONS"):
            out.append((route.method, canonical))
    return sorted(set(out))


def _shape(canonical: str) -> str:
    return _PARAM.sub("{}", canonical)


# What a session token may do in its own session: the routes the table marks token=True.
TOKEN_ROUTES = frozenset((r.method, _PARAM.sub("{}", r.path)) for r in ROUTES if r.token)
# /v1 routes whose credential is the path itself (a share link's token): whoever calls them with
# a token that names nothing gets 404, whatever else they send.
PATH_CREDENTIAL = frozenset((r.method, _PARAM.sub("{}", r.path)) for r in ROUTES if r.public and "{" in r.path)


def _path(canonical: str, session_id: str) -> str:
    return _PARAM.sub(lambda m: session_id if m.group(1) == "session_id" else f"x_{m.group(1)}_missing", canonical)


# Routes that name their session in the body, not the path (the protocol adapters): they are
# held to what a session route is held to.
_BODY_SESSION = {
    "/v1/ai-sdk/chat": lambda sid: {
        "id": sid, "messages": [{"id": "m1", "role": "user", "parts": [{"type": "text", "text": "hi"}]}],
    },
    "/v1/ag-ui": lambda sid: {
        "threadId": sid, "runId": "r1", "messages": [{"id": "m1", "role": "user", "content": "hi"}],
    },
}


def _body(canonical: str, victim: str, other: str) -> Any:
    if canonical == "/v1/sessions/merge":
        return {"session_ids": [victim, other]}  # a body naming someone else's session
    if canonical in _BODY_SESSION:
        return _BODY_SESSION[canonical](victim)
    return {}


async def _call(
    http: aiohttp.ClientSession, method: str, path: str, headers: dict[str, str], body: Any
) -> tuple[int, str, str]:
    async with http.request(method, path, headers=headers, json=body if method != "GET" else None) as resp:
        ctype = resp.headers.get("Content-Type", "")
        if ctype.startswith("text/event-stream"):
            return resp.status, ctype, ""  # a live stream: its status is the answer
        return resp.status, ctype, await resp.text()


async def test_every_route_against_every_credential(make_client: ClientFactory) -> None:
    client = await make_client(simulated={"tokens_per_second": 0, "reply_tokens": 5})
    routes = _routes(client)
    shapes = {_shape(c) for _, c in routes}
    # The routes this test is about are there (and anything added later is enumerated too).
    for must in ("/v1/sessions", "/v1/sessions/{}/messages", "/v1/sessions/{}/stream", REFRESH_ROUTE,
                 "/v1/sessions/{}/tokens", "/v1/guests/sessions", "/v1/guests", "/v1/guests/{}/usage"):
        assert must in shapes, must

    # Alice's session (through a key acting for her), with a token pair; Bob's session with his.
    alice_h = {"X-End-User-ID": "alice"}
    a = await (await client.post("/v1/sessions", json={"title": MARKER, "with_token": True}, headers=alice_h)).json()
    sent = await client.post(f"/v1/sessions/{a['id']}/messages", json={"content": f"hello {MARKER}"})
    assert sent.status == 200
    b = await (await client.post("/v1/sessions", json={"end_user_id": "bob", "with_token": True})).json()
    secret = client.app[TOKENS].secret
    claims = jwt.decode(a["access_token"], options={"verify_signature": False})
    now = int(time.time())
    expired = jwt.encode({**claims, "iat": now - 2000, "exp": now - 1000}, secret, algorithm="HS256")

    # What each kind of caller holds; "key" and "own token" act on a fresh session per call, so
    # what they may do (DELETE...) does not spoil the rest; the others all aim at alice's.
    hostile: dict[str, dict[str, str]] = {
        "none": {},
        "bad key": {"X-API-Key": "sk_nope_nope"},
        "bad client secret": {"X-Client-ID": "key_nope", "X-Client-Secret": "nope"},
        "key + other end user": {"X-API-Key": TEST_KEY, "X-End-User-ID": "bob"},
        "token of another session": {"Authorization": f"Bearer {b['access_token']}"},
        "expired token": {"Authorization": f"Bearer {expired}"},
        "refresh token as access token": {"Authorization": f"Bearer {a['refresh_token']}"},
    }
    failures: list[str] = []
    async with aiohttp.ClientSession(base_url=str(client.make_url(""))) as http:
        for method, canonical in routes:
            shape = _shape(canonical)
            is_session = "{session_id}" in canonical or canonical in _BODY_SESSION
            is_refresh = shape == REFRESH_ROUTE
            by_path = (method, shape) in PATH_CREDENTIAL
            for kind, headers in hostile.items():
                path = _path(canonical, a["id"])
                status, ctype, text = await _call(http, method, path, headers, _body(canonical, a["id"], b["id"]))
                want: set[int] | None
                if by_path:
                    want = {404}
                elif kind in ("none", "bad key", "bad client secret", "expired token"):
                    want = {401}
                elif kind == "refresh token as access token":
                    want = {200} if is_refresh else {401}  # the one place it belongs
                elif kind == "token of another session":
                    want = {401} if is_refresh else {404} if is_session else {403}
                elif is_refresh:
                    want = {401}
                elif is_session or canonical == "/v1/sessions/merge":
                    want = {404}
                elif shape.startswith("/v1/guests"):
                    want = {403}  # guests are managed by a plain key only
                else:
                    want = None  # key + other user elsewhere: authenticated, and nothing may leak
                if want is not None and status not in want:
                    failures.append(f"{kind}: {method} {canonical} -> {status}, want {sorted(want)}: {text[:120]}")
                if want is None and status == 401:
                    failures.append(f"{kind}: {method} {canonical} -> 401, but the key is valid")
                if status >= 400 and not ctype.startswith("application/problem+json"):
                    failures.append(f"{kind}: {method} {canonical} -> {status} is not problem+json")
                if MARKER in text:
                    failures.append(f"{kind}: {method} {canonical} leaked alice's data: {text[:160]}")
                if kind == "refresh token as access token" and is_refresh and status == 200:
                    # That rotation spent it; the next round needs a live one again.
                    fresh = await (await client.post(f"/v1/sessions/{a['id']}/tokens")).json()
                    hostile[kind] = {"Authorization": f"Bearer {fresh['refresh_token']}"}

            # The holders: a key (may do everything) and a token of the very session addressed.
            for kind in ("key", "own token"):
                own = await (await client.post("/v1/sessions", json={"with_token": True})).json()
                path = _path(canonical, own["id"])
                headers = (
                    {"X-API-Key": TEST_KEY} if kind == "key" else {"Authorization": f"Bearer {own['access_token']}"}
                )
                status, ctype, text = await _call(http, method, path, headers, _body(canonical, own["id"], b["id"]))
                allowed = kind == "key" or (method, shape) in TOKEN_ROUTES
                if by_path:
                    if status != 404:  # x_token_missing names no share link, whoever asks
                        failures.append(f"{kind}: {method} {canonical} -> {status}, want 404")
                elif is_refresh:
                    if status != 401:  # neither a key nor an access token is a refresh token
                        failures.append(f"{kind}: {method} {canonical} -> {status}, want 401")
                elif allowed and (status in (401, 403) or f"no session {own['id']}" in text):
                    failures.append(f"{kind}: {method} {canonical} -> {status}, should be allowed: {text[:120]}")
                elif not allowed and status != 403:
                    failures.append(f"{kind}: {method} {canonical} -> {status}, want 403: {text[:120]}")
    assert not failures, "\n".join(failures)

    # None of that changed alice's session.
    after = await (await client.get(f"/v1/sessions/{a['id']}/messages")).json()
    assert after["items"][0]["content"] == f"hello {MARKER}" and after["total"] == 2
    assert (await (await client.get(f"/v1/sessions/{a['id']}")).json())["title"] == MARKER


async def test_acting_for_an_end_user_sees_only_that_users_sessions(client: Client) -> None:
    for user in ("alice", "alice", "bob"):
        await client.post("/v1/sessions", json={"title": f"of {user}"}, headers={"X-End-User-ID": user})
    await client.post("/v1/sessions", json={"title": "of nobody"})
    listed = await (await client.get("/v1/sessions", headers={"X-End-User-ID": "alice"})).json()
    assert sorted(s["title"] for s in listed["items"]) == ["of alice", "of alice"]
    # Asking for another user's sessions by query does not help.
    sneaky = await (await client.get("/v1/sessions?end_user_id=bob", headers={"X-End-User-ID": "alice"})).json()
    assert {s["title"] for s in sneaky["items"]} == {"of alice"}
    # Creating for another user is refused; the plain key sees everything.
    clash = await client.post("/v1/sessions", json={"end_user_id": "bob"}, headers={"X-End-User-ID": "alice"})
    assert clash.status == 422
    everything = await (await client.get("/v1/sessions")).json()
    assert len(everything["items"]) == 4


async def test_client_id_and_secret_are_the_key_split_in_two(client: Client) -> None:
    from server.appkeys import KEYRING, STORE
    from server.auth.keys import create_key

    record, key = await create_key(client.app[STORE], "split")
    _, short, secret = key.split("_")
    async with aiohttp.ClientSession(base_url=str(client.make_url(""))) as http:
        ok = await http.get("/v1/sessions", headers={"X-Client-ID": f"key_{short}", "X-Client-Secret": secret})
        assert ok.status == 200
        altered = secret[:-1] + ("1" if secret[-1] == "0" else "0")
        wrong = await http.get("/v1/sessions", headers={"X-Client-ID": f"key_{short}", "X-Client-Secret": altered})
        assert wrong.status == 401
        assert (await http.get("/v1/sessions", headers={"X-Client-ID": f"key_{short}"})).status == 401
        assert (await http.get("/v1/sessions", headers={"X-API-Key": key})).status == 200
        assert await client.app[KEYRING].revoke(record.id, "2026-01-01T00:00:00Z")
        assert (await http.get("/v1/sessions", headers={"X-API-Key": key})).status == 401
