"""Hostile documents: text that expands without bound, uploads that dodge the limits, and a
guest's uploads read by strangers.

A PDF of a few kilobytes can hold a content stream that inflates to megabytes of text, or a page
tree of thousands of pages: its text is extracted in a child process within page, character,
CPU and wall-clock limits, killed when the client leaves. Uploads count against the guest's and
the end user's limits. Every document has an owner; only an operator shares one.
"""

from __future__ import annotations

import asyncio
import io
import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient

from server.appkeys import LIBRARY
from tests.conftest import ClientFactory, ServerProcess, new_session

Client = TestClient[Any, Any]
SECRET = "The guest's shopping list: eggs, flour, a crowbar."
U1 = {"X-End-User-ID": "u1"}
LINE = b"(All work and no play makes a dull document.) Tj "


def pdf(content: bytes, *, pages: int = 1) -> bytes:
    """A PDF of ``pages`` pages all showing one compressed content stream."""
    stream = zlib.compress(content, 9)
    kids = b" ".join(b"%d 0 R" % (5 + i) for i in range(pages))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [" + kids + b"] /Count %d >>" % pages,
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    page = (
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 3 0 R"
        b" /Resources << /Font << /F1 4 0 R >> >> >>"
    )
    objects += [page] * pages
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def repeating(times: int) -> bytes:
    """A tiny font repeating one line ``times`` times: compresses to almost nothing."""
    return b"BT /F1 1 Tf " + LINE * times + b"ET"


def form(data: bytes, filename: str, content_type: str = "application/octet-stream") -> aiohttp.FormData:
    f = aiohttp.FormData()
    f.add_field("file", io.BytesIO(data), filename=filename, content_type=content_type)
    return f


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


async def _problem(resp: aiohttp.ClientResponse, status: int) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    return await resp.json(content_type=None)  # type: ignore[no-any-return]


async def _nothing_kept(client: Client, tmp_path: Path) -> None:
    assert (await (await client.get("/v1/documents")).json())["items"] == []
    assert files_under(tmp_path / "data" / "documents") == []


# -- bounded text ----------------------------------------------------------------------------


async def test_a_pdf_whose_text_expands_is_refused(make_client: ClientFactory, tmp_path: Path) -> None:
    client = await make_client(documents={"max_chars": 50_000})
    bomb = pdf(repeating(20_000))  # 860 000 characters of text in a few kilobytes
    assert len(bomb) < 8_000
    problem = await _problem(await client.post("/v1/documents", data=form(bomb, "bomb.pdf")), 413)
    assert "50000 characters" in problem["detail"] and "bomb.pdf" in problem["detail"]
    await _nothing_kept(client, tmp_path)
    # Within the limit, the same kind of file is taken.
    ok = await client.post("/v1/documents", data=form(pdf(repeating(100)), "small.pdf"))
    assert ok.status == 201 and (await ok.json())["chars"] > 4000


async def test_a_pdf_with_too_many_pages_is_refused(make_client: ClientFactory, tmp_path: Path) -> None:
    client = await make_client(documents={"max_pages": 200})
    many = pdf(b"BT /F1 12 Tf (hi) Tj ET", pages=3000)
    problem = await _problem(await client.post("/v1/documents", data=form(many, "pages.pdf")), 413)
    assert "3000 pages" in problem["detail"] and "200" in problem["detail"]
    await _nothing_kept(client, tmp_path)


