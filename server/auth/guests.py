"""Guests: anonymous visitors, recognised again by browser fingerprint or by IP address.

The same fingerprint from a new IP is the same guest; the same IP with a new fingerprint is the
same guest (the fingerprint is asked first: many visitors may share one IP). Each match links
the other witness to the guest too. A guest lives ``guests.ttl_seconds`` from its creation.

IPs and fingerprints are never stored: only an HMAC of them under the server's secret.
Two directories behind one interface: the store (one process) and Redis (shared by every
process, one atomic script per find-or-create).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import re
import time
from typing import TYPE_CHECKING, Protocol

import msgspec
from redis.exceptions import RedisError

from actors.core.errors import InvalidRequestError, UnavailableError
from actors.core.ids import new_id, utcnow
from actors.store.base import Store
from actors.store.tables import GuestRecord

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "GuestOut",
    "Guests",
    "RedisGuests",
    "StoreGuests",
    "Witnesses",
    "guest_out",
    "normalize_ip",
    "verify_signed_id",
]

log = logging.getLogger("sessiond.guests")


class GuestOut(msgspec.Struct):
    id: str
    namespace: str
    created_at: str
    expires_at: str


def guest_out(g: GuestRecord) -> GuestOut:
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(g.expires_at))
    return GuestOut(g.id, g.namespace, g.created_at, expires)


def normalize_ip(raw: str) -> str:
    """The IP as a guest witness: an IPv4 address (an IPv4-mapped IPv6 one is the same), or the
    /64 network of an IPv6 one (one subscriber holds a whole /64: each of its addresses is not a
    new visitor)."""
    try:
        ip = ipaddress.ip_address(raw.strip())
    except ValueError:
        raise InvalidRequestError(f"ip {raw!r} is not an IPv4 or IPv6 address") from None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


_SIGNED_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_MIN_ID_SECRET = 32


def verify_signed_id(secret: str, signed: str) -> str:
    """The visitor id in ``ID.SIGNATURE`` signed by the site's backend with ``[guests] id_secret``
    (SIGNATURE: base64url, unpadded, of HMAC-SHA256(secret, ID)); 422 for anything else."""
    if not secret:
        raise InvalidRequestError("signed_id needs [guests] id_secret, shared with the site's backend")
    if len(secret) < _MIN_ID_SECRET:
        raise InvalidRequestError(f"[guests] id_secret must be at least {_MIN_ID_SECRET} characters")
    visitor, _, signature = signed.partition(".")
    if not _SIGNED_ID.fullmatch(visitor):
        raise InvalidRequestError("signed_id must be ID.SIGNATURE, ID of 1 to 128 letters, digits, _ or -")
    expected = base64.urlsafe_b64encode(hmac.new(secret.encode(), visitor.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(expected.rstrip(b"=").decode(), signature):
        raise InvalidRequestError("signed_id is not signed with [guests] id_secret")
    return visitor


class Witnesses:
    """Keyed digests of what identifies a guest: stored and compared instead of the values."""

    def __init__(self, secret: str) -> None:
        self._key = hashlib.sha256(b"sessiond guest witness\0" + secret.encode()).digest()

    def digest(self, kind: str, namespace: str, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        msg = f"{kind}\0{namespace}\0{value}".encode()
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()


class Guests(Protocol):
    async def find_or_create(
        self, namespace: str, ip: str, fingerprint: str | None, *, signed: str | None = None
    ) -> tuple[GuestRecord, bool]:
        """The guest of ``signed`` (a visitor id the site's backend signed) alone, if given:
        the IP and fingerprint then neither find it nor are linked to it. Else by fingerprint,
        then IP (the fallback, with its risk: docs/auth.md)."""

    async def find(self, namespace: str, ip: str | None, fingerprint: str | None) -> GuestRecord | None: ...

    async def get(self, guest_id: str) -> GuestRecord | None: ...


def _witnesses(
    w: Witnesses, namespace: str, ip: str, fingerprint: str | None, signed: str | None
) -> tuple[str, str | None]:
    """The digests a guest is found and linked by: a signed visitor id alone (kept in the IP's
    place, in a digest domain of its own, so no IP can ever match it), else IP and fingerprint."""
    if signed is not None:
        digest = w.digest("signed", namespace, signed)
        assert digest is not None
        return digest, None
    ip_d = w.digest("ip", namespace, ip)
    assert ip_d is not None
    return ip_d, w.digest("fingerprint", namespace, fingerprint)


def _new_guest(namespace: str, ttl: int) -> GuestRecord:
    return GuestRecord(new_id("gst"), namespace, utcnow(), time.time() + ttl)


class StoreGuests:
    """Guests kept in the store (the default, for one process)."""

    def __init__(self, store: Store, witnesses: Witnesses, ttl_seconds: int) -> None:
        self._store = store
        self._w = witnesses
        self._ttl = ttl_seconds

    async def find_or_create(
        self, namespace: str, ip: str, fingerprint: str | None, *, signed: str | None = None
    ) -> tuple[GuestRecord, bool]:
        ip_d, fp_d = _witnesses(self._w, namespace, ip, fingerprint, signed)
        return await self._store.find_or_create_guest(
            namespace, ip_d, fp_d, _new_guest(namespace, self._ttl), time.time()
        )

    async def find(self, namespace: str, ip: str | None, fingerprint: str | None) -> GuestRecord | None:
        return await self._store.find_guest(
            namespace,
            self._w.digest("ip", namespace, ip),
            self._w.digest("fingerprint", namespace, fingerprint),
            time.time(),
        )

    async def get(self, guest_id: str) -> GuestRecord | None:
        return await self._store.get_guest(guest_id, time.time())


_dec_guest = msgspec.json.Decoder(GuestRecord)
_enc = msgspec.json.Encoder()

# KEYS: fingerprint link (or a key never set, when there is no fingerprint), ip link, the new
# guest's own key. ARGV: the new guest (JSON), its expiry in ms since the epoch, "1" if a
# fingerprint was given. Every link expires with its guest.
_FIND_OR_CREATE = """
local found = false
if ARGV[3] == '1' then found = redis.call('GET', KEYS[1]) end
if not found then found = redis.call('GET', KEYS[2]) end
local guest = found
local expires = ARGV[2]
local created = 0
if found then
  expires = tostring(math.floor(cjson.decode(found)['expires_at'] * 1000))
else
  guest = ARGV[1]
  created = 1
  redis.call('SET', KEYS[3], guest, 'PXAT', expires)
end
-- A link keeps its guest while that guest lives (a link expires with it): never moved to
-- whichever guest came last with that IP or fingerprint.
local function link(key)
  local current = redis.call('GET', key)
  if not current or current == guest then redis.call('SET', key, guest, 'PXAT', expires) end
end
link(KEYS[2])
if ARGV[3] == '1' then link(KEYS[1]) end
return {guest, created}
"""


def _unavailable(exc: Exception) -> UnavailableError:
    log.warning("the guest directory in Redis failed: %s", exc)
    return UnavailableError("guests cannot be looked up right now")


class RedisGuests:
    """Guests kept in Redis, so every server process recognises the same visitor."""

    def __init__(self, redis: Redis, witnesses: Witnesses, ttl_seconds: int, prefix: str = "sessiond:guest:") -> None:
        self._redis = redis
        self._w = witnesses
        self._ttl = ttl_seconds
        self._prefix = prefix
        self._script = redis.register_script(_FIND_OR_CREATE)

    def _link(self, kind: str, digest: str) -> str:
        return f"{self._prefix}{kind}:{digest}"

    async def find_or_create(
        self, namespace: str, ip: str, fingerprint: str | None, *, signed: str | None = None
    ) -> tuple[GuestRecord, bool]:
        ip_d, fp_d = _witnesses(self._w, namespace, ip, fingerprint, signed)
        new = _new_guest(namespace, self._ttl)
        keys = [
            self._link("fp", fp_d or "none"),
            self._link("ip", ip_d),
            self._link("id", new.id),
        ]
        args: list[bytes | str] = [_enc.encode(new), str(int(new.expires_at * 1000)), "1" if fp_d else "0"]
        try:
            raw, created = await self._script(keys=keys, args=args)
        except RedisError as exc:
            raise _unavailable(exc) from None
        return _dec_guest.decode(raw), bool(created)

    async def find(self, namespace: str, ip: str | None, fingerprint: str | None) -> GuestRecord | None:
        for kind, value, short in (("fingerprint", fingerprint, "fp"), ("ip", ip, "ip")):
            digest = self._w.digest(kind, namespace, value)
            if digest is not None:
                try:
                    raw = await self._redis.get(self._link(short, digest))
                except RedisError as exc:
                    raise _unavailable(exc) from None
                if raw is not None:
                    return _dec_guest.decode(raw)
        return None

    async def get(self, guest_id: str) -> GuestRecord | None:
        try:
            raw = await self._redis.get(self._link("id", guest_id))
        except RedisError as exc:
            raise _unavailable(exc) from None
        return _dec_guest.decode(raw) if raw is not None else None
