"""Retention: how long a session is kept after its last activity, and what then happens to it.

Pure policy, no I/O. A session's rule comes from, in order of precedence:

1. the session itself: ``temporary`` (deleted once idle for the configured temporary TTL), or
   its own ``retention`` (set on create or PATCH; the two exclude each other);
2. its agent's rule in the configuration (``[retention.agents.ID]``);
3. its namespace's rule in the configuration (``[retention.namespaces.NAME]``);
4. otherwise it is kept for ever.

A rule is due once ``ttl_seconds`` have passed since the session's ``last_active_at``. Then
``delete`` removes the session with everything in it, and ``keep_latest`` keeps only the newest
``keep_latest`` messages of its active path (see ``kept_ids``); a session with no more messages
than that is left as it is.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec

from actors.core.tree import MessageTree

__all__ = [
    "MAX_TTL_SECONDS",
    "ExpiredRow",
    "ExpiryOutcome",
    "ExpiryQuery",
    "Retention",
    "RetentionAction",
    "RetentionRules",
    "effective",
    "epoch_of",
    "is_due",
    "kept_ids",
]

RetentionAction = Literal["delete", "keep_latest"]
ExpiryOutcome = Literal["deleted", "trimmed", "busy", "kept"]
"""What a session did with the sweeper's ``ExpireSession``: ``busy`` (a task runs or waits, or
a stream is open: asked again at a later sweep) and ``kept`` (not due after all) change nothing."""

MAX_TTL_SECONDS = 100 * 365 * 86400.0  # a century; to keep a session for ever, give it no rule
_MAX_KEEP = 1_000_000


class Retention(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A retention rule: ``ttl_seconds`` after the last activity, ``action`` is done: ``delete``
    the session, or ``keep_latest`` (only the newest ``keep_latest`` messages of its active path
    stay)."""

    ttl_seconds: Annotated[float, msgspec.Meta(gt=0, le=MAX_TTL_SECONDS)]
    action: RetentionAction = "delete"
    keep_latest: Annotated[int, msgspec.Meta(ge=1, le=_MAX_KEEP)] | None = None

    def __post_init__(self) -> None:
        # msgspec turns a ValueError here into a ValidationError (422 at the edge).
        if self.action == "keep_latest" and self.keep_latest is None:
            raise ValueError("keep_latest (a number of messages) is required with action 'keep_latest'")
        if self.action == "delete" and self.keep_latest is not None:
            raise ValueError("keep_latest goes only with action 'keep_latest'")


class RetentionRules(msgspec.Struct, frozen=True, kw_only=True):
    """The configured rules: per namespace, per agent, and the idle TTL of temporary sessions."""

    namespaces: dict[str, Retention] = msgspec.field(default_factory=dict)
    agents: dict[str, Retention] = msgspec.field(default_factory=dict)
    temporary_ttl_seconds: float = 900.0

    def configured(self, namespace: str, agent_id: str | None) -> Retention | None:
        """The configured rule of a session in ``namespace`` with ``agent_id`` (agent first)."""
        if agent_id is not None and agent_id in self.agents:
            return self.agents[agent_id]
        return self.namespaces.get(namespace)


def effective(
    *, temporary: bool, own: Retention | None, configured: Retention | None, temporary_ttl: float
) -> Retention | None:
    """The rule that applies to a session (None: kept for ever)."""
    if temporary:
        return Retention(ttl_seconds=temporary_ttl)
    return own if own is not None else configured


def epoch_of(rfc3339: str) -> float:
    """Seconds since the epoch of a stored timestamp such as ``2026-12-01T11:30:53.123456Z``."""
    return datetime.fromisoformat(rfc3339).timestamp()


def is_due(rule: Retention, last_active_at: str, message_count: int, now: float) -> bool:
    """Whether ``rule`` acts on a session last active at ``last_active_at`` now."""
    if epoch_of(last_active_at) + rule.ttl_seconds > now:
        return False
    return rule.action == "delete" or message_count > (rule.keep_latest or 0)


def kept_ids(tree: MessageTree, keep: int) -> list[str]:
    """What ``keep_latest`` keeps: the newest ``keep`` messages of the active path, oldest first.

    Everything else goes: the older part of the path, every other branch (edits and
    regenerations, wherever they fork off) and anything below the active leaf. The oldest kept
    message becomes the root, so the tree stays one valid path with its active leaf.
    """
    return [node.id for node in tree.active_path()[-keep:]] if keep > 0 else []


class ExpiryQuery(msgspec.Struct, frozen=True, kw_only=True):
    """What the store is asked for: sessions due now, at most ``limit``, oldest first per rule.

    ``now`` is epoch seconds, and ``before(ttl)`` its RFC 3339 text ``ttl`` seconds earlier:
    the stored ``last_active_at`` is compared as text, as sessions are listed.
    """

    now: float
    rules: RetentionRules
    limit: int
    skip: tuple[str, ...] = ()  # sessions the sweeper postponed (in use at its last look)

    def before(self, ttl_seconds: float) -> str:
        return datetime.fromtimestamp(self.now - ttl_seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ExpiredRow(msgspec.Struct, frozen=True):
    """A session the store found due: enough to ask it (its rule is settled by the actor)."""

    id: str
    namespace: str
    agent_id: str | None