async def test_a_pdf_that_takes_too_much_cpu_memory_or_time_is_stopped(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    # Parsing this content stream alone takes a minute of CPU: the limits stop it within seconds.
    slow = pdf(repeating(200_000))
    loop = asyncio.get_running_loop()
    for limits, says in (
        ({"extract_cpu_seconds": 1, "extract_seconds": 120.0}, "more than 1 s of CPU"),
        ({"extract_cpu_seconds": 120, "extract_seconds": 1.0}, "longer than 1 s"),
        ({"extract_memory_bytes": 80 << 20, "extract_seconds": 120.0}, "more than 80 MiB of memory"),
    ):
        client = await make_client(documents={"max_chars": 0, **limits})
        started = loop.time()
        problem = await _problem(await client.post("/v1/documents", data=form(slow, "slow.pdf")), 422)
        assert loop.time() - started < 20, "stopped at its limit, not when it was done"
        assert says in problem["detail"], problem
        await _nothing_kept(client, tmp_path)


def _extractors(parent: int | None = None) -> list[int]:
    """The text extractors the server under test (this process, or ``parent``) runs now."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes()
            status = Path(entry.path, "status").read_text()
        except OSError:
            continue
        ppid = next((line.split()[1] for line in status.splitlines() if line.startswith("PPid:")), "")
        if b"actors.agent.documents.extract" in cmdline and ppid == str(parent or os.getpid()):
            found.append(int(entry.name))
    return found


async def _exited(pid: int) -> None:
    """Returns once process ``pid`` has exited (its pidfd becomes readable)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.add_reader(fd, done.set_result, None)
    try:
        await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def test_the_extractor_is_killed_when_the_client_leaves(make_client: ClientFactory, tmp_path: Path) -> None:
    client = await make_client(documents={"max_chars": 0, "extract_cpu_seconds": 300, "extract_seconds": 300.0})
    slow = pdf(repeating(200_000))
    sending = asyncio.ensure_future(client.post("/v1/documents", data=form(slow, "slow.pdf")))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while not (pids := _extractors()):  # the server starts it once the upload is in
        assert loop.time() < deadline and not sending.done(), "no extractor started"
        await asyncio.sleep(0.05)
    sending.cancel()  # the client gives up: its connection closes
    await asyncio.gather(sending, return_exceptions=True)
    await asyncio.wait_for(asyncio.gather(*map(_exited, pids)), 10)  # far sooner than its 300 s
    assert (await (await client.get("/v1/documents")).json())["items"] == []


async def test_uploads_past_max_extractions_are_refused_at_once(make_client: ClientFactory) -> None:
    """Extractions are bounded server-wide: past ``max_extractions`` the next upload gets 503
    with Retry-After, keeping nothing; once one ends, uploads are taken again."""
    client = await make_client(
        documents={"max_extractions": 1, "max_chars": 0, "extract_cpu_seconds": 300, "extract_seconds": 300.0}
    )
    library = client.app[LIBRARY]
    # An upload that arrives at a trickle holds no extraction: others are read meanwhile.
    _reader, trickle = await asyncio.open_connection(client.server.host, client.server.port)
    trickle.write(
        b"POST /v1/documents HTTP/1.1\r\nHost: x\r\nX-API-Key: " + client.session.headers["X-API-Key"].encode()
        + b"\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 10000000\r\n\r\n--b\r\n"
    )
    await trickle.drain()
    first = await client.post("/v1/documents", data=form(b"first note", "first.txt"))
    assert first.status == 201, await first.text()
    sending = asyncio.ensure_future(client.post("/v1/documents", data=form(pdf(repeating(200_000)), "slow.pdf")))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while not (pids := _extractors()):  # the slow one is being extracted
        assert loop.time() < deadline and not sending.done(), "no extractor started"
        await asyncio.sleep(0.05)
    assert library.extractions == 1
    refused = await client.post("/v1/documents", data=form(b"a note", "note.txt"))
    assert refused.status == 503 and "Retry-After" in refused.headers, await refused.text()
    assert (await refused.json())["code"] == "overloaded"
    sending.cancel()
    await asyncio.gather(sending, return_exceptions=True)
    await asyncio.wait_for(asyncio.gather(*map(_exited, pids)), 10)
    while library.extractions:  # the handler's end, after its extractor's
        assert loop.time() < deadline
        await asyncio.sleep(0)
    taken = await client.post("/v1/documents", data=form(b"a note", "note.txt"))
    assert taken.status == 201, await taken.text()
    names = sorted(d["name"] for d in (await (await client.get("/v1/documents")).json())["items"])
    assert names == ["first.txt", "note.txt"]
    trickle.close()


async def test_the_served_server_bounds_and_kills_its_extractors(
    server_process: Callable[..., ServerProcess], http: aiohttp.ClientSession
) -> None:
    """``sessiond serve`` itself (uvloop, handlers cancelled when their client leaves), with
    the bounds set from the environment."""
    server = server_process(
        {"SESSIOND_DOCUMENTS_MAX_CHARS": "50000", "SESSIOND_DOCUMENTS_EXTRACT_CPU_SECONDS": "300",
         "SESSIOND_DOCUMENTS_EXTRACT_SECONDS": "300"}
    )
    url = server.start()
    assert server.proc is not None
    resp = await http.post(f"{url}/v1/documents", data=form(pdf(repeating(20_000)), "bomb.pdf"))
    assert resp.status == 413 and "50000 characters" in (await resp.json(content_type=None))["detail"]

    sending = asyncio.ensure_future(http.post(f"{url}/v1/documents", data=form(pdf(repeating(200_000)), "slow.pdf")))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while not (pids := _extractors(server.proc.pid)):
        assert loop.time() < deadline and not sending.done(), "no extractor started"
        await asyncio.sleep(0.05)
    sending.cancel()
    await asyncio.gather(sending, return_exceptions=True)
    await asyncio.wait_for(asyncio.gather(*map(_exited, pids)), 10)
    listed = await (await http.get(f"{url}/v1/documents")).json()
    assert listed["items"] == []


# -- limits ----------------------------------------------------------------------------------


async def _guest(client: Client) -> dict[str, Any]:
    resp = await client.post("/v1/guests/sessions", json={"ip": "203.0.113.9", "fingerprint": "fp-guest"})
    assert resp.status == 201, await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


async def test_uploads_count_against_the_guest_and_end_user_limits(make_client: ClientFactory) -> None:
    client = await make_client(
        limits={
            "guest_messages_per_hour": 3,
            "guest_tokens_per_day": 100_000,
            "end_users": {"u1": {"messages_per_hour": 2}},
        }
    )
    g = await _guest(client)
    bearer = {"Authorization": f"Bearer {g['access_token']}"}
    path = f"/v1/sessions/{g['id']}/upload"
    async with aiohttp.ClientSession(str(client.make_url(""))) as browser:  # the guest's token only
        # A refused upload is taken back: it never counts.
        refused = await browser.post(path, data=form(b"\x00\x01", "x.exe"), headers=bearer)
        assert refused.status == 415
        for i in range(3):
            ok = await browser.post(path, data=form(f"note {i}".encode(), f"n{i}.txt"), headers=bearer)
            assert ok.status == 201, await ok.text()
        over = await browser.post(path, data=form(b"one more", "more.txt"), headers=bearer)
        assert over.status == 429 and "Retry-After" in over.headers
        said = await browser.post(f"/v1/sessions/{g['id']}/messages", json={"content": "hi"}, headers=bearer)
        assert said.status == 429, "the uploads used the guest's messages"
    usage = await (await client.get(f"/v1/guests/{g['guest']['id']}/usage")).json()
    assert usage["messages_this_hour"] == 3

    for i in range(2):
        assert (await client.post("/v1/documents", data=form(b"u1 notes", f"u{i}.txt"), headers=U1)).status == 201
    assert (await client.post("/v1/documents", data=form(b"u1 notes", "u2.txt"), headers=U1)).status == 429


async def test_an_upload_whose_text_cannot_be_read_still_counts(make_client: ClientFactory) -> None:
    """Refused before its text is read, an upload is taken back; once the extractor ran, it
    counts, readable or not: a guest cannot keep the extractors busy for free."""
    client = await make_client(limits={"guest_messages_per_hour": 2, "guest_tokens_per_day": 100_000})
    g = await _guest(client)
    bearer = {"Authorization": f"Bearer {g['access_token']}"}
    path = f"/v1/sessions/{g['id']}/upload"
    async with aiohttp.ClientSession(str(client.make_url(""))) as browser:
        for _ in range(2):
            broken = await browser.post(path, data=form(b"%PDF-1.4\nnot a pdf at all", "broken.pdf"), headers=bearer)
            assert broken.status == 422 and "cannot read" in (await broken.json())["detail"], await broken.text()
        over = await browser.post(path, data=form(b"fine", "fine.txt"), headers=bearer)
        assert over.status == 429, await over.text()
    usage = await (await client.get(f"/v1/guests/{g['guest']['id']}/usage")).json()
    assert usage["messages_this_hour"] == 2


async def test_a_guest_text_counts_as_tokens(make_client: ClientFactory) -> None:
    client = await make_client(limits={"guest_tokens_per_day": 1000})
    g = await _guest(client)
    bearer = {"Authorization": f"Bearer {g['access_token']}"}
    async with aiohttp.ClientSession(str(client.make_url(""))) as browser:
        big = await browser.post(f"/v1/sessions/{g['id']}/upload", data=form(b"word " * 2000, "w.txt"), headers=bearer)
        assert big.status == 201  # 10 000 characters: 2 500 tokens, past the day's 1 000
        again = await browser.post(f"/v1/sessions/{g['id']}/upload", data=form(b"x", "x.txt"), headers=bearer)
        assert again.status == 429
    usage = await (await client.get(f"/v1/guests/{g['guest']['id']}/usage")).json()
    assert usage["tokens_today"] == 2500


# -- owners ----------------------------------------------------------------------------------


async def test_a_guest_upload_is_not_shared(client: Client) -> None:
    g = await _guest(client)
    bearer = {"Authorization": f"Bearer {g['access_token']}"}
    async with aiohttp.ClientSession(str(client.make_url(""))) as browser:
        upload = form(SECRET.encode(), "list.txt")
        resp = await browser.post(f"/v1/sessions/{g['id']}/upload", data=upload, headers=bearer)
        assert resp.status == 201, await resp.text()
        doc = await resp.json()
        linked = await (await browser.get(f"/v1/sessions/{g['id']}/documents", headers=bearer)).json()
        assert [d["id"] for d in linked["items"]] == [doc["id"]], "the guest's own session has it"

    # An unrelated end user can neither list, read, link, import, nor so search it.
    listed = await (await client.get("/v1/documents", headers=U1)).json()
    assert doc["id"] not in {d["id"] for d in listed["items"]}
    assert (await client.get(f"/v1/documents/{doc['id']}", headers=U1)).status == 404
    mine = await client.post("/v1/sessions", json={}, headers=U1)
    sid = (await mine.json())["id"]
    link = await client.post(f"/v1/sessions/{sid}/documents", json={"document_ids": [doc["id"]]}, headers=U1)
    assert link.status == 404
    exported = await (await client.get(f"/v1/sessions/{sid}/export")).json()
    exported["documents"] = [doc["id"]]
    assert (await client.post("/v1/sessions/import?new_id=true", json=exported, headers=U1)).status == 422
    assert (await (await client.get(f"/v1/sessions/{sid}/documents", headers=U1)).json())["items"] == []
    assert (await client.delete(f"/v1/documents/{doc['id']}", headers=U1)).status == 404
    assert doc["guest_id"] == g["guest"]["id"] and doc["shared"] is False

    # A document uploaded into a plain session belongs to it alone too.
    plain = await new_session(client)
    into = await client.post(f"/v1/sessions/{plain['id']}/upload", data=form(b"plain session notes", "p.txt"))
    inside = await into.json()
    assert inside["session_id"] == plain["id"] and inside["shared"] is False
    assert (await client.get(f"/v1/documents/{inside['id']}", headers=U1)).status == 404

    # The operator sees everything, and sharing stays its explicit choice.
    everything = await (await client.get("/v1/documents")).json()
    assert {doc["id"], inside["id"]} <= {d["id"] for d in everything["items"]}
    shared = await (await client.post("/v1/documents", data=form(b"for everyone", "all.txt"))).json()
    assert shared["shared"] is True
    assert (await client.get(f"/v1/documents/{shared['id']}", headers=U1)).status == 200
