"""Session tokens and guests in PostgreSQL: each call one transaction of its own, outside group commit.

Every change to a family's refresh tokens happens while holding that family's row lock
(``SELECT ... FOR UPDATE``), so rotations, reuse detection and revocation of one family run
one after another across every node, as BEGIN IMMEDIATE makes them in SQLite. Finding or
creating a guest takes advisory locks on the guest's witnesses first.
"""

from __future__ import annotations

import hashlib

import asyncpg  # type: ignore[import-untyped]
import msgspec

from actors.store.pg_base import PgConnection, pg_text, row_count
from actors.store.tables import GuestRecord, RefreshLimit, RefreshOutcome, RefreshTokenRecord, TokenFamilyRecord

__all__ = ["PgAuthTables"]

_enc = msgspec.json.Encoder()

# Guests lock (class, key) pairs: Postgres keeps these apart from single-bigint keys like the above.
_GUEST_LOCK_CLASS = 0x5E55_6E5

_GUEST_BY_LINK = (
    "SELECT g.id, g.namespace, g.created_at, g.expires_at FROM guest_links l"
    " JOIN guests g ON g.id = l.guest_id"
    " WHERE l.namespace = $1 AND l.kind = $2 AND l.digest = $3 AND g.expires_at > $4"
)

# A link keeps its guest while that guest lives: a visit never moves an IP (or a fingerprint)
# to whichever guest came last with it, which would let anyone take a guest over.
_UPSERT_GUEST_LINK = (
    "INSERT INTO guest_links (namespace, kind, digest, guest_id, expires_at) VALUES ($1, $2, $3, $4, $5)"
    " ON CONFLICT (namespace, kind, digest) DO UPDATE SET guest_id = excluded.guest_id,"
    " expires_at = excluded.expires_at"
    " WHERE guest_links.guest_id = excluded.guest_id OR guest_links.expires_at <= $6"
)

# SKIP LOCKED: a sweep never waits for a row another transaction holds, so it cannot deadlock.
_SWEEP_GUESTS = (
    "DELETE FROM guests WHERE id IN (SELECT id FROM guests WHERE expires_at <= $1 FOR UPDATE SKIP LOCKED)"
)

_SWEEP_GUEST_LINKS = (
    "DELETE FROM guest_links WHERE (namespace, kind, digest) IN"
    " (SELECT namespace, kind, digest FROM guest_links WHERE expires_at <= $1 FOR UPDATE SKIP LOCKED)"
)

_dec_family = msgspec.json.Decoder(TokenFamilyRecord)


def _guest_lock(namespace: str, kind: str, digest: str) -> int:
    """A signed 32-bit advisory lock key for one witness, the same on every node."""
    raw = hashlib.sha256(f"{namespace}\0{kind}\0{digest}".encode()).digest()
    return int.from_bytes(raw[:4], "big", signed=True)



