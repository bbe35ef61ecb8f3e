"""A bounded memo of a function of text, for what is computed again for every answer over the
whole conversation (the token counts of the context window's fitter).

A conversation's messages come back with every turn as the same string objects, so a look-up
costs no hashing of the text (a ``str`` keeps its hash) and no comparing of it. The memo holds
texts up to ``max_text`` characters and at most ``max_chars`` characters in all, dropping the
oldest first: unlike a least-recently-used cache of a fixed number of entries, it does not
thrash when many conversations are read in turn, and its memory stays bounded.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["TextMemo"]

_V = TypeVar("_V")


class TextMemo(Generic[_V]):
    """``memo(text)`` is ``fn(text)``, remembered (see the module docstring)."""

    __slots__ = ("_chars", "_fn", "_lock", "_max_chars", "_max_text", "_values")

    def __init__(self, fn: Callable[[str], _V], *, max_text: int = 4096, max_chars: int = 8 << 20) -> None:
        self._fn = fn
        self._max_text = max_text
        self._max_chars = max_chars
        self._values: dict[str, _V] = {}
        self._chars = 0
        self._lock = threading.Lock()  # writers take turns; readers never wait

    def __call__(self, text: str) -> _V:
        value = self._values.get(text)
        if value is not None:
            return value
        value = self._fn(text)
        if len(text) <= self._max_text:
            with self._lock:
                if text not in self._values:
                    self._values[text] = value
                    self._chars += len(text)
                    while self._chars > self._max_chars:
                        oldest = next(iter(self._values))
                        del self._values[oldest]
                        self._chars -= len(oldest)
        return value

    def __len__(self) -> int:
        return len(self._values)
