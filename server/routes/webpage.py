"""The chat page: GET / and its files under /web/ (plain HTML, CSS and JS from server/web/).

The page talks to sessiond like any frontend would (an API key to pick a session and mint its
token, then the session token alone), so it needs nothing from the server beyond these files.
Only files that are in server/web/ when the server starts are served: no path from the URL
ever reaches the file system.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from actors.core.errors import NotFoundError

__all__ = ["WEB_DIR", "chat_page", "web_file"]

WEB_DIR = Path(__file__).resolve().parent.parent / "web"

_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}

# The page runs its own scripts and styles only and speaks to this origin only; tokens travel in
# the stream URL (EventSource cannot send headers), so no Referer may carry them elsewhere.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    # Revalidate on every load, so a new version of sessiond is picked up at once.
    "Cache-Control": "no-cache",
}


def _files() -> dict[str, Path]:
    if not WEB_DIR.is_dir():
        return {}
    return {p.name: p for p in WEB_DIR.iterdir() if p.is_file() and p.suffix in _TYPES}


_FILES = _files()


def _file_response(name: str) -> web.FileResponse:
    path = _FILES.get(name)
    if path is None:
        raise NotFoundError(f"no file {name}")
    headers = dict(_PAGE_HEADERS)
    headers["Content-Type"] = _TYPES[path.suffix] + ("; charset=utf-8" if path.suffix != ".png" else "")
    return web.FileResponse(path, headers=headers)


async def chat_page(request: web.Request) -> web.FileResponse:
    return _file_response("index.html")


async def web_file(request: web.Request) -> web.FileResponse:
    return _file_response(request.match_info["name"])