class PgAuthTables(PgConnection):
    """The session-token and guest tables (a base of PostgresStore)."""

    @staticmethod
    def _family(body: str, revoked_at: str | None) -> TokenFamilyRecord:
        family = _dec_family.decode(body)
        family.revoked_at = revoked_at
        return family

    async def put_token_family(self, family: TokenFamilyRecord, token: RefreshTokenRecord) -> None:
        async def write(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "INSERT INTO token_families (id, session_id, body, revoked_at) VALUES ($1, $2, $3, $4)",
                family.id, pg_text(family.session_id), _enc.encode(family).decode(), family.revoked_at,
            )
            await conn.execute(
                "INSERT INTO refresh_tokens (hash, family_id, created_at, expires_at, used_at)"
                " VALUES ($1, $2, $3, $4, $5)",
                token.hash, token.family_id, token.created_at, token.expires_at, token.used_at,
            )

        await self._transaction(write)

    async def get_token_family(self, family_id: str) -> TokenFamilyRecord | None:
        rows = await self._fetch("SELECT body, revoked_at FROM token_families WHERE id = $1", family_id)
        return self._family(rows[0][0], rows[0][1]) if rows else None

    async def rotate_refresh_token(
        self, old_hash: str, new: RefreshTokenRecord, now: float, when: str, *, limit: RefreshLimit | None = None
    ) -> RefreshOutcome:
        async def rotate(conn: asyncpg.Connection) -> RefreshOutcome:
            family_id = await conn.fetchval("SELECT family_id FROM refresh_tokens WHERE hash = $1", old_hash)
            if family_id is None:
                return RefreshOutcome("unknown")
            fam = await conn.fetchrow(
                "SELECT body, revoked_at FROM token_families WHERE id = $1 FOR UPDATE", family_id
            )
            if fam is None:
                return RefreshOutcome("unknown")
            family = self._family(fam[0], fam[1])
            # Read the token again under the family's lock: this statement sees every change
            # committed by whoever held the lock before (READ COMMITTED takes a new snapshot).
            token = await conn.fetchrow("SELECT expires_at, used_at FROM refresh_tokens WHERE hash = $1", old_hash)
            if token is None:
                return RefreshOutcome("unknown")
            expires_at, used_at = token
            if used_at is not None or family.revoked_at is not None:
                # A rotated token came back: it was copied. End the family (both holders).
                if family.revoked_at is None:
                    await conn.execute("UPDATE token_families SET revoked_at = $1 WHERE id = $2", when, family_id)
                    family.revoked_at = when
                await conn.execute("DELETE FROM refresh_tokens WHERE family_id = $1", family_id)
                return RefreshOutcome("reused", family)
            if expires_at <= now:
                return RefreshOutcome("expired", family)
            if limit is not None:
                made = await conn.fetchval(
                    "SELECT count(*) FROM refresh_tokens WHERE family_id = $1 AND created_at > $2",
                    family_id, limit.since,
                )
                if made >= limit.at_most:
                    return RefreshOutcome("rate_limited", family)
            await conn.execute("UPDATE refresh_tokens SET used_at = $1 WHERE hash = $2", when, old_hash)
            await conn.execute(
                "INSERT INTO refresh_tokens (hash, family_id, created_at, expires_at, used_at)"
                " VALUES ($1, $2, $3, $4, NULL)",
                new.hash, family_id, new.created_at, new.expires_at,
            )
            # Used tokens are kept (to catch their reuse) only while they would still be valid.
            await conn.execute(
                "DELETE FROM refresh_tokens WHERE family_id = $1 AND used_at IS NOT NULL AND expires_at <= $2",
                family_id, now,
            )
            return RefreshOutcome("rotated", family)

        return await self._transaction(rotate)

    async def revoke_session_tokens(self, session_id: str) -> int:
        async def revoke(conn: asyncpg.Connection) -> int:
            # Ordered locks: two revocations of one session never wait on each other in a cycle.
            rows = await conn.fetch(
                "SELECT id FROM token_families WHERE session_id = $1 ORDER BY id FOR UPDATE", pg_text(session_id)
            )
            ids = [r[0] for r in rows]
            if not ids:
                return 0
            await conn.execute("DELETE FROM refresh_tokens WHERE family_id = ANY($1::text[])", ids)
            return row_count(await conn.execute("DELETE FROM token_families WHERE id = ANY($1::text[])", ids))

        return await self._transaction(revoke)

    @staticmethod
    async def _match_guest(
        conn: asyncpg.Connection | asyncpg.Pool, namespace: str, ip: str | None, fingerprint: str | None, now: float
    ) -> GuestRecord | None:
        # The fingerprint is the better witness (many visitors may share an IP): it goes first.
        for kind, digest in (("fingerprint", fingerprint), ("ip", ip)):
            if digest is not None:
                row = await conn.fetchrow(_GUEST_BY_LINK, pg_text(namespace), kind, digest, now)
                if row is not None:
                    return GuestRecord(row[0], row[1], row[2], row[3])
        return None

    async def find_guest(
        self, namespace: str, ip: str | None, fingerprint: str | None, now: float
    ) -> GuestRecord | None:
        assert self._pool is not None
        return await self._match_guest(self._pool, namespace, ip, fingerprint, now)

    async def find_or_create_guest(
        self, namespace: str, ip: str, fingerprint: str | None, new: GuestRecord, now: float
    ) -> tuple[GuestRecord, bool]:
        links = [("ip", ip)] + ([("fingerprint", fingerprint)] if fingerprint is not None else [])

        async def find_or_create(conn: asyncpg.Connection) -> tuple[GuestRecord, bool]:
            # Two visits that could be the same guest share a witness, so they share its lock and
            # run one after the other; locks are taken in one order everywhere (no deadlock).
            for key in sorted({_guest_lock(namespace, kind, digest) for kind, digest in links}):
                await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", _GUEST_LOCK_CLASS, key)
            guest = await self._match_guest(conn, namespace, ip, fingerprint, now)
            created = guest is None
            if guest is None:
                guest = new
                await conn.execute(
                    "INSERT INTO guests (id, namespace, created_at, expires_at) VALUES ($1, $2, $3, $4)",
                    guest.id, pg_text(guest.namespace), guest.created_at, guest.expires_at,
                )
            await conn.executemany(
                _UPSERT_GUEST_LINK,
                [(pg_text(namespace), kind, digest, guest.id, guest.expires_at, now) for kind, digest in links],
            )
            return guest, created

        guest, created = await self._transaction(find_or_create)
        if created:
            # Expired guests go when a new one comes, in a transaction of its own: one that also
            # held this visit's link rows could wait on another visit waiting on it.
            async def sweep(conn: asyncpg.Connection) -> None:
                await conn.execute(_SWEEP_GUESTS, now)
                await conn.execute(_SWEEP_GUEST_LINKS, now)

            await self._transaction(sweep)
        return guest, created

    async def get_guest(self, guest_id: str, now: float) -> GuestRecord | None:
        rows = await self._fetch(
            "SELECT id, namespace, created_at, expires_at FROM guests WHERE id = $1 AND expires_at > $2",
            guest_id, now,
        )
        return GuestRecord(rows[0][0], rows[0][1], rows[0][2], rows[0][3]) if rows else None
