"""Read-only share links: make, list and revoke them (the session's writers), open one (anyone
holding its token, no credential), and continue one as a copy (an API key).

A link shows the session's title and the path from the root to its message (the active leaf
when it was made, unless another message was named), each message's role, content, id and
time. Nothing else of the session leaves: not its metadata, context, system prompt, agent,
tool calls and their results, usage, or any other branch. Only the hash of a token is kept;
an unknown, expired and revoked token all answer the same 404.
"""

from __future__ import annotations

import datetime
import re
import secrets
import time

from aiohttp import web

from actors.core.commands import GetTree
from actors.core.errors import ConflictError, InvalidRequestError, NotFoundError
from actors.core.ids import new_id, utcnow
from actors.core.replies import TreeView
from actors.core.tree import Node
from actors.store.tables import ShareRecord
from server.appkeys import CONFIG, REGISTRY, STORE
from server.auth.keys import hash_secret
from server.auth.principal import principal_of, require_key
from server.markup import markdown_html
from server.quota import admit_share_view
from server.routes.agents import agent_for_session
from server.routes.common import ask
from server.schema.common import decode_body, json_response
from server.schema.sessions import session_out
from server.schema.shares import (
    MAX_SHARE_SECONDS,
    CreateShareBody,
    ShareCopyBody,
    ShareCreated,
    SharedConversation,
    SharedMessage,
    ShareList,
    ShareOut,
)

__all__ = [
    "TOKEN_PREFIX",
    "ShareLimitError",
    "copy_share",
    "create_share",
    "delete_share",
    "get_share",
    "list_shares",
    "share_out",
]

TOKEN_PREFIX = "sh_"
# secrets.token_urlsafe(32): 256 bits, 43 characters of the URL-safe alphabet.
_TOKEN = re.compile(rf"^{TOKEN_PREFIX}[A-Za-z0-9_-]{{43}}$")
# A shared conversation is nobody's to cache or index, and its address carries its token.
_PRIVATE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Robots-Tag": "noindex"}


class ShareLimitError(ConflictError):
    code, title = "share_limit", "This session has as many share links as it may have"



def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def share_out(share: ShareRecord) -> ShareOut:
    return ShareOut(share.id, share.session_id, share.message_id, share.created_at, _iso(share.expires_at))


def _expiry(body: CreateShareBody, now: float) -> float | None:
    if body.expires_in is not None and body.expires_at is not None:
        raise InvalidRequestError("give expires_in or expires_at, not both")
    if body.expires_in is not None:
        return now + body.expires_in
    if body.expires_at is None:
        return None
    try:
        at = datetime.datetime.fromisoformat(body.expires_at)
    except ValueError:
        raise InvalidRequestError("expires_at must be an RFC 3339 time, e.g. 2030-01-31T12:00:00Z") from None
    if at.tzinfo is None:
        raise InvalidRequestError("expires_at needs a time zone (Z for UTC)")
    epoch = at.timestamp()
    if epoch <= now:
        raise InvalidRequestError("expires_at is in the past")
    if epoch > now + MAX_SHARE_SECONDS:
        raise InvalidRequestError("expires_at is more than ten years away")
    return epoch


def _link(request: web.Request, token: str) -> str:
    base = request.app[CONFIG].shares.link_base.rstrip("/") or f"{request.scheme}://{request.host}"
    return f"{base}/#share={token}"


