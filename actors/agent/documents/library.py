"""Documents: uploads kept by content hash, their text, and the passages a model gets to see.

An upload streams into a temporary file under the documents directory while it is counted and
hashed; past the size limit it is refused and the file deleted. A complete upload has its text
extracted (txt, md, json, csv, html, pdf) in a child process within page, character, CPU, memory
and time limits (``extract.py``), then the file is kept as ``<root>/<h[:2]>/<h>`` where
``h`` is the SHA-256 of its content: the name the client gave is shown, never used as a path.

The text is cut into chunks of about ``chunk_words`` words. A search, or the context given to a
model with each answer, ranks the chunks of the session's linked documents with BM25 against
the query and takes the best ones, never more than the token budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import os
import re
import tempfile
import time
import unicodedata
import urllib.parse
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO

import msgspec

from actors.agent.documents.extract import ExtractionFailed, ExtractLimits, TextTooLarge, extract_bounded
from actors.agent.tokens import TokenCounter
from actors.core.errors import InvalidRequestError, OverloadedError, PayloadTooLargeError, UnsupportedMediaTypeError
from actors.core.ids import new_id, utcnow
from actors.store.base import Store
from actors.store.tables import DocumentRecord

__all__ = [
    "CONTENT_TYPES",
    "KINDS",
    "ChunkIndex",
    "DocumentLibrary",
    "DocumentTextTooLargeError",
    "DocumentTooLargeError",
    "DocumentUnreadableError",
    "Hit",
    "Upload",
    "bm25",
    "chunk_text",
    "kind_of",
    "safe_name",
    "select_within_budget",
    "terms",
]

KINDS = ("txt", "md", "json", "csv", "html", "pdf")
_BY_EXTENSION = {
    ".txt": "txt", ".text": "txt", ".log": "txt", ".md": "md", ".markdown": "md", ".json": "json",
    ".csv": "csv", ".html": "html", ".htm": "html", ".pdf": "pdf",
}
_BY_CONTENT_TYPE = {
    "text/plain": "txt", "text/markdown": "md", "text/x-markdown": "md", "application/json": "json",
    "text/csv": "csv", "text/html": "html", "application/pdf": "pdf",
}
CONTENT_TYPES = {
    "txt": "text/plain", "md": "text/markdown", "json": "application/json", "csv": "text/csv",
    "html": "text/html", "pdf": "application/pdf",
}
_RANK_IN_THREAD = 2000  # chunks: larger corpora are ranked off the event loop
_MAX_SKIPPED = 32  # blocks too large for the rest of the budget, in a row, before giving up
_CONTEXT_HEADER = "Passages from the documents linked to this conversation, the most relevant first:"


class DocumentTooLargeError(PayloadTooLargeError):
    """An upload went past ``[documents] max_bytes``."""


class Hit(msgspec.Struct, frozen=True):
    document_id: str
    name: str
    text: str
    score: float


# -- names and kinds ----------------------------------------------------------------------


def safe_name(raw: str | None) -> str:
    """A display name from a client's file name: its last path part, printable, at most 200."""
    # Clients may percent-encode the name (RFC 7578): decode first, so "..%2Fx" is cut too.
    name = urllib.parse.unquote(raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip()
    if name in ("", ".", ".."):
        name = "upload"
    return name[:200]


def kind_of(name: str, content_type: str | None) -> str | None:
    """The document kind by file extension, else by the part's content type."""
    ext = os.path.splitext(name)[1].lower()
    if ext in _BY_EXTENSION:
        return _BY_EXTENSION[ext]
    ctype = (content_type or "").split(";")[0].strip().lower()
    return _BY_CONTENT_TYPE.get(ctype)


# -- text extraction: actors.agent.documents.extract, in a child process with limits -------


class DocumentTextTooLargeError(PayloadTooLargeError):
    """An upload's text has more pages or characters than ``[documents]`` allows."""


class DocumentUnreadableError(InvalidRequestError):
    """An upload's text could not be read within the extraction's bounds (or at all)."""


# -- chunks and ranking -------------------------------------------------------------------

_TERM = re.compile(r"\w+", re.UNICODE)


def terms(text: str) -> list[str]:
    return _TERM.findall(text.lower())


def chunk_text(text: str, words: int) -> list[str]:
    """Cut ``text`` into chunks of at most ``words`` words, keeping paragraphs together when
    they fit."""
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for para in re.split(r"\n\s*\n", text):
        para_words = para.split()
        if not para_words:
            continue
        if size and size + len(para_words) > words:
            chunks.append("\n\n".join(current))
            current, size = [], 0
        start = 0
        while len(para_words) - start > words:  # a paragraph longer than a chunk is cut by words
            chunks.append(" ".join(para_words[start : start + words]))
            start += words
        rest = para_words[start:]
        current.append(" ".join(rest))
        size += len(rest)
    if current:
        chunks.append("\n\n".join(current))
    return chunks


class ChunkIndex:
    """One document's chunks, with an inverted index of their terms (built once, cached).

    Ranking touches only the chunks that hold a query term, so a question costs what its
    matches cost, not what the document weighs.
    """

    __slots__ = ("document_id", "lengths", "name", "postings", "texts", "words")

    def __init__(self, document_id: str, name: str, texts: Sequence[str]) -> None:
        self.document_id = document_id
        self.name = name
        self.texts = list(texts)
        self.lengths: list[int] = []
        self.postings: dict[str, list[tuple[int, int]]] = {}  # term -> [(chunk, term frequency)]
        for i, text in enumerate(self.texts):
            counts = Counter(terms(text))
            self.lengths.append(sum(counts.values()))
            for term, tf in counts.items():
                self.postings.setdefault(term, []).append((i, tf))
        self.words = sum(self.lengths)

    def __len__(self) -> int:
        return len(self.texts)


def bm25(indexes: Sequence[ChunkIndex], query: Iterable[str], *, k1: float = 1.5, b: float = 0.75) -> list[
    tuple[float, int, int]
]:
    """Okapi BM25 over the chunks of ``indexes`` taken as one corpus (idf as in Lucene, never
    negative): (score, index, chunk) of every chunk holding a query term, best first."""
    n = sum(len(ix) for ix in indexes)
    if not n:
        return []
    avg = sum(ix.words for ix in indexes) / n or 1.0
    scores: dict[tuple[int, int], float] = {}
    for term in set(query):
        found = [(x, ix.postings[term]) for x, ix in enumerate(indexes) if term in ix.postings]
        df = sum(len(postings) for _, postings in found)
        if not df:
            continue
        idf = math.log((n - df + 0.5) / (df + 0.5) + 1.0)
        for x, postings in found:
            lengths = indexes[x].lengths
            for c, tf in postings:
                norm = k1 * (1 - b + b * lengths[c] / avg)
                scores[(x, c)] = scores.get((x, c), 0.0) + idf * tf * (k1 + 1) / (tf + norm)
    return sorted(((s, x, c) for (x, c), s in scores.items()), key=lambda t: (-t[0], t[1], t[2]))


def _blocks(indexes: Sequence[ChunkIndex], ranked: list[tuple[float, int, int]]) -> Iterator[str]:
    """The ranked chunks as ``[name]`` blocks, then the others in document order (lazily)."""
    seen = set()
    for _, x, c in ranked:
        seen.add((x, c))
        yield f"[{indexes[x].name}]\n{indexes[x].texts[c]}"
    for x, ix in enumerate(indexes):
        for c, text in enumerate(ix.texts):
            if (x, c) not in seen:
                yield f"[{ix.name}]\n{text}"


def select_within_budget(blocks: Iterable[str], budget: int, counter: TokenCounter, header: str) -> str | None:
    """``header`` and as many of ``blocks`` (best first) as fit in ``budget`` tokens, or None.

    A block too large for what is left is skipped for a smaller one after it. The joined text
    is counted again at the end, so the result never exceeds the budget.
    """
    sep = counter.count("\n\n")
    used = counter.count(header)
    if used > budget:
        return None
    chosen: list[str] = []
    skipped = 0
    for block in blocks:
        if budget - used <= sep or skipped >= _MAX_SKIPPED:
            break  # full, or nothing further down is likely to fit: stop counting
        cost = counter.count(block) + sep
        if used + cost <= budget:
            chosen.append(block)
            used += cost
            skipped = 0
        else:
            skipped += 1
    while chosen:
        text = "\n\n".join([header, *chosen])
        if counter.count(text) <= budget:
            return text
        chosen.pop()
    return None


def _index(doc: DocumentRecord, text: str, words: int) -> ChunkIndex:
    return ChunkIndex(doc.id, doc.name, chunk_text(text, words))


# -- uploads ------------------------------------------------------------------------------


class Upload:
    """A file being received: written to a temporary file, counted and hashed as it comes."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="upload-", suffix=".part", dir=directory)
        self.path = Path(name)
        self._file: IO[bytes] | None = os.fdopen(fd, "wb")
        self.max_bytes = max_bytes
        self.size = 0
        self._hash = hashlib.sha256()
        self.kept = False

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            self.discard()
            raise DocumentTooLargeError(f"the file is larger than the limit of {self.max_bytes} bytes")
        assert self._file is not None
        # Small blocking writes into the page cache: cheaper than a thread hop per chunk.
        self._file.write(chunk)
        self._hash.update(chunk)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def discard(self) -> None:
        """Delete the temporary file (nothing of a refused or failed upload stays on disk)."""
        self.close()
        if not self.kept:
            self.path.unlink(missing_ok=True)


class DocumentLibrary:
    """Uploaded documents: files under ``root``, records and text in the store."""

    def __init__(
        self,
        store: Store,
        root: Path,
        *,
        max_bytes: int,
        allowed: Sequence[str],
        context_tokens: int,
        chunk_words: int,
        counter: TokenCounter,
        cache_chunks: int = 20_000,
        extract: ExtractLimits | None = None,
        max_extractions: int = 4,
    ) -> None:
        self.store = store
        self.extract = extract or ExtractLimits()
        self.max_extractions = max_extractions
        self.extractions = 0  # running now
        self.root = root
        self.max_bytes = max_bytes
        self.allowed = tuple(allowed)
        self.context_tokens = context_tokens
        self.chunk_words = chunk_words
        self.counter = counter
        # Chunked and counted documents, least recently used first. Bounded by chunks, not by
        # documents: a chunk with its term counts takes a few kB, and one large file has
        # thousands of them.
        self._cache: OrderedDict[str, ChunkIndex] = OrderedDict()
        self._cached = 0
        self._cache_chunks = cache_chunks
        # Placing and removing files by hash must not interleave (an upload of the same bytes
        # racing the delete of the last document using them).
        self._files = asyncio.Lock()

    @property
    def temp_dir(self) -> Path:
        return self.root / "tmp"

    def path_of(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def begin(self) -> Upload:
        return Upload(self.temp_dir, self.max_bytes)

    def sweep(self, older_than: float = 3600.0) -> int:
        """Delete temporary files left by uploads a crash interrupted; how many there were."""
        if not self.temp_dir.exists():
            return 0
        limit = time.time() - older_than
        removed = 0
        for path in self.temp_dir.glob("upload-*.part"):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < limit:
                    path.unlink()
                    removed += 1
        return removed

    async def finish(
        self,
        upload: Upload,
        *,
        name: str | None,
        content_type: str | None,
        end_user_id: str | None = None,
        guest_id: str | None = None,
        session_id: str | None = None,
        shared: bool = False,
        abandoned: Callable[[], bool] | None = None,
    ) -> DocumentRecord:
        """Extract the text (bounded, in a child process killed once ``abandoned()`` says the
        client has gone), keep the file by its hash, record the document and its owner."""
        upload.close()
        display = safe_name(name)
        kind = kind_of(display, content_type)
        if kind is None or kind not in self.allowed:
            raise UnsupportedMediaTypeError(
                f"{display!r} is not a document type this server takes ({', '.join(self.allowed)})"
            )
        if upload.size == 0:
            raise InvalidRequestError("the file is empty")
        # At most max_extractions children at once, server-wide (each may take a core, up to
        # its memory bound, and its output): past them, 503 at once, before any is started.
        if self.extractions >= self.max_extractions:
            raise OverloadedError(f"{self.max_extractions} uploads are being read now; retry shortly")
        self.extractions += 1
        try:
            text = await extract_bounded(upload.path, kind, self.extract, abandoned=abandoned)
        except TextTooLarge as exc:
            raise DocumentTextTooLargeError(f"{display!r}: {exc}") from None
        except ExtractionFailed as exc:
            raise DocumentUnreadableError(f"cannot read the text of {display!r}: {exc}") from None
        finally:
            self.extractions -= 1
        sha = upload.sha256
        doc = DocumentRecord(
            id=new_id("doc"), name=display, size=upload.size, content_type=CONTENT_TYPES[kind], kind=kind,
            sha256=sha, created_at=utcnow(), end_user_id=end_user_id, chars=len(text), guest_id=guest_id,
            session_id=session_id, shared=shared,
        )
        async with self._files:
            dest = self.path_of(sha)
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(upload.path, dest)
                upload.kept = True
            await self.store.put_document(doc, text)
        return doc

    async def delete(self, doc: DocumentRecord) -> bool:
        async with self._files:
            deleted = await self.store.delete_document(doc.id)
            if deleted and await self.store.count_documents_with_hash(doc.sha256) == 0:
                self.path_of(doc.sha256).unlink(missing_ok=True)
        self._forget(doc.id)
        return deleted

    def _forget(self, document_id: str) -> None:
        index = self._cache.pop(document_id, None)
        if index is not None:
            self._cached -= len(index)

    # -- ranking ---------------------------------------------------------------------------

    async def _indexes(self, document_ids: Sequence[str]) -> list[ChunkIndex]:
        missing = [d for d in dict.fromkeys(document_ids) if d not in self._cache]
        if missing:
            for doc, text in await self.store.document_texts(missing):
                # Seconds of CPU for a file of megabytes: off the event loop.
                made = await asyncio.to_thread(_index, doc, text, self.chunk_words)
                self._cache[doc.id] = made
                self._cached += len(made)
        out: list[ChunkIndex] = []
        for d in dict.fromkeys(document_ids):
            index = self._cache.get(d)
            if index is not None:
                self._cache.move_to_end(d)
                out.append(index)
        # Evict the least recently used, never what this call is using.
        wanted = set(document_ids)
        for d in list(self._cache):
            if self._cached <= self._cache_chunks:
                break
            if d not in wanted:
                self._forget(d)
        return out

    @staticmethod
    async def _rank(indexes: list[ChunkIndex], query: str) -> list[tuple[float, int, int]]:
        if sum(len(ix) for ix in indexes) < _RANK_IN_THREAD:
            return bm25(indexes, terms(query))
        # Tens of milliseconds when common words match every chunk of large documents.
        return await asyncio.to_thread(bm25, indexes, terms(query))

    async def search(self, document_ids: Sequence[str], query: str, limit: int) -> list[Hit]:
        """The ``limit`` best passages of the documents for ``query`` (only ones that match)."""
        indexes = await self._indexes(document_ids)
        ranked = (await self._rank(indexes, query))[:limit]
        return [Hit(indexes[x].document_id, indexes[x].name, indexes[x].texts[c], round(s, 4)) for s, x, c in ranked]

    async def context(self, document_ids: Sequence[str], query: str) -> str | None:
        """The passages given to the model with an answer: best first, within the budget."""
        if self.context_tokens <= 0:
            return None
        indexes = await self._indexes(document_ids)
        if not any(len(ix) for ix in indexes):
            return None
        await self.counter.load()
        blocks = _blocks(indexes, await self._rank(indexes, query))
        return select_within_budget(blocks, self.context_tokens, self.counter, _CONTEXT_HEADER)
