"""Session tokens and guests in SQLite: rare writes, each in a transaction of its own on its own
connection (BEGIN IMMEDIATE), outside group commit."""

from __future__ import annotations

import aiosqlite
import msgspec

from actors.store.sqlite_base import SqliteConnection
from actors.store.tables import GuestRecord, RefreshLimit, RefreshOutcome, RefreshTokenRecord, TokenFamilyRecord

__all__ = ["SqliteAuthTables"]

_dec_family = msgspec.json.Decoder(TokenFamilyRecord)
_enc = msgspec.json.Encoder()
# A family's tokens made since a time (timestamps as utcnow() writes them sort as text).
_MADE_SINCE = "SELECT count(*) FROM refresh_tokens WHERE family_id = ? AND created_at > ?"


class SqliteAuthTables(SqliteConnection):
    """The session-token and guest tables (a base of SqliteStore)."""

    @staticmethod
    def _family(body: str, revoked_at: str | None) -> TokenFamilyRecord:
        family = _dec_family.decode(body)
        family.revoked_at = revoked_at
        return family

    async def put_token_family(self, family: TokenFamilyRecord, token: RefreshTokenRecord) -> None:
        async def write(db: aiosqlite.Connection) -> None:
            await db.execute(
                "INSERT INTO token_families (id, session_id, body, revoked_at) VALUES (?, ?, ?, ?)",
                (family.id, family.session_id, _enc.encode(family).decode(), family.revoked_at),
            )
            await db.execute(
                "INSERT INTO refresh_tokens (hash, family_id, created_at, expires_at, used_at) VALUES (?, ?, ?, ?, ?)",
                (token.hash, token.family_id, token.created_at, token.expires_at, token.used_at),
            )

        await self._transaction(write)

    async def get_token_family(self, family_id: str) -> TokenFamilyRecord | None:
        rows = await self._all("SELECT body, revoked_at FROM token_families WHERE id = ?", (family_id,))
        return self._family(*rows[0]) if rows else None

    async def rotate_refresh_token(
        self, old_hash: str, new: RefreshTokenRecord, now: float, when: str, *, limit: RefreshLimit | None = None
    ) -> RefreshOutcome:
        async def rotate(db: aiosqlite.Connection) -> RefreshOutcome:
            rows = await self._rows(
                db, "SELECT family_id, expires_at, used_at FROM refresh_tokens WHERE hash = ?", (old_hash,)
            )
            if not rows:
                return RefreshOutcome("unknown")
            family_id, expires_at, used_at = rows[0]
            fam = await self._rows(db, "SELECT body, revoked_at FROM token_families WHERE id = ?", (family_id,))
            if not fam:
                return RefreshOutcome("unknown")
            family = self._family(*fam[0])
            if used_at is not None or family.revoked_at is not None:
                # A rotated token came back: it was copied. End the family (both holders).
                if family.revoked_at is None:
                    await db.execute("UPDATE token_families SET revoked_at = ? WHERE id = ?", (when, family_id))
                    family.revoked_at = when
                await db.execute("DELETE FROM refresh_tokens WHERE family_id = ?", (family_id,))
                return RefreshOutcome("reused", family)
            if expires_at <= now:
                return RefreshOutcome("expired", family)
            if limit is not None:
                made = await self._rows(db, _MADE_SINCE, (family_id, limit.since))
                if made[0][0] >= limit.at_most:
                    return RefreshOutcome("rate_limited", family)
            await db.execute("UPDATE refresh_tokens SET used_at = ? WHERE hash = ?", (when, old_hash))
            await db.execute(
                "INSERT INTO refresh_tokens (hash, family_id, created_at, expires_at, used_at) VALUES (?, ?, ?, ?, ?)",
                (new.hash, family_id, new.created_at, new.expires_at, None),
            )
            # Used tokens are kept (to catch their reuse) only while they would still be valid.
            await db.execute(
                "DELETE FROM refresh_tokens WHERE family_id = ? AND used_at IS NOT NULL AND expires_at <= ?",
                (family_id, now),
            )
            return RefreshOutcome("rotated", family)

        return await self._transaction(rotate)

    async def revoke_session_tokens(self, session_id: str) -> int:
        async def revoke(db: aiosqlite.Connection) -> int:
            await db.execute(
                "DELETE FROM refresh_tokens WHERE family_id IN (SELECT id FROM token_families WHERE session_id = ?)",
                (session_id,),
            )
            cur = await db.execute("DELETE FROM token_families WHERE session_id = ?", (session_id,))
            return cur.rowcount

        return await self._transaction(revoke)

    _GUEST_BY_LINK = (
        "SELECT g.id, g.namespace, g.created_at, g.expires_at FROM guest_links l"
        " JOIN guests g ON g.id = l.guest_id"
        " WHERE l.namespace = ? AND l.kind = ? AND l.digest = ? AND g.expires_at > ?"
    )

    @classmethod
    async def _match_guest(
        cls, db: aiosqlite.Connection, namespace: str, ip: str | None, fingerprint: str | None, now: float
    ) -> GuestRecord | None:
        # The fingerprint is the better witness (many visitors may share an IP): it goes first.
        for kind, digest in (("fingerprint", fingerprint), ("ip", ip)):
            if digest is not None:
                rows = await cls._rows(db, cls._GUEST_BY_LINK, (namespace, kind, digest, now))
                if rows:
                    return GuestRecord(*rows[0])
        return None

    async def find_guest(
        self, namespace: str, ip: str | None, fingerprint: str | None, now: float
    ) -> GuestRecord | None:
        assert self._reader is not None
        return await self._match_guest(self._reader, namespace, ip, fingerprint, now)

    async def find_or_create_guest(
        self, namespace: str, ip: str, fingerprint: str | None, new: GuestRecord, now: float
    ) -> tuple[GuestRecord, bool]:
        async def find_or_create(db: aiosqlite.Connection) -> tuple[GuestRecord, bool]:
            guest = await self._match_guest(db, namespace, ip, fingerprint, now)
            created = guest is None
            if guest is None:
                guest = new
                await db.execute("DELETE FROM guests WHERE expires_at <= ?", (now,))
                await db.execute("DELETE FROM guest_links WHERE expires_at <= ?", (now,))
                await db.execute(
                    "INSERT INTO guests (id, namespace, created_at, expires_at) VALUES (?, ?, ?, ?)",
                    (guest.id, guest.namespace, guest.created_at, guest.expires_at),
                )
            links = [("ip", ip)] + ([("fingerprint", fingerprint)] if fingerprint is not None else [])
            # A link keeps its guest while that guest lives: a visit never moves an IP (or a
            # fingerprint) to whichever guest came last with it, which would let anyone take one over.
            await db.executemany(
                "INSERT INTO guest_links (namespace, kind, digest, guest_id, expires_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (namespace, kind, digest) DO UPDATE SET guest_id = excluded.guest_id,"
                " expires_at = excluded.expires_at"
                " WHERE guest_links.guest_id = excluded.guest_id OR guest_links.expires_at <= ?",
                [(namespace, kind, digest, guest.id, guest.expires_at, now) for kind, digest in links],
            )
            return guest, created

        return await self._transaction(find_or_create)

    async def get_guest(self, guest_id: str, now: float) -> GuestRecord | None:
        rows = await self._all(
            "SELECT id, namespace, created_at, expires_at FROM guests WHERE id = ? AND expires_at > ?",
            (guest_id, now),
        )
        return GuestRecord(*rows[0]) if rows else None
