"""A document's text, extracted with bounds: pages, characters, CPU, memory and wall-clock time.

A small file can expand enormously (a PDF whose content stream repeats text, a page tree of
thousands of pages), so the parent never parses an upload itself: ``extract_bounded`` runs
``python -m actors.agent.documents.extract`` as a child process that sets its own CPU and
address-space limits (``resource.setrlimit``), stops at ``max_pages`` pages or ``max_chars``
characters, and writes the text to its standard output. The parent kills the child when the
wall-clock limit passes, when the request it serves ends, or when it is cancelled.

Exit status of the child: 0 the text follows on stdout; 3 too many pages; 4 too much text;
5 out of memory; 1 unreadable (the reason on stderr). Killed by a signal: over a limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

__all__ = [
    "ExtractLimits",
    "ExtractionFailed",
    "TextTooLarge",
    "TooManyPages",
    "extract_bounded",
    "extract_text",
    "main",
]

_TOO_MANY_PAGES, _TOO_MUCH_TEXT, _OUT_OF_MEMORY = 3, 4, 5
_POLL_SECONDS = 0.2  # how often the parent looks whether the request it serves has ended
_MAX_STDERR = 4096


class ExtractLimits:
    """What one extraction may take (0: that dimension is not limited)."""

    __slots__ = ("cpu_seconds", "max_chars", "max_pages", "memory_bytes", "wall_seconds")

    def __init__(
        self,
        *,
        max_pages: int = 0,
        max_chars: int = 0,
        cpu_seconds: int = 0,
        memory_bytes: int = 0,
        wall_seconds: float = 0.0,
    ) -> None:
        self.max_pages = max_pages
        self.max_chars = max_chars
        self.cpu_seconds = cpu_seconds
        self.memory_bytes = memory_bytes
        self.wall_seconds = wall_seconds


class TextTooLarge(Exception):
    """More pages or more characters than the limits allow (the message says which)."""


class TooManyPages(TextTooLarge):
    """More pages than ``max_pages``."""


class ExtractionFailed(Exception):
    """The text could not be read, or reading it went past the CPU, memory or time limit."""


# -- extraction itself (in the child) -----------------------------------------------------


class _HtmlText(HTMLParser):
    _SKIP = frozenset({"script", "style", "noscript", "template", "head"})
    _BLOCK = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article",
                        "table", "ul", "ol", "pre", "blockquote", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skipping += 1
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self._skipping = max(self._skipping - 1, 0)
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def _html_text(raw: str) -> str:
    parser = _HtmlText()
    parser.feed(raw)
    parser.close()
    lines = (re.sub(r"[ \t\r\f\v]+", " ", line).strip() for line in "".join(parser.parts).split("\n"))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _pdf_text(path: Path, max_pages: int, max_chars: int) -> str:
    from pypdf import PdfReader

    reader = PdfReader(path)
    if reader.is_encrypted:
        reader.decrypt("")
    pages = len(reader.pages)
    if max_pages and pages > max_pages:
        raise TooManyPages(f"the document has {pages} pages, more than the limit of {max_pages}")
    out: list[str] = []
    total = 0

    def count(text: str, *_: Any) -> None:
        # Called for every piece of text as a page is read: a page that repeats its text
        # without end is stopped here, not after it has filled the memory.
        nonlocal total
        total += len(text)
        if max_chars and total > max_chars:
            raise TextTooLarge(f"the text of the document is longer than the limit of {max_chars} characters")

    for page in reader.pages:
        out.append((page.extract_text(visitor_text=count) or "").strip())
    return "\n\n".join(out).strip()


def extract_text(path: Path, kind: str, *, max_pages: int = 0, max_chars: int = 0) -> str:
    """The text of the file at ``path`` (blocking, unbounded in time: the child's work)."""
    if kind == "pdf":
        text = _pdf_text(path, max_pages, max_chars)
    else:
        raw = path.read_bytes().decode("utf-8-sig", "replace")
        text = _html_text(raw) if kind == "html" else raw
    text = text.replace("\x00", "")
    if max_chars and len(text) > max_chars:
        raise TextTooLarge(f"the text of the document is longer than the limit of {max_chars} characters")
    return text


def _limit_self(cpu_seconds: int, memory_bytes: int) -> None:
    import resource

    if cpu_seconds > 0:
        # Past the soft limit SIGXCPU ends the process; the hard one is a backstop.
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    if memory_bytes > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))


def main(argv: list[str]) -> int:
    kind, path, max_pages, max_chars, cpu_seconds, memory_bytes = argv
    _limit_self(int(cpu_seconds), int(memory_bytes))
    try:
        text = extract_text(Path(path), kind, max_pages=int(max_pages), max_chars=int(max_chars))
    except TextTooLarge as exc:
        print(exc, file=sys.stderr)
        return _TOO_MANY_PAGES if isinstance(exc, TooManyPages) else _TOO_MUCH_TEXT
    except MemoryError:
        return _OUT_OF_MEMORY
    except Exception as exc:
        print(f"{type(exc).__name__}: {exc}"[:_MAX_STDERR], file=sys.stderr)
        return 1
    sys.stdout.buffer.write(text.encode("utf-8", "surrogatepass"))
    return 0


# -- the parent's side ----------------------------------------------------------------------

_ROOT = str(Path(__file__).resolve().parents[3])  # the directory holding the actors package


async def extract_bounded(
    path: Path, kind: str, limits: ExtractLimits, *, abandoned: Callable[[], bool] | None = None
) -> str:
    """The text of ``path``, extracted in a child process within ``limits``.

    Raises TextTooLarge or ExtractionFailed. ``abandoned`` is asked every few tenths of a
    second: once it says True (the client has gone), the child is killed.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")]))}
    args = [str(a) for a in (kind, path, limits.max_pages, limits.max_chars, limits.cpu_seconds, limits.memory_bytes)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", __name__, *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limits.wall_seconds if limits.wall_seconds > 0 else None
    talk = loop.create_task(proc.communicate())
    try:
        while not talk.done():
            timeout = _POLL_SECONDS if deadline is None else min(_POLL_SECONDS, deadline - loop.time())
            if timeout <= 0:
                raise ExtractionFailed(f"reading the text took longer than {limits.wall_seconds:g} s")
            await asyncio.wait({talk}, timeout=timeout)
            if not talk.done() and abandoned is not None and abandoned():
                raise ExtractionFailed("the client went away")
        out, err = talk.result()
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        if not talk.done():
            talk.cancel()
            with contextlib.suppress(BaseException):
                await talk
    reason = err.decode("utf-8", "replace").strip()[:_MAX_STDERR]
    code = proc.returncode
    if code == 0:
        return out.decode("utf-8", "replace")
    if code in (_TOO_MANY_PAGES, _TOO_MUCH_TEXT):
        raise TextTooLarge(reason)
    if code == _OUT_OF_MEMORY:
        raise ExtractionFailed(f"reading the text needed more than {limits.memory_bytes // (1 << 20)} MiB of memory")
    if code in (-signal.SIGXCPU, -signal.SIGKILL):
        raise ExtractionFailed(f"reading the text took more than {limits.cpu_seconds} s of CPU")
    if code is None or code < 0:
        raise ExtractionFailed(
            f"reading the text went past the limits ({limits.cpu_seconds} s of CPU,"
            f" {limits.memory_bytes // (1 << 20)} MiB of memory)"
        )
    raise ExtractionFailed(reason or f"the extractor failed (exit status {code})")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
