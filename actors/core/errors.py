"""The SessiondError family: every domain failure, with its HTTP status and stable code."""

from __future__ import annotations

__all__ = [
    "ActorCrashedError",
    "ActorStoppedError",
    "BadHeaderError",
    "ConflictError",
    "DependencyUnavailableError",
    "FencedError",
    "ForbiddenError",
    "InvalidRequestError",
    "MailboxFullError",
    "NotFoundError",
    "NotImplementedYetError",
    "OverloadedError",
    "PayloadTooLargeError",
    "PreconditionFailedError",
    "RateLimitedError",
    "SessiondError",
    "StoreClosedError",
    "StoreUnavailableError",
    "TaskRunningError",
    "UnauthorizedError",
    "UnavailableError",
    "UnsupportedMediaTypeError",
]


class SessiondError(Exception):
    """Root of every error sessiond reports to a client."""

    status: int = 500
    code: str = "internal_error"
    title: str = "Internal server error"
    retry_after: int | None = None

    def __init__(self, detail: str | None = None, *, retry_after: int | None = None) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        if retry_after is not None:
            self.retry_after = retry_after


class InvalidRequestError(SessiondError):
    status, code, title = 422, "invalid_request", "The request is not valid"


class BadHeaderError(SessiondError):
    status, code, title = 400, "bad_header", "A request header is not valid"


class NotFoundError(SessiondError):
    status, code, title = 404, "not_found", "Not found"


class ConflictError(SessiondError):
    status, code, title = 409, "conflict", "Conflict"


class TaskRunningError(ConflictError):
    code, title = "task_running", "A task is already running in this session"


class PreconditionFailedError(SessiondError):
    status, code, title = 412, "version_mismatch", "The session changed since that version"


class MailboxFullError(SessiondError):
    status, code, title, retry_after = 503, "mailbox_full", "The session is busy; retry shortly", 1


class UnavailableError(SessiondError):
    status, code, title, retry_after = 503, "unavailable", "The server cannot take this now", 1


class OverloadedError(UnavailableError):
    """The server carries as many tasks or streams as it is configured to (``[admission]``)."""

    code, title = "overloaded", "The server is at capacity; retry shortly"


class ActorStoppedError(UnavailableError):
    """The actor was stopped (passivated, deleted or shut down) before it answered."""

    code, title = "actor_stopped", "The session was stopped before it answered"


class StoreClosedError(ActorStoppedError):
    """The store was closed (the server is shutting down) before this change could be written.

    A stop, not a crash: the caller gets a 503 and retries on a live server; the actor stops,
    and its next activation starts from what is durable.
    """

    code, title = "store_closed", "The server is shutting down; retry shortly"


class FencedError(ActorStoppedError):
    """The store refused this change: another node took the session since this actor was
    activated (the session's lease epoch in the store is higher than this actor's).

    Nothing of the change was written. The actor stops at once; the caller looks the session
    up again and reaches its new owner.
    """

    code, title = "session_moved", "The session moved to another node; retry"


class StoreUnavailableError(StoreClosedError):
    """The database could not be reached for this change (an outage): nothing of it is durable.

    Like a closed store: the actor stops (what it changed in memory is not durable) and its
    next activation starts from the store; the caller gets a 503 with Retry-After.
    """

    code, title = "store_unavailable", "The database is unreachable; retry shortly"


class DependencyUnavailableError(UnavailableError):
    """Redis or the database could not be reached while answering (an outage)."""

    code, title = "dependency_unavailable", "A service this server depends on is unreachable; retry shortly"


class ActorCrashedError(SessiondError):
    """The actor broke while handling a command; it is restarted from the store."""

    status, code, title = 500, "actor_crashed", "The session failed and was restarted"


class UnauthorizedError(SessiondError):
    status, code, title = 401, "unauthorized", "Missing or invalid credentials"


class ForbiddenError(SessiondError):
    status, code, title = 403, "forbidden", "These credentials may not do this"


class RateLimitedError(SessiondError):
    status, code, title = 429, "rate_limited", "Rate limit reached"


class PayloadTooLargeError(SessiondError):
    status, code, title = 413, "payload_too_large", "The request body is too large"


class UnsupportedMediaTypeError(SessiondError):
    status, code, title = 415, "unsupported_media_type", "Unsupported media type"


class NotImplementedYetError(SessiondError):
    status, code, title = 501, "not_implemented", "Not implemented by this server"
