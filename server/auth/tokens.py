"""Session tokens: short-lived JWT access tokens and opaque refresh tokens rotated on every use.

An access token is an HS256 JWT (the algorithm is pinned when decoding) naming one session.
A refresh token is ``rt_<random>``, kept only as a hash. Both belong to a *family* (one grant):
presenting a refresh token that was already rotated means two parties hold copies of it, so the
family is revoked and every token of it stops working, including live access tokens, which are
checked against their family on every request.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any

import jwt
import msgspec

from actors.core.errors import RateLimitedError, UnauthorizedError
from actors.core.ids import new_id, utcnow
from actors.core.records import SessionRecord
from actors.store.base import Store
from actors.store.tables import RefreshLimit, RefreshTokenRecord, TokenFamilyRecord
from server.auth.keys import hash_secret
from server.auth.principal import Principal
from server.config import ConfigError, TokensSection

__all__ = ["REFRESH_PREFIX", "TokenExpiredError", "TokenPair", "TokenService", "load_secret"]

log = logging.getLogger("sessiond.auth")

REFRESH_PREFIX = "rt_"
_ALGORITHM = "HS256"
_REQUIRED = ["exp", "iat", "iss", "aud", "jti", "sid", "ns", "fam"]
_MIN_SECRET = 32
_LEEWAY = 5  # seconds: clocks of several servers may differ a little
# A browser sends the same access token for its whole life: its verified claims are remembered
# (decoding costs ~100 us), and a live family is re-read from the store at most this often.
# Revocations made by this process take effect at once; those made by another, within this.
_VERIFIED_MAX = 10_000
_FAMILY_RECHECK_SECONDS = 2.0


class TokenExpiredError(UnauthorizedError):
    """An access token past its ``exp``: the client refreshes it (a stream says so as it ends)."""


class TokenPair(msgspec.Struct):
    session_id: str
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "Bearer"


class _Claims(msgspec.Struct):
    """The claims sessiond reads back (pyjwt has checked iss, aud, exp, iat and the signature)."""

    sid: str
    ns: str
    fam: str
    jti: str
    exp: int
    uid: str | None = None
    gid: str | None = None


def load_secret(settings: TokensSection, data_dir: Path) -> str:
    """The configured secret, else the one kept in the data dir (made on first start, 0600)."""
    if settings.secret:
        if len(settings.secret) < _MIN_SECRET:
            raise ConfigError(f"tokens.secret must be at least {_MIN_SECRET} characters")
        return settings.secret
    path = data_dir / settings.secret_file
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: of two servers starting on one data dir, one writes and the other reads.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = path.read_text().strip()
        if len(secret) < _MIN_SECRET:
            raise ConfigError(f"{path} holds no usable token secret; delete it to make a new one") from None
        return secret
    secret = secrets.token_urlsafe(48)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    log.info("created the token signing secret in %s", path)
    return secret



class TokenService:
    """Mints, checks and rotates the tokens of sessions."""

    def __init__(self, store: Store, settings: TokensSection, secret: str) -> None:
        self._store = store
        self._settings = settings
        self._secret = secret
        self._verified: dict[str, _Claims] = {}
        self._families: dict[str, tuple[float, TokenFamilyRecord]] = {}  # live ones, until a deadline

    @property
    def secret(self) -> str:
        return self._secret

    # -- minting ---------------------------------------------------------------------------

    async def issue(self, record: SessionRecord, key_id: str | None) -> TokenPair:
        """A new family for ``record``'s session: an access token and a refresh token."""
        family = TokenFamilyRecord(
            id=new_id("tkf"),
            session_id=record.id,
            namespace=record.namespace,
            created_at=utcnow(),
            end_user_id=record.end_user_id,
            guest_id=record.guest_id,
            key_id=key_id,
        )
        refresh, stored = self._new_refresh(family.id)
        await self._store.put_token_family(family, stored)
        return TokenPair(family.session_id, self._access(family), refresh, self._settings.access_ttl_seconds)

    def _new_refresh(self, family_id: str) -> tuple[str, RefreshTokenRecord]:
        token = REFRESH_PREFIX + secrets.token_urlsafe(32)
        expires = time.time() + self._settings.refresh_ttl_seconds
        return token, RefreshTokenRecord(hash_secret(token), family_id, utcnow(), expires)

    def _access(self, family: TokenFamilyRecord) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self._settings.issuer,
            "aud": self._settings.audience,
            "iat": now,
            "exp": now + self._settings.access_ttl_seconds,
            "jti": secrets.token_urlsafe(12),
            "sid": family.session_id,
            "ns": family.namespace,
            "fam": family.id,
        }
        if family.end_user_id is not None:
            claims["uid"] = family.end_user_id
        if family.guest_id is not None:
            claims["gid"] = family.guest_id
        return jwt.encode(claims, self._secret, algorithm=_ALGORITHM)

    # -- checking --------------------------------------------------------------------------

    def decode(self, token: str) -> dict[str, Any]:
        """The claims of a valid access token; 401 for anything else (expired, tampered...)."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._secret,
                algorithms=[_ALGORITHM],  # pinned: "none" or another algorithm is refused
                audience=self._settings.audience,
                issuer=self._settings.issuer,
                leeway=_LEEWAY,
                options={"require": _REQUIRED},
            )
        except jwt.ExpiredSignatureError:
            raise TokenExpiredError("the access token has expired; refresh it") from None
        except jwt.InvalidTokenError:
            raise UnauthorizedError("the access token is not valid") from None
        return claims

    def _claims(self, token: str) -> _Claims:
        claims = self._verified.get(token)
        if claims is not None:
            if time.time() <= claims.exp + _LEEWAY:
                return claims
            del self._verified[token]  # expired: decode() says so below
        try:
            claims = msgspec.convert(self.decode(token), _Claims)
        except msgspec.ValidationError:
            raise UnauthorizedError("the access token is not valid") from None
        if len(self._verified) >= _VERIFIED_MAX:
            del self._verified[next(iter(self._verified))]
        self._verified[token] = claims
        return claims

    async def _live_family(self, family_id: str) -> TokenFamilyRecord | None:
        now = time.monotonic()
        cached = self._families.get(family_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        family = await self._store.get_token_family(family_id)
        # A grant lives no longer than the API key that minted it (revoked by any process).
        if family is None or family.revoked_at is not None or await self._key_revoked(family.key_id):
            self._families.pop(family_id, None)
            return None
        if len(self._families) >= _VERIFIED_MAX:
            del self._families[next(iter(self._families))]
        self._families[family_id] = (now + _FAMILY_RECHECK_SECONDS, family)
        return family

    async def principal(self, token: str) -> Principal:
        claims = self._claims(token)
        family = await self._live_family(claims.fam)
        if family is None or family.session_id != claims.sid:
            raise UnauthorizedError("the access token was revoked")
        return Principal(
            kind="token",
            key_id=family.key_id,
            end_user_id=claims.uid,
            session_id=claims.sid,
            namespace=claims.ns,
            guest_id=claims.gid,
            family_id=claims.fam,
        )

    # -- rotation and revocation -----------------------------------------------------------

    async def refresh(self, presented: str) -> TokenPair:
        """Rotate: the presented refresh token dies, a new pair is born in its family."""
        if not presented.startswith(REFRESH_PREFIX):
            raise UnauthorizedError("send Authorization: Bearer rt_... (a refresh token)")
        token, stored = self._new_refresh("")
        now = time.time()
        an_hour_ago = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(now - 3600))  # as utcnow() writes
        outcome = await self._store.rotate_refresh_token(
            hash_secret(presented), stored, now, utcnow(),
            limit=RefreshLimit(an_hour_ago, self._settings.refreshes_per_hour),
        )
        family = outcome.family
        if outcome.status == "rate_limited":
            raise RateLimitedError(
                f"this grant was refreshed {self._settings.refreshes_per_hour} times in the last hour; "
                "the refresh token stays valid: refresh again later",
                retry_after=60,
            )
        if outcome.status == "reused":
            self._families.clear()  # that family is dead: no remembered "live" may outlast it
            assert family is not None
            log.warning(
                "a rotated refresh token was presented again: every token of family %s (session %s) is revoked",
                family.id,
                family.session_id,
            )
            raise UnauthorizedError("this refresh token was already used; every token of its grant is now revoked")
        if outcome.status != "rotated" or family is None:
            raise UnauthorizedError("the refresh token is expired or unknown")
        if await self._store.get_session(family.session_id) is None:
            await self.revoke_session(family.session_id)
            raise UnauthorizedError("the refresh token was revoked: its session is gone")
        if await self._key_revoked(family.key_id):
            raise UnauthorizedError("the refresh token was revoked with the API key that minted it")
        return TokenPair(family.session_id, self._access(family), token, self._settings.access_ttl_seconds)

    async def _key_revoked(self, key_id: str | None) -> bool:
        if key_id is None or key_id == "config":
            return False  # keys from config.toml are known only by hash; removing them is the revocation
        key = await self._store.get_api_key(key_id)
        return key is None or key.revoked_at is not None

    async def revoke_session(self, session_id: str) -> None:
        await self._store.revoke_session_tokens(session_id)
        self._families.clear()

    def forget_grants(self) -> None:
        """Read every grant from the store again at its next use (an API key was revoked here:
        the tokens it minted die with it at once)."""
        self._families.clear()
