"""Documents: upload, list, get, delete; link to a session, unlink, upload into one.

An upload is a multipart form with a part named ``file``. Its body is read part by part and the
file streamed to disk while counted, so the server-wide body limit does not apply here, the
documents' ``max_bytes`` does: past it the answer is 413 and nothing stays on disk.

Every document has an owner: the end user it was uploaded for, else (uploaded into a session)
the session's guest or the session itself. "Shared" is the operator's explicit choice: an API
key that acts for no end user uploading to ``/v1/documents`` without naming one. Who sees a
document: an API key, every one; an API key acting for an end user, that user's documents and
the shared ones (never a guest's, never another session's); a session token, the documents of
its own session (it may upload into it).

An upload counts against the limits of its guest, its API key and its end user (server.quota):
as one message, and its extracted text as tokens (four characters a token), so uploads cannot
go round the limits a conversation has.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from actors.agent.documents.library import (
    DocumentLibrary,
    DocumentTextTooLargeError,
    DocumentTooLargeError,
    DocumentUnreadableError,
)
from actors.core.commands import GetSession, PatchSession
from actors.core.errors import ForbiddenError, InvalidRequestError, NotFoundError, UnsupportedMediaTypeError
from actors.core.export import check_links
from actors.store.tables import DocumentRecord
from server.appkeys import CONFIG, LIBRARY, LIMITER, STORE
from server.auth.principal import principal_of
from server.quota import subjects_of
from server.routes.common import ask, int_query, session_of
from server.schema.common import BodyTimeoutError, body_deadline, decode_body, json_response
from server.schema.documents import DocumentList, LinkDocumentsBody

__all__ = [
    "delete_document",
    "get_document",
    "link_documents",
    "list_documents",
    "session_documents",
    "unlink_document",
    "upload_document",
    "upload_into_session",
]

_CHUNK = 1 << 16
# Room for the multipart framing and small fields around the file when judging Content-Length.
_FRAMING = 64 * 1024
_MAX_FIELD = 256
_CHARS_PER_TOKEN = 4


async def _document(request: web.Request, document_id: str) -> DocumentRecord:
    doc = await request.app[STORE].get_document(document_id)
    if doc is None or not principal_of(request).can_read(doc):
        raise NotFoundError(f"no document {document_id}")
    return doc


async def _field(part: BodyPartReader) -> str:
    raw = b""
    while chunk := await part.read_chunk(_MAX_FIELD + 1):
        raw += chunk
        if len(raw) > _MAX_FIELD:
            raise InvalidRequestError(f"the form field {part.name} is longer than {_MAX_FIELD} bytes")
    return raw.decode("utf-8", "replace").strip()


def _client_gone(request: web.Request) -> Callable[[], bool]:
    def gone() -> bool:
        transport = request.transport
        return transport is None or transport.is_closing()

    return gone


async def _upload(request: web.Request, *, owner: dict[str, Any], allow_owner_field: bool) -> DocumentRecord:
    """Count the upload against its owner's limits, then :func:`_receive` it (the count is taken
    back if it is refused before its text is read)."""
    principal = principal_of(request)
    limiter = request.app[LIMITER]
    subjects = subjects_of(
        request.app[CONFIG].limits,
        principal.key_id,
        guest_id=owner.get("guest_id"),
        end_user_id=owner.get("end_user_id"),
    )
    admission = await limiter.admit(subjects, time.time()) if subjects else None
    try:
        doc = await _receive(request, owner=owner, allow_owner_field=allow_owner_field)
    except BaseException as exc:
        # An upload whose text was read (or tried to be) counts: the extraction's work is done.
        if admission is not None and not isinstance(exc, (DocumentTextTooLargeError, DocumentUnreadableError)):
            await limiter.refund(admission)
        raise
    if subjects and doc.chars:
        limiter.record_tokens(subjects, max(doc.chars // _CHARS_PER_TOKEN, 1), time.time())
    return doc


async def _receive(request: web.Request, *, owner: dict[str, Any], allow_owner_field: bool) -> DocumentRecord:
    """Read the multipart form, stream its file to disk, and record the document.

    With ``allow_owner_field``, an ``end_user_id`` field names the owning end user.
    """
    library: DocumentLibrary = request.app[LIBRARY]
    if request.content_type != "multipart/form-data":
        raise UnsupportedMediaTypeError("send multipart/form-data with the file in a part named file")
    length = request.content_length
    if length is not None and length > library.max_bytes + _FRAMING:
        raise DocumentTooLargeError(f"the file is larger than the limit of {library.max_bytes} bytes")
    upload = None
    name: str | None = None
    content_type: str | None = None
    owner_field: str | None = None
    # The form must arrive within the body deadline for its size ([server] body_timeout_seconds,
    # min_body_bytes_per_second): a trickled upload holds a socket and a handler otherwise.
    deadline = body_deadline(request, library.max_bytes + _FRAMING)
    try:
        try:
            async with asyncio.timeout(deadline):
                reader = await request.multipart()
                while (part := await reader.next()) is not None:
                    if not isinstance(part, BodyPartReader):
                        raise InvalidRequestError("nested multipart bodies are not supported")
                    if part.name == "file":
                        if upload is not None:
                            raise InvalidRequestError("send one file per request")
                        upload = library.begin()
                        name, content_type = part.filename, part.headers.get("Content-Type")
                        while chunk := await part.read_chunk(_CHUNK):
                            upload.write(chunk)
                    elif part.name == "end_user_id" and allow_owner_field:
                        owner_field = await _field(part) or None
                    else:
                        allowed = "file, end_user_id" if allow_owner_field else "file"
                        raise InvalidRequestError(f"unknown form field {part.name!r} (expected {allowed})")
        except TimeoutError:
            raise BodyTimeoutError(f"the upload did not arrive within {deadline:.0f} s") from None
        except (ValueError, AssertionError, HttpProcessingError) as exc:  # aiohttp on a malformed body
            raise InvalidRequestError(f"the multipart body is malformed: {exc}") from None
        if upload is None:
            raise InvalidRequestError("the form has no part named file")
        if owner_field is not None:
            if owner.get("end_user_id") not in (None, owner_field):
                raise InvalidRequestError("end_user_id differs from X-End-User-ID")
            owner = {"end_user_id": owner_field}
        return await library.finish(
            upload, name=name, content_type=content_type, abandoned=_client_gone(request), **owner
        )
    finally:
        if upload is not None:
            upload.discard()  # a no-op once the file was kept


async def upload_document(request: web.Request) -> web.Response:
    end_user_id = principal_of(request).end_user_id
    # No end user, here or in the form: the operator shares it with every end user.
    owner: dict[str, Any] = {"end_user_id": end_user_id} if end_user_id is not None else {"shared": True}
    doc = await _upload(request, owner=owner, allow_owner_field=True)
    return json_response(doc, status=201)


async def list_documents(request: web.Request) -> web.Response:
    docs = await request.app[STORE].list_documents(
        principal_of(request).end_user_id,
        limit=int_query(request, "limit"),
        offset=int_query(request, "offset"),
    )
    return json_response(DocumentList(docs))


async def get_document(request: web.Request) -> web.Response:
    return json_response(await _document(request, request.match_info["document_id"]))


async def delete_document(request: web.Request) -> web.Response:
    principal = principal_of(request)
    doc = await _document(request, request.match_info["document_id"])
    if principal.end_user_id is not None and doc.end_user_id is None:
        raise ForbiddenError("a shared document is deleted with an API key that does not act for an end user")
    await request.app[LIBRARY].delete(doc)
    return web.Response(status=204)


# -- a session's documents ------------------------------------------------------------------


async def _linked(request: web.Request, ids: list[str]) -> DocumentList:
    store = request.app[STORE]
    docs = [await store.get_document(d) for d in ids]
    return DocumentList([d for d in docs if d is not None])


async def session_documents(request: web.Request) -> web.Response:
    record = await ask(request, GetSession())
    return json_response(await _linked(request, record.documents))


async def link_documents(request: web.Request) -> web.Response:
    body = await decode_body(request, LinkDocumentsBody, empty_ok=False)
    ids = list(dict.fromkeys(body.document_ids))
    if not ids:
        raise InvalidRequestError("document_ids must name at least one document")
    check_links(len(ids))  # before each is looked up
    for document_id in ids:
        await _document(request, document_id)
    record = await ask(request, PatchSession(link_documents=tuple(ids)))
    return json_response(await _linked(request, record.documents))


async def upload_into_session(request: web.Request) -> web.Response:
    record = session_of(request).record
    check_links(len(record.documents) + 1)  # refused before the upload is read, not after
    # Never shared: it belongs to the session's end user, or its guest, and to the session.
    owner = {"end_user_id": record.end_user_id, "guest_id": record.guest_id, "session_id": record.id}
    doc = await _upload(request, owner=owner, allow_owner_field=False)
    try:
        await ask(request, PatchSession(link_documents=(doc.id,)))
    except BaseException:
        # Not linked (another upload took the 256th place meanwhile, say): not kept either,
        # so the client's failed upload leaves nothing behind.
        await asyncio.shield(request.app[LIBRARY].delete(doc))
        raise
    return json_response(doc, status=201)


async def unlink_document(request: web.Request) -> web.Response:
    document_id = request.match_info["document_id"]
    record = await ask(request, GetSession())
    if document_id not in record.documents:
        raise NotFoundError(f"document {document_id} is not linked to this session")
    await ask(request, PatchSession(unlink_documents=(document_id,)))
    return web.Response(status=204)
