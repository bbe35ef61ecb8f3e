"""Rate limits at the HTTP edge: whom a model turn counts against, and the guard around it.

Every request that starts a model turn (send, edit, regenerate, restore with a hint) asks its
session through ``turn_quota`` (server/tasks.py): the message is checked and counted before the
session sees it, taken back if the session refuses it, and the turn's model tokens are counted
when it ends, however the client leaves: they are reserved at admission (the message's
estimate plus ``[limits] reserve_reply_tokens``) and settled to the real usage at the end.

A share link is opened with no credential at all, so each opening is counted against the
client's address instead (``admit_share_view``), by the same limiter.
"""

from __future__ import annotations

import asyncio
import time
from typing import TypeVar

from aiohttp import web

from actors.core.commands import Command
from actors.core.errors import SessiondError
from actors.core.records import SessionRecord
from actors.core.replies import TaskHandle, TurnOutcome
from server.appkeys import CONFIG, LIMITER
from server.auth.guests import normalize_ip
from server.auth.principal import principal_of
from server.auth.ratelimit import Admission, Limiter, LimitReachedError, Subject, SubjectKind
from server.config import LimitSet, LimitsSection
from server.routes.common import ask, session_of

__all__ = ["TurnQuota", "admit_share_view", "guest_subject", "subjects_for", "subjects_of", "turn_quota"]

R = TypeVar("R")


def guest_subject(settings: LimitsSection, guest_id: str) -> Subject:
    return Subject(
        f"guest:{guest_id}",
        "guest",
        settings.guest_messages_per_hour,
        settings.guest_messages_per_day,
        settings.guest_tokens_per_day,
    )


def _subject(name: str, kind: SubjectKind, limits: LimitSet | None) -> Subject | None:
    if limits is None:
        return None
    return Subject(
        name, kind, limits.messages_per_hour or 0, limits.messages_per_day or 0, limits.tokens_per_day or 0
    )


def subjects_for(settings: LimitsSection, key_id: str | None, record: SessionRecord) -> list[Subject]:
    """The guest of a guest session, the API key behind the call, the session's end user:
    each that has limits configured."""
    return subjects_of(settings, key_id, guest_id=record.guest_id, end_user_id=record.end_user_id)


def subjects_of(
    settings: LimitsSection, key_id: str | None, *, guest_id: str | None, end_user_id: str | None
) -> list[Subject]:
    """The guest, the API key, the end user: each that has limits configured."""
    out: list[Subject] = []
    if guest_id is not None:
        out.append(guest_subject(settings, guest_id))
    if key_id is not None:
        s = _subject(f"key:{key_id}", "key", settings.keys.get(key_id) or settings.keys.get("*"))
        if s is not None:
            out.append(s)
    if end_user_id is not None:
        limits = settings.end_users.get(end_user_id) or settings.end_users.get("*")
        s = _subject(f"user:{end_user_id}", "end_user", limits)
        if s is not None:
            out.append(s)
    return out


class TurnQuota:
    """A message counted against its subjects: ``quota = await turn_quota(request)``, then
    ``await quota.ask(command)`` in place of ``ask(request, command)``."""

    def __init__(self, request: web.Request, subjects: list[Subject], admission: Admission | None) -> None:
        self._request = request
        self._limiter: Limiter = request.app[LIMITER]
        self._subjects = subjects
        self._admission = admission

    async def ask(self, command: Command[R]) -> R:
        """Ask the session; a refusal takes the message back, a started turn has its tokens counted."""
        try:
            result = await ask(self._request, command)
        except SessiondError:
            # Refused by the session (busy, stale version, bad request): that message never was.
            if self._admission is not None:
                await self._limiter.refund(self._admission)
            raise
        if isinstance(result, TaskHandle) and result.repeated:
            # A repeat of an idempotent request starts nothing: the first one was counted.
            if self._admission is not None:
                await self._limiter.refund(self._admission)
            return result
        if self._subjects and isinstance(result, TaskHandle):
            result.done.add_done_callback(self._ended)
        return result

    def _ended(self, fut: asyncio.Future[TurnOutcome]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return  # what it used is unknown: the reservation stands
        tokens = fut.result().usage.total
        if self._admission is not None:
            self._limiter.settle(self._admission, tokens)
        elif tokens > 0:
            self._limiter.record_tokens(self._subjects, tokens, time.time())


_CHARS_PER_TOKEN = 4


async def turn_quota(request: web.Request, *, charge: bool = True, content: str = "") -> TurnQuota:
    """Check and count one message for the caller's session (429 when over a limit), reserving
    the tokens of ``content`` and of the longest answer expected.

    ``charge=False``: this request starts no turn (a restore without a hint); nothing is counted.
    """
    if not charge:
        return TurnQuota(request, [], None)
    # The session was authorized before (auth middleware): no 429 for a session one may not see.
    record = session_of(request).record
    settings = request.app[CONFIG].limits
    subjects = subjects_for(settings, principal_of(request).key_id, record)
    reserve = len(content) // _CHARS_PER_TOKEN + settings.reserve_reply_tokens
    admission = await request.app[LIMITER].admit(subjects, time.time(), reserve) if subjects else None
    return TurnQuota(request, subjects, admission)


async def admit_share_view(request: web.Request) -> None:
    """Count one opening of a share link against the client's address (429 past
    ``[limits] share_views_per_hour`` or ``share_views_per_day``); found or not, so that
    guessing tokens is bounded as much as reading."""
    settings = request.app[CONFIG].limits
    if settings.share_views_per_hour <= 0 and settings.share_views_per_day <= 0:
        return
    remote = request.remote or "unknown"
    try:
        address = normalize_ip(remote)
    except SessiondError:  # not an IP address (a Unix socket): one address for all of them
        address = remote
    subject = Subject(f"address:{address}", "address", settings.share_views_per_hour, settings.share_views_per_day)
    try:
        await request.app[LIMITER].admit([subject], time.time())
    except LimitReachedError as exc:
        per = "hour" if exc.limit.endswith("_per_hour") else "day"
        limit = settings.share_views_per_hour if per == "hour" else settings.share_views_per_day
        raise LimitReachedError(
            f"this address opened share links {limit} times this {per} (UTC), the most"
            f" [limits] share_views_per_{per} allows",
            limit=f"share_views_per_{per}",
            retry_after=exc.retry_after or 1,
        ) from None
