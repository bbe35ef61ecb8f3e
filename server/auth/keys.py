"""API keys: created by ``sessiond keys create``, kept only as a hash, compared in constant time.

A key reads ``sk_<id>_<secret>``; the same credential split in two is
``X-Client-ID: key_<id>`` + ``X-Client-Secret: <secret>``.

A key that passed is remembered, as session tokens' grants are (server/auth/tokens.py): by its
id and the hash of the presented secret (never the secret itself), and re-read from the store
at most every ``_RECHECK_SECONDS``. A revocation through ``KeyRing.revoke`` (this process) takes
effect at once; one made by another process (``sessiond keys revoke``, another server on the
same database), within that interval.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

from actors.core.ids import utcnow
from actors.store.base import Store
from actors.store.tables import ApiKeyRecord

__all__ = ["KeyRing", "create_key", "hash_secret", "split_key"]

_RECHECK_SECONDS = 2.0
_REMEMBERED_MAX = 10_000


def hash_secret(secret: str) -> str:
    """What is stored of a random secret sessiond handed out (API keys: 192 bits; refresh
    tokens and share links: 256): a fast hash is enough, no password stretching needed."""
    return hashlib.sha256(secret.encode()).hexdigest()


def split_key(key: str) -> tuple[str, str] | None:
    """``sk_<id>_<secret>`` -> (``key_<id>``, secret), or None when it is not of that form."""
    parts = key.split("_")
    if len(parts) != 3 or parts[0] != "sk" or not parts[1] or not parts[2]:
        return None
    return f"key_{parts[1]}", parts[2]


async def create_key(store: Store, name: str) -> tuple[ApiKeyRecord, str]:
    short = secrets.token_hex(6)
    secret = secrets.token_hex(24)
    record = ApiKeyRecord(f"key_{short}", name, hash_secret(secret), utcnow())
    await store.put_api_key(record)
    return record, f"sk_{short}_{secret}"


class KeyRing:
    """Checks a presented key against the store and the keys named in config.toml."""

    def __init__(self, store: Store, config_keys: list[str]) -> None:
        self._store = store
        self._config = [hash_secret(k).encode() for k in config_keys]
        # (key id, hash of the presented secret) of keys that passed -> when to read the key again
        self._passed: dict[tuple[str, str], float] = {}
        self.on_revoke: list[Callable[[str], None]] = []  # told of a revocation by this process

    async def verify(self, key_id: str | None, secret: str | None, whole: str | None) -> str | None:
        """The key id if the credential is valid and not revoked, else None."""
        if whole is not None:
            digest = hash_secret(whole).encode()
            # Check every config key so the time taken does not say which one matched.
            matched = False
            for known in self._config:
                matched |= hmac.compare_digest(digest, known)
            if matched:
                return "config"
            parts = split_key(whole)
            if parts is None:
                return None
            key_id, secret = parts
        if key_id is None or secret is None:
            return None
        presented = hash_secret(secret)
        now = time.monotonic()
        remembered = (key_id, presented)
        deadline = self._passed.get(remembered)
        if deadline is not None and deadline > now:
            return key_id
        record = await self._store.get_api_key(key_id)
        expected = record.secret_hash.encode() if record is not None else b"0" * 64
        if not hmac.compare_digest(presented.encode(), expected) or record is None or record.revoked_at:
            self._passed.pop(remembered, None)
            return None
        if len(self._passed) >= _REMEMBERED_MAX:
            del self._passed[next(iter(self._passed))]
        self._passed[remembered] = now + _RECHECK_SECONDS
        return record.id

    async def revoke(self, key_id: str, when: str) -> bool:
        """Revoke ``key_id`` in the store; this process stops taking it at once."""
        done = await self._store.revoke_api_key(key_id, when)
        self.forget(key_id)
        return done

    def forget(self, key_id: str) -> None:
        """Drop what is remembered of ``key_id``: its next use reads the store."""
        for remembered in [k for k in self._passed if k[0] == key_id]:
            del self._passed[remembered]
        for hook in self.on_revoke:
            hook(key_id)
