"""Prefixed opaque ids and RFC 3339 timestamps (both on the per-message hot path)."""

from __future__ import annotations

import os
import time

__all__ = ["new_id", "utcnow"]

# Ids draw from a buffer of the OS's randomness refilled 4 KiB at a time: the same source as
# `secrets`, without one getrandom() system call per id.
_POOL_SIZE = 4096
_pool = b""
_at = _POOL_SIZE


def _forget_pool() -> None:
    global _pool, _at
    _pool, _at = b"", _POOL_SIZE


# A forked child must not hand out the ids its parent's buffer will hand out too.
os.register_at_fork(after_in_child=_forget_pool)


def new_id(prefix: str) -> str:
    """A random id such as ``ses_3f9a...`` (96 bits of randomness)."""
    global _pool, _at
    if _at + 12 > len(_pool):
        _pool, _at = os.urandom(_POOL_SIZE), 0
    chunk = _pool[_at : _at + 12]
    _at += 12
    return f"{prefix}_{chunk.hex()}"


_second = -1
_head = ""


def utcnow() -> str:
    """Now as an RFC 3339 UTC string with microseconds (sortable as text).

    The date and time down to the second are formatted once per second; only the
    microseconds are added per call.
    """
    global _second, _head
    now = time.time()
    second = int(now)
    if second != _second:
        _head = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second = second
    return f"{_head}.{int((now - second) * 1_000_000):06d}Z"
