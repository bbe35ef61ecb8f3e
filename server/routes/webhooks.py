"""GET /v1/webhooks/deliveries: how the webhook outbox's deliveries are going (the operator's)."""

from __future__ import annotations

from aiohttp import web

from actors.core.errors import ForbiddenError, InvalidRequestError
from actors.core.webhooks import DELIVERY_STATUSES, DeliveryQuery
from server.appkeys import STORE
from server.auth.principal import principal_of
from server.routes.common import decode_cursor, encode_cursor, int_query
from server.schema.common import json_response
from server.schema.webhooks import DeliveryList, delivery_out

__all__ = ["list_deliveries"]


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
        after=decode_cursor(cursor, tuple[float, str]) if cursor else None,
    )
    rows = await request.app[STORE].list_deliveries(query)
    page = rows[: query.limit]
    more = len(rows) > query.limit
    next_cursor = encode_cursor(page[-1].created_at, page[-1].id) if more and page else None
    return json_response(DeliveryList([delivery_out(d) for d in page], next_cursor))
