"""Documents: the multipart upload form (described for the OpenAPI document), links, lists."""

from __future__ import annotations

import msgspec

from actors.store.tables import DocumentRecord
from server.schema.common import RequestBody

__all__ = ["UPLOAD_FORM", "DocumentList", "LinkDocumentsBody"]


class LinkDocumentsBody(RequestBody):
    document_ids: list[str]


class DocumentList(msgspec.Struct):
    items: list[DocumentRecord]


# A file upload: a multipart form with the file in a part named `file` (read part by part by
# server/routes/documents.py, so it has no msgspec type: this is its JSON Schema).
UPLOAD_FORM = {
    "type": "object",
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "txt, md, json, csv, html or pdf"},
        "end_user_id": {"type": "string", "description": "Owner (default: shared, or the X-End-User-ID)."},
    },
    "required": ["file"],
}
