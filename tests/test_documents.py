"""Documents: upload (PDF, markdown, ...), link, search, limits, names, visibility, context."""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from actors.agent.documents.extract import extract_text
from actors.agent.documents.library import (
    ChunkIndex,
    bm25,
    chunk_text,
    safe_name,
    select_within_budget,
    terms,
)
from actors.agent.tokens import TokenCounter
from tests.conftest import ClientFactory, new_session
from tests.fake_models import FakeOpenAI, converse

PDF_SENTENCE = "The lighthouse keeper counts the ships at dawn."
MD_SENTENCE = "Every lighthouse on this coast was painted red in 1921."


def make_pdf(*lines: str) -> bytes:
    """A minimal one-page PDF, written by hand, whose text is ``lines``."""
    ops = " ".join(f"({line}) Tj 0 -16 Td" for line in lines)
    content = f"BT /F1 12 Tf 72 720 Td {ops} ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
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


def form(data: bytes, filename: str, content_type: str = "application/octet-stream", **fields: str) -> aiohttp.FormData:
    f = aiohttp.FormData()
    for name, value in fields.items():
        f.add_field(name, value)
    # A file object, not bytes: aiohttp warns that large bytes would block the loop.
    f.add_field("file", io.BytesIO(data), filename=filename, content_type=content_type)
    return f


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


async def upload(client: TestClient[Any, Any], data: bytes, filename: str, **kw: Any) -> dict[str, Any]:
    headers = kw.pop("headers", None)
    resp = await client.post("/v1/documents", data=form(data, filename, **kw), headers=headers)
    assert resp.status == 201, await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


async def test_a_pdf_and_a_markdown_file_are_linked_and_searched(client: TestClient[Any, Any]) -> None:
    pdf_bytes = make_pdf("Harbour log, volume two.", PDF_SENTENCE)
    pdf = await upload(client, pdf_bytes, "harbour.pdf", content_type="application/pdf")
    assert pdf["id"].startswith("doc_") and pdf["name"] == "harbour.pdf"
    assert pdf["content_type"] == "application/pdf" and pdf["size"] > 0 and pdf["chars"] > 0

    s = await new_session(client, tools=["search_documents"])
    notes = f"# Coast notes\n\nThe tide tables are printed weekly.\n\n{MD_SENTENCE}\n"
    resp = await client.post(f"/v1/sessions/{s['id']}/upload", data=form(notes.encode(), "notes.md"))
    assert resp.status == 201, await resp.text()
    md = await resp.json()
    assert md["content_type"] == "text/markdown"

    resp = await client.post(f"/v1/sessions/{s['id']}/documents", json={"document_ids": [pdf["id"]]})
    assert resp.status == 200
    linked = (await (await client.get(f"/v1/sessions/{s['id']}/documents")).json())["items"]
    assert {d["id"] for d in linked} == {pdf["id"], md["id"]}

    events = await converse(client, s["id"], '/tool search_documents {"query": "lighthouse"}')
    output = next(e.data for e in events if e.event == "tool.result")["output"]
    assert PDF_SENTENCE in output and "[harbour.pdf]" in output
    assert MD_SENTENCE in output and "[notes.md]" in output
    events = await converse(client, s["id"], '/tool search_documents {"query": "tide tables", "limit": 1}')
    output = next(e.data for e in events if e.event == "tool.result")["output"]
    assert "tide tables are printed weekly" in output and PDF_SENTENCE not in output

    exported = await (await client.get(f"/v1/sessions/{s['id']}/export")).json()
    assert set(exported["documents"]) == {pdf["id"], md["id"]}

    assert (await client.delete(f"/v1/sessions/{s['id']}/documents/{pdf['id']}")).status == 204
    linked = (await (await client.get(f"/v1/sessions/{s['id']}/documents")).json())["items"]
    assert [d["id"] for d in linked] == [md["id"]]
    assert (await client.delete(f"/v1/sessions/{s['id']}/documents/{pdf['id']}")).status == 404
    events = await converse(client, s["id"], '/tool search_documents {"query": "lighthouse keeper"}')
    output = next(e.data for e in events if e.event == "tool.result")["output"]
    assert PDF_SENTENCE not in output, "an unlinked document is not searched"


async def test_an_upload_over_the_limit_is_refused_and_leaves_nothing(
    client: TestClient[Any, Any], tmp_path: Path
) -> None:
    big = b"x" * (50 * 1024 * 1024)
    resp = await client.post("/v1/documents", data=form(big, "big.txt"))
    assert resp.status == 413
    assert (await resp.json())["code"] == "payload_too_large"
    assert files_under(tmp_path / "data" / "documents") == []
    assert (await (await client.get("/v1/documents")).json())["items"] == []


