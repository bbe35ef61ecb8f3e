"""Share links: the bodies of making one and of continuing one as a copy, a link as its owner
sees it, and the shared conversation as anyone with the link sees it."""

from __future__ import annotations

from typing import Annotated

import msgspec

from server.schema.common import RequestBody

__all__ = [
    "MAX_SHARE_SECONDS",
    "CreateShareBody",
    "ShareCopyBody",
    "ShareCreated",
    "ShareList",
    "ShareOut",
    "SharedConversation",
    "SharedMessage",
]

MAX_SHARE_SECONDS = 10 * 365 * 86400
"""The furthest a link's expiry may be: ten years."""


class CreateShareBody(RequestBody):
    # The last message shown (any message of the session); None: the active leaf at this moment.
    message_id: str | None = None
    # When the link stops working: in seconds from now, or at an RFC 3339 time (not both).
    expires_in: Annotated[int, msgspec.Meta(ge=1, le=MAX_SHARE_SECONDS)] | None = None
    expires_at: Annotated[str, msgspec.Meta(max_length=64)] | None = None


class ShareOut(msgspec.Struct):
    """A link as the session's owner sees it (never its token: only its hash is kept)."""

    id: str
    session_id: str
    message_id: str | None  # the last message the link shows
    created_at: str
    expires_at: str | None  # None: until revoked


class ShareCreated(ShareOut):
    """The answer that made a link: the only time its token is ever shown."""

    token: str
    url: str  # the chat page showing the conversation read-only


class ShareList(msgspec.Struct):
    items: list[ShareOut]


class SharedMessage(msgspec.Struct):
    """One message of a shared conversation: who, what and when, nothing else."""

    id: str
    role: str
    content: str
    created_at: str
    status: str
    hint: bool = False  # a user turn made from a restore hint
    # Only with ?format=html: the content rendered as Markdown and sanitized.
    content_html: str | None = None


class SharedConversation(msgspec.Struct):
    """What a share link shows: the title and the path from the root to the link's message."""

    title: str | None
    messages: list[SharedMessage]
    shared_at: str
    expires_at: str | None


class ShareCopyBody(RequestBody):
    title: str | None = None  # None: the shared conversation's title
    namespace: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] = "default"
