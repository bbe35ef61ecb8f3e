"""What goes with a deleted session besides its own rows: its tokens, and its documents.

The session's messages, checkpoints, events and search index entries go in the store's delete
(``RemoveSession``). This is the rest, done after that delete by whoever asked for it (the
DELETE routes and the retention sweeper alike):

- every token family of the session is revoked (in this process at once, elsewhere within the
  token service's recheck interval);
- a document that belonged to the session alone is deleted with its file (unless another
  document shares the file): one uploaded into it (or into a session deleted before, that this
  one still linked) with no end user as owner (an end user's upload stays in that user's
  library), never shared, and linked by no other session (a fork or copy keeps what it links).
"""

from __future__ import annotations

from aiohttp import web

from actors.core.records import SessionRecord
from server.appkeys import LIBRARY, STORE, TOKENS

__all__ = ["forget_session"]


async def forget_session(app: web.Application, record: SessionRecord) -> None:
    """Clean up after ``record``'s session was deleted (see the module docstring)."""
    await app[TOKENS].revoke_session(record.id)
    store = app[STORE]
    for document_id in record.documents:
        doc = await store.get_document(document_id)
        if doc is None or doc.session_id is None or doc.end_user_id is not None or doc.shared:
            continue
        # Uploaded into this session, or into one deleted before while this one (a fork, a
        # copy) still linked it: either way no session is left to own it.
        if doc.session_id != record.id and await store.get_session(doc.session_id) is not None:
            continue
        if await store.document_linked_elsewhere(document_id, record.id):
            continue
        await app[LIBRARY].delete(doc)