async def create_share(request: web.Request) -> web.Response:
    body = await decode_body(request, CreateShareBody)
    now = time.time()
    expires = _expiry(body, now)
    tree: TreeView = await ask(request, GetTree())
    cut = tree.active_leaf_id
    if body.message_id is not None:
        if not any(n.id == body.message_id for n in tree.nodes):
            raise NotFoundError(f"no message {body.message_id} in this session")
        cut = body.message_id
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session_id = request.match_info["session_id"]
    share = ShareRecord(
        id=new_id("shr"), session_id=session_id, token_hash=hash_secret(token), created_at=utcnow(),
        message_id=cut, expires_at=expires,
    )
    limit = request.app[CONFIG].shares.max_per_session
    if not await request.app[STORE].put_share(share, limit=limit, now=now):
        raise ShareLimitError(
            f"this session has {limit} live share links, the most [shares] max_per_session allows: revoke one first"
        )
    out = share_out(share)
    created = ShareCreated(out.id, out.session_id, out.message_id, out.created_at, out.expires_at,
                           token=token, url=_link(request, token))
    return json_response(created, status=201, headers={"Cache-Control": "no-store"})


async def list_shares(request: web.Request) -> web.Response:
    shares = await request.app[STORE].list_shares(request.match_info["session_id"], time.time())
    return json_response(ShareList([share_out(s) for s in shares]))


async def delete_share(request: web.Request) -> web.Response:
    share_id = request.match_info["share_id"]
    if not await request.app[STORE].delete_share(request.match_info["session_id"], share_id):
        raise NotFoundError(f"no share link {share_id} in this session")
    return web.Response(status=204)


def _gone() -> NotFoundError:
    return NotFoundError("no such share link: it may never have existed, have expired or have been revoked")


async def _shared(request: web.Request) -> tuple[ShareRecord, str | None, list[Node]]:
    """The live link the path's token names, its session's title and the path it shows."""
    await admit_share_view(request)
    token = request.match_info["token"]
    if not _TOKEN.match(token):
        raise _gone()
    store = request.app[STORE]
    share = await store.share_by_hash(hash_secret(token), time.time())
    if share is None:
        raise _gone()
    loaded = await store.load_session(share.session_id, events=0)
    if loaded is None:
        raise _gone()
    by_id = {n.id: n for n in loaded.nodes}
    path: list[Node] = []
    at = share.message_id
    while at is not None and at in by_id:
        path.append(by_id[at])
        at = by_id[at].parent_id
    path.reverse()
    return share, loaded.record.title, path


async def get_share(request: web.Request) -> web.Response:
    fmt = request.query.get("format", "text")
    if fmt not in ("text", "html"):
        raise InvalidRequestError("format must be text or html")
    share, title, path = await _shared(request)
    messages = [
        SharedMessage(
            n.id, n.role, n.content, n.created_at, n.status, hint=n.hint is not None,
            content_html=markdown_html(n.content) if fmt == "html" else None,
        )
        for n in path
    ]
    body = SharedConversation(title, messages, share.created_at, _iso(share.expires_at))
    return json_response(body, headers=_PRIVATE)


async def copy_share(request: web.Request) -> web.Response:
    """A session of the caller's own holding the shared path (fresh ids, no tool calls, no
    usage), with the source's agent when there is one; nothing else of the source is copied."""
    principal = principal_of(request)
    require_key(principal)
    body = await decode_body(request, ShareCopyBody)
    share, title, path = await _shared(request)
    source = await request.app[STORE].get_session(share.session_id)
    agent_id = source.agent_id if source is not None else None
    try:
        agent = await agent_for_session(request, agent_id)
    except InvalidRequestError:  # the agent is gone since: the default one answers
        agent_id = None
        agent = await agent_for_session(request, None)
    nodes: list[Node] = []
    parent: str | None = None
    for n in path:
        copy = Node(
            new_id("msg"), parent, n.role, n.content, n.created_at,
            status="interrupted" if n.status == "running" else n.status, hint=n.hint,
        )
        nodes.append(copy)
        parent = copy.id
    registry = request.app[REGISTRY]
    record = registry.new_record(
        namespace=body.namespace,
        end_user_id=principal.end_user_id,
        agent_id=agent_id,
        title=body.title if body.title is not None else title,
        tools=list(agent.tools),
    )
    await registry.create_from_nodes(record, nodes)
    return json_response(session_out(record), status=201, headers={"Cache-Control": "no-store"})