async def test_a_streamed_upload_is_cut_at_the_limit_and_leaves_nothing(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    # No Content-Length (chunked): the server counts the bytes as they arrive.
    client = await make_client(documents={"max_bytes": 5 * 1024 * 1024})
    boundary = "sessiondtestboundary"

    async def body() -> AsyncIterator[bytes]:
        yield (
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.txt\"\r\n"
            "Content-Type: text/plain\r\n\r\n"
        ).encode()
        block = b"y" * (1024 * 1024)
        for _ in range(50):
            yield block
        yield f"\r\n--{boundary}--\r\n".encode()

    resp = await client.post(
        "/v1/documents", data=body(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    assert resp.status == 413
    assert files_under(tmp_path / "data" / "documents") == []


async def test_a_dangerous_file_name_is_harmless(client: TestClient[Any, Any], tmp_path: Path) -> None:
    data = b"root:x:0:0:root:/root:/bin/bash\n"
    doc = await upload(client, data, "../../etc/passwd", content_type="text/plain")
    assert doc["name"] == "passwd"
    stored = files_under(tmp_path / "data" / "documents")
    assert len(stored) == 1
    assert stored[0].name == doc["sha256"] and stored[0].parent.name == doc["sha256"][:2]
    assert stored[0].read_bytes() == data
    assert not (tmp_path / "etc").exists() and not (tmp_path / "data" / "etc").exists()
    doc = await upload(client, b"hello", "..\\..\\windows\\win.ini.txt")
    assert doc["name"] == "win.ini.txt"


async def test_refused_uploads(client: TestClient[Any, Any], tmp_path: Path) -> None:
    resp = await client.post("/v1/documents", data=form(b"MZ\x90\x00", "tool.exe"))
    assert resp.status == 415
    resp = await client.post("/v1/documents", json={"file": "x"})
    assert resp.status == 415
    f = aiohttp.FormData(default_to_multipart=True)
    f.add_field("note", "hi")
    assert (await client.post("/v1/documents", data=f)).status == 422
    resp = await client.post("/v1/documents", data=form(b"", "empty.txt"))
    assert resp.status == 422
    resp = await client.post("/v1/documents", data=form(b"not a pdf at all", "broken.pdf"))
    assert resp.status == 422 and "broken.pdf" in (await resp.json())["detail"]
    assert files_under(tmp_path / "data" / "documents") == []
    assert (await client.post("/v1/sessions/ses_missing/upload", data=form(b"x", "a.txt"))).status == 404


async def test_who_sees_which_document(client: TestClient[Any, Any]) -> None:
    u1, u2 = {"X-End-User-ID": "u1"}, {"X-End-User-ID": "u2"}
    own = await upload(client, b"u1 only", "mine.txt", headers=u1)
    shared = await upload(client, b"for everyone", "shared.txt")
    tagged = await upload(client, b"for u2", "theirs.txt", end_user_id="u2")
    assert own["end_user_id"] == "u1" and shared["end_user_id"] is None and tagged["end_user_id"] == "u2"

    def ids(body: dict[str, Any]) -> set[str]:
        return {d["id"] for d in body["items"]}

    assert ids(await (await client.get("/v1/documents")).json()) == {own["id"], shared["id"], tagged["id"]}
    assert ids(await (await client.get("/v1/documents", headers=u1)).json()) == {own["id"], shared["id"]}
    assert ids(await (await client.get("/v1/documents", headers=u2)).json()) == {shared["id"], tagged["id"]}
    assert (await client.get(f"/v1/documents/{own['id']}", headers=u2)).status == 404
    assert (await client.get(f"/v1/documents/{shared['id']}", headers=u2)).status == 200
    assert (await client.delete(f"/v1/documents/{own['id']}", headers=u2)).status == 404
    assert (await client.delete(f"/v1/documents/{shared['id']}", headers=u1)).status == 403

    s2 = await new_session(client, end_user_id="u2")
    resp = await client.post(f"/v1/sessions/{s2['id']}/documents", headers=u2, json={"document_ids": [own["id"]]})
    assert resp.status == 404
    resp = await client.post(f"/v1/sessions/{s2['id']}/documents", headers=u2, json={"document_ids": [shared["id"]]})
    assert resp.status == 200
    resp = await client.post("/v1/documents", headers=u1, data=form(b"x", "x.txt", end_user_id="u2"))
    assert resp.status == 422
    assert (await client.delete(f"/v1/documents/{own['id']}", headers=u1)).status == 204
    assert (await client.get(f"/v1/documents/{own['id']}")).status == 404


async def test_a_session_token_uploads_into_its_own_session(client: TestClient[Any, Any]) -> None:
    s = await new_session(client, end_user_id="u7", with_token=True)
    other = await new_session(client, end_user_id="u7")
    bearer = {"Authorization": f"Bearer {s['access_token']}"}
    async with aiohttp.ClientSession(str(client.make_url(""))) as browser:  # no API key: the token only
        resp = await browser.post(f"/v1/sessions/{s['id']}/upload", data=form(b"from the browser", "b.txt"),
                                  headers=bearer)
        assert resp.status == 201, await resp.text()
        doc = await resp.json()
        assert doc["end_user_id"] == "u7", "it belongs to the session's end user"
        linked = await (await browser.get(f"/v1/sessions/{s['id']}/documents", headers=bearer)).json()
        assert [d["id"] for d in linked["items"]] == [doc["id"]]
        resp = await browser.post(f"/v1/sessions/{other['id']}/upload", data=form(b"x", "x.txt"), headers=bearer)
        assert resp.status == 404
        assert (await browser.get("/v1/documents", headers=bearer)).status == 403
        assert (await browser.delete(f"/v1/documents/{doc['id']}", headers=bearer)).status == 403


async def test_a_file_is_kept_while_any_document_uses_it(client: TestClient[Any, Any], tmp_path: Path) -> None:
    a = await upload(client, b"same bytes", "a.txt")
    b = await upload(client, b"same bytes", "b.txt")
    assert a["id"] != b["id"] and a["sha256"] == b["sha256"]
    assert len(files_under(tmp_path / "data" / "documents")) == 1
    assert (await client.delete(f"/v1/documents/{a['id']}")).status == 204
    assert len(files_under(tmp_path / "data" / "documents")) == 1
    assert (await (await client.get(f"/v1/documents/{b['id']}")).json())["name"] == "b.txt"
    assert (await client.delete(f"/v1/documents/{b['id']}")).status == 204
    assert files_under(tmp_path / "data" / "documents") == []


async def test_linked_documents_reach_the_model_within_the_budget(make_client: ClientFactory) -> None:
    model = FakeOpenAI("reader")
    await model.start()
    try:
        budget = 150
        client = await make_client(
            providers={"m": {"kind": "openai", "base_url": model.url + "/v1", "model": "reader"}},
            agents={"default": {"model": ["m"], "system_prompt": "Answer from the documents."}},
            documents={"context_tokens": budget, "chunk_words": 30},
        )
        filler = "\n\n".join(
            " ".join(f"paragraph {i} talks about weather and rainfall and clouds number {j}" for j in range(3))
            for i in range(40)
        )
        text = filler + "\n\nThe secret ingredient of the harbour soup is smoked paprika.\n\n" + filler
        doc = await upload(client, text.encode(), "recipes.txt")
        s = await new_session(client)
        await client.post(f"/v1/sessions/{s['id']}/documents", json={"document_ids": [doc["id"]]})
        events = await converse(client, s["id"], "What is the secret ingredient of the soup?")
        assert events[-1].event == "task.completed"
        messages = model.requests[0]["messages"]
        assert messages[0] == {"role": "system", "content": "Answer from the documents."}
        passages = messages[1]["content"]
        assert messages[1]["role"] == "system" and messages[2]["role"] == "user"
        first = passages.split("\n\n")[1:3]
        assert first[0] == "[recipes.txt]" or "smoked paprika" in "\n\n".join(first), "the best passage comes first"
        assert "smoked paprika" in passages
        assert TokenCounter().count(passages) <= budget
        assert len(passages) < len(text) / 4
    finally:
        await model.stop()


async def test_leftovers_of_interrupted_uploads_are_swept_at_start(make_client: ClientFactory, tmp_path: Path) -> None:
    temp = tmp_path / "data" / "documents" / "tmp"
    temp.mkdir(parents=True)
    stale, fresh = temp / "upload-old.part", temp / "upload-new.part"
    stale.write_bytes(b"half of a file")
    os.utime(stale, (0, 0))  # written long ago: its upload died with the server
    fresh.write_bytes(b"in flight")
    await make_client()
    assert not stale.exists() and fresh.exists()


# -- pieces ---------------------------------------------------------------------------------


def test_names_are_reduced_to_a_harmless_display_name() -> None:
    assert safe_name("../../etc/passwd") == "passwd"
    assert safe_name("C:\\Users\\x\\report.pdf") == "report.pdf"
    assert safe_name("..") == "upload" and safe_name("") == "upload" and safe_name(None) == "upload"
    assert safe_name("a\x00b\nc.txt") == "abc.txt"


def test_text_extraction(tmp_path: Path) -> None:
    html = tmp_path / "page"
    html.write_text(
        "<html><head><title>T</title><style>p{color:red}</style></head><body><h1>Title</h1>"
        "<p>First &amp; foremost.</p><script>alert('x')</script><p>Second</p></body></html>"
    )
    text = extract_text(html, "html")
    assert "First & foremost." in text and "Second" in text and "Title" in text
    assert "alert" not in text and "color" not in text
    js = tmp_path / "data"
    js.write_text('{"city": "Brest", "rain": true}')
    assert "Brest" in extract_text(js, "json")
    pdf = tmp_path / "doc"
    pdf.write_bytes(make_pdf("One line.", "Another line."))
    assert extract_text(pdf, "pdf").split() == ["One", "line.", "Another", "line."]


def test_chunks_and_bm25_ranking() -> None:
    text = "\n\n".join(["alpha beta gamma"] * 3 + ["the harbour has a lighthouse", "delta " * 50])
    chunks = chunk_text(text, 10)
    assert all(len(c.split()) <= 10 for c in chunks)
    assert " ".join(" ".join(chunks).split()) == " ".join(text.split()), "nothing is lost or repeated"
    long_line = " ".join(f"w{i}" for i in range(100_000))  # one paragraph of 100 000 words
    assert len(chunk_text(long_line, 120)) == 834
    first = ChunkIndex("d1", "one.txt", chunks)
    second = ChunkIndex("d2", "two.txt", ["a lighthouse, a lighthouse: two lighthouse mentions", "nothing here"])
    ranked = bm25([first, second], terms("Lighthouse?"))
    assert [(x, c) for _, x, c in ranked] == [(1, 0), (0, chunks.index(next(c for c in chunks if "lighthouse" in c)))]
    assert ranked[0][0] > ranked[1][0] > 0
    assert bm25([first, second], terms("zebra")) == [] and bm25([], ["a"]) == []


@pytest.mark.parametrize("budget", [20, 50, 100, 400])
def test_context_never_exceeds_the_budget(budget: int) -> None:
    counter = TokenCounter()
    blocks = [f"[doc{i}.txt]\n" + " ".join(f"word{i}x{j}" for j in range(i * 7 % 40 + 1)) for i in range(30)]
    text = select_within_budget(blocks, budget, counter, "Passages:")
    if text is not None:
        assert counter.count(text) <= budget
        assert text.startswith("Passages:\n\n" + blocks[0]) or blocks[0] not in text
    assert select_within_budget(blocks, 2, counter, "Passages:") is None


async def test_search_stays_right_when_the_chunk_cache_is_small(tmp_path: Path) -> None:
    from actors.agent.documents.library import DocumentLibrary
    from actors.store.sqlite import SqliteStore

    store = SqliteStore(tmp_path / "s.db")
    await store.open()
    try:
        library = DocumentLibrary(
            store, tmp_path / "docs", max_bytes=1 << 20, allowed=["txt"], context_tokens=100, chunk_words=5,
            counter=TokenCounter(), cache_chunks=3,
        )
        ids = []
        for word in ("anchor", "beacon", "compass"):
            upload = library.begin()
            upload.write(f"one two three four five\n\nthe {word} is here today\n\nsix seven eight nine ten".encode())
            doc = await library.finish(upload, name=f"{word}.txt", content_type=None, end_user_id=None)
            ids.append(doc.id)
        for _ in range(2):  # each search evicts the others' chunks; they are read again later
            for doc_id, word in zip(ids, ("anchor", "beacon", "compass"), strict=True):
                hits = await library.search([doc_id], word, 3)
                assert [h.document_id for h in hits] == [doc_id] and word in hits[0].text
        hits = await library.search(ids, "beacon", 3)
        assert [h.name for h in hits] == ["beacon.txt"]
    finally:
        await store.aclose()


async def test_a_large_document_is_searched_right(make_client: ClientFactory) -> None:
    # Thousands of chunks: indexed and ranked off the event loop.
    client = await make_client(documents={"chunk_words": 10})
    paragraphs = [f"entry {i} of the harbour ledger lists ordinary cargo and weather" for i in range(2500)]
    paragraphs[1717] = "entry 1717 records the lost brass compass of the Marguerite"
    doc = await upload(client, "\n\n".join(paragraphs).encode(), "ledger.txt")
    s = await new_session(client, tools=["search_documents"])
    await client.post(f"/v1/sessions/{s['id']}/documents", json={"document_ids": [doc["id"]]})
    events = await converse(client, s["id"], '/tool search_documents {"query": "brass compass", "limit": 1}')
    output = next(e.data for e in events if e.event == "tool.result")["output"]
    assert output == "[ledger.txt] entry 1717 records the lost brass compass of the Marguerite"
