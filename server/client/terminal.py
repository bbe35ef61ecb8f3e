"""The terminal under ``sessiond chat``: streamed text wrapped at word boundaries, keys typed
during an answer kept off the screen until the prompt, and times a person reads.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import unicodedata
from collections.abc import Iterator
from datetime import datetime
from typing import TextIO

__all__ = ["WordWrapper", "human_time", "one_line", "quiet_keys", "terminal_width", "wrap"]


def terminal_width(out: TextIO = sys.stdout) -> int:
    """Columns of the terminal ``out`` writes to (80 when it is not one)."""
    try:
        return max(os.get_terminal_size(out.fileno()).columns, 20)
    except (OSError, ValueError, AttributeError):
        return max(shutil.get_terminal_size().columns, 20)


class WordWrapper:
    """Writes streamed text, breaking lines only between words.

    Text arrives in pieces that may cut a word in two, so the word being written is held back
    until a space or a line break ends it; a word that would pass the right edge starts the next
    line instead (the space before it becomes the line break). A word longer than a whole line is
    written as it is.
    """

    def __init__(self, out: TextIO, width: int, column: int = 0) -> None:
        self.out = out
        self.width = width
        self.column = column
        self._word = ""
        self._space = ""

    def write(self, text: str) -> None:
        for ch in text:
            if ch == "\n":
                self._flush_word()
                self.out.write(self._space.replace(" ", "") + "\n")
                self._space, self.column = "", 0
            elif ch == " ":
                if self._word:
                    self._flush_word()
                self._space += " "
            else:
                self._word += ch
        self.out.flush()

    def _flush_word(self) -> None:
        if not self._word:
            return
        if self.column > 0 and self.column + len(self._space) + len(self._word) > self.width:
            self.out.write("\n")
            self.column = 0
        else:
            self.out.write(self._space)
            self.column += len(self._space)
        self.out.write(self._word)
        self.column += len(self._word)
        self._word, self._space = "", ""

    def finish(self) -> None:
        """Write the last word (the stream has ended)."""
        self._flush_word()
        self._space = ""
        self.out.flush()


def wrap(text: str, width: int, first: str = "") -> str:
    """``first`` + ``text``, wrapped at word boundaries to ``width`` (line breaks kept)."""
    buf = io.StringIO()
    buf.write(first)
    w = WordWrapper(buf, width, column=len(first))
    w.write(text)
    w.finish()
    return buf.getvalue()


def one_line(text: str) -> str:
    """``text`` on one line, safe to print: control characters (an escape sequence someone put
    in a message would move the cursor or retitle the terminal) become spaces, and runs of
    white space one space."""
    return " ".join("".join(" " if unicodedata.category(ch) == "Cc" else ch for ch in text).split())


@contextlib.contextmanager
def quiet_keys(stream: TextIO = sys.stdin) -> Iterator[None]:
    """While an answer streams: what is typed is not echoed into it. The keys stay in the
    terminal's buffer, and the next prompt shows them (readline reads them as typed)."""
    try:
        import termios

        fd = stream.fileno()
        before = termios.tcgetattr(fd)
    except (ImportError, OSError, ValueError, AttributeError):
        yield  # not a terminal (a pipe, a test's StringIO): nothing to keep quiet
        return
    quiet = list(before)
    quiet[3] = quiet[3] & ~termios.ECHO
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, before)


def human_time(iso: str, now: datetime | None = None) -> str:
    """``14:05`` today, ``3 Dec 14:05`` this year, else ``3 Dec 2025 14:05``, in local time."""
    try:
        at = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone()
    except ValueError:
        return iso
    now = (now or datetime.now().astimezone()).astimezone(at.tzinfo)
    if at.date() == now.date():
        return at.strftime("%H:%M")
    if at.year == now.year:
        return f"{at.day} {at.strftime('%b %H:%M')}"
    return f"{at.day} {at.strftime('%b %Y %H:%M')}"
