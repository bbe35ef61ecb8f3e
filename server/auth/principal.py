"""Who is calling, and what they may see."""

from __future__ import annotations

import msgspec
from aiohttp import web

from actors.core.errors import ForbiddenError, NotFoundError
from actors.ports import SessionRef
from actors.store.tables import DocumentRecord

__all__ = ["PRINCIPAL", "SESSION", "Principal", "authorize_session", "principal_of", "require_key"]


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """An authenticated caller: an API key (maybe acting for an end user) or a session token."""

    kind: str  # "key" | "token"
    key_id: str | None = None  # for a token: the key that minted it
    end_user_id: str | None = None
    session_id: str | None = None  # set for a session token: the only session it grants
    namespace: str | None = None
    guest_id: str | None = None  # a token of a guest session
    family_id: str | None = None  # a token's grant (revoked as a whole)

    def can_see(self, session_id: str, namespace: str, end_user_id: str | None) -> bool:
        if self.session_id is not None and self.session_id != session_id:
            return False
        if self.namespace is not None and self.namespace != namespace:
            return False
        return self.end_user_id is None or self.end_user_id == end_user_id

    def can_read(self, doc: DocumentRecord) -> bool:
        """A document: an API key sees every one; acting for an end user, that user's and the
        shared ones; a session token, its session's and its guest's."""
        if self.kind == "key":
            return self.end_user_id is None or doc.shared or doc.end_user_id == self.end_user_id
        # A session token: its own session's uploads, and its guest's (a guest's other sessions).
        if doc.session_id is not None and doc.session_id == self.session_id:
            return True
        return self.guest_id is not None and doc.guest_id == self.guest_id


def authorize_session(principal: Principal, session_id: str, namespace: str, end_user_id: str | None) -> None:
    """404 (never 403) for a session the caller may not see: no existence oracle."""
    if not principal.can_see(session_id, namespace, end_user_id):
        raise NotFoundError(f"no session {session_id}")


def require_key(principal: Principal, *, for_end_user: bool = True) -> None:
    """403 unless the caller holds an API key (acting for an end user only if ``for_end_user``)."""
    if principal.kind != "key":
        raise ForbiddenError("this needs an API key; a session token cannot do it")
    if not for_end_user and principal.end_user_id is not None:
        raise ForbiddenError("this needs an API key that is not acting for an end user (drop X-End-User-ID)")


PRINCIPAL = web.RequestKey("principal", Principal)
# The route's ``{session_id}``, looked up and authorized once by the auth middleware.
SESSION: web.RequestKey[SessionRef] = web.RequestKey("session")


def principal_of(request: web.Request) -> Principal:
    """The caller the auth middleware authenticated for this request."""
    return request[PRINCIPAL]
