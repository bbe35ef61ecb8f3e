"""The API, browsable: GET /openapi.json and GET /docs (Swagger UI, served from this server)."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from aiohttp import web
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]

from actors.core.errors import NotFoundError
from server.appkeys import OPENAPI

__all__ = ["DOC_ASSETS", "docs_asset", "docs_page", "openapi_json"]

_ASSETS = Path(str(swagger_ui_path))
# The files of Swagger UI served under /docs/assets/.
DOC_ASSETS = (
    "swagger-ui.css",
    "swagger-ui-bundle.js",
    "swagger-ui-standalone-preset.js",
    "favicon-32x32.png",
    "favicon-16x16.png",
)

# Relative URLs, so the page also works behind a proxy that mounts sessiond under a prefix.
_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>sessiond API</title>
  <link rel="stylesheet" href="docs/assets/swagger-ui.css">
  <link rel="icon" type="image/png" href="docs/assets/favicon-32x32.png" sizes="32x32">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="docs/assets/swagger-ui-bundle.js"></script>
  <script>%SCRIPT%</script>
</body>
</html>
"""
_SCRIPT = """
    window.ui = SwaggerUIBundle({
      url: "openapi.json",
      dom_id: "#swagger-ui",
      deepLinking: true,
      persistAuthorization: false,
      presets: [SwaggerUIBundle.presets.apis],
      layout: "BaseLayout"
    });
"""
_PAGE = _PAGE.replace("%SCRIPT%", _SCRIPT)
# The one inline script the page has, allowed by its hash: no other inline script can run.
_SCRIPT_HASH = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


# The page holds an API key once one is typed in: it is kept in memory only (persistAuthorization
# false: never in localStorage), runs this server's scripts only and cannot be framed.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        f"default-src 'none'; script-src 'self' 'sha256-{_SCRIPT_HASH}'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


async def docs_page(request: web.Request) -> web.Response:
    return web.Response(text=_PAGE, content_type="text/html", headers=_PAGE_HEADERS)


async def docs_asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in DOC_ASSETS:
        raise NotFoundError(f"no file {name}")
    return web.FileResponse(_ASSETS / name, headers={"Cache-Control": "public, max-age=86400"})
