"""GET /v1/webhooks/deliveries: how the webhook outbox's deliveries are going (the operator's)."""

from __future__ import annotations

import base64

import msgspec
from aiohttp import web

from actors.core.errors import ForbiddenError, InvalidRequestError
from actors.core.webhooks import DELIVERY_STATUSES, DeliveryQuery
from server.appkeys import STORE
from server.auth.principal import principal_of
from server.routes.common import int_query
from server.schema.common import json_response
from server.schema.webhooks import DeliveryList, delivery_out

__all__ = ["list_deliveries"]


def _cursor_encode(created_at: float, delivery_id: str) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode([created_at, delivery_id])).decode()


def _cursor_decode(cursor: str) -> tuple[float, str]:
    try:
        at, did = msgspec.json.decode(base64.urlsafe_b64decode(cursor.encode()), type=tuple[float, str])
    except (ValueError, msgspec.DecodeError):
        raise InvalidRequestError("cursor is not one this server gave out") from None
    return at, did


async def list_deliveries(request: web.Request) -> web.Response:
    # Endpoints and the events of every tenant are the operator's: an API key acting for an
    # end user is refused here, and a session token never gets here (403 at the edge).
    if principal_of(request).end_user_id is not None:
        raise ForbiddenError("webhook deliveries are for an API key that does not act for an end user")
    q = request.query
    status = q.get("status")
    if status is not None and status not in DELIVERY_STATUSES:
        raise InvalidRequestError(f"status must be one of {', '.join(DELIVERY_STATUSES)}")
    cursor = q.get("cursor")
    query = DeliveryQuery(
        status=status,  # type: ignore[arg-type]  # checked against DELIVERY_STATUSES above
        endpoint=q.get("endpoint"),
        limit=int_query(request, "limit"),
        after=_cursor_decode(cursor) if cursor else None,
    )
    rows = await request.app[STORE].list_deliveries(query)
    page = rows[: query.limit]
    more = len(rows) > query.limit
    next_cursor = _cursor_encode(page[-1].created_at, page[-1].id) if more and page else None
    return json_response(DeliveryList([delivery_out(d) for d in page], next_cursor))
