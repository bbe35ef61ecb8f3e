"""Model output as HTML for the chat page: Markdown rendered, then sanitized.

markdown-it-py renders CommonMark plus tables with raw HTML switched off (a model's ``<script>``
comes out as text), and nh3 (the ammonia sanitizer) then keeps only the tags and attributes a
chat bubble needs: no event handler, no style attribute, no URL scheme other than http, https and mailto,
whatever the renderer let through. Links open in a new tab without the opener.
"""

from __future__ import annotations

from functools import lru_cache

import nh3
from markdown_it import MarkdownIt

__all__ = ["markdown_html"]

_TAGS = {
    "a", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "li",
    "ol", "p", "pre", "s", "strong", "table", "tbody", "td", "th", "thead", "tr", "ul",
}
_ATTRIBUTES = {
    "a": {"href", "title"},
    "code": {"class"},
    "ol": {"start"},
    "td": {"class"},
    "th": {"class"},
}
_ALIGN = {"text-align:left": "align-left", "text-align:center": "align-center", "text-align:right": "align-right"}


@lru_cache(maxsize=1)
def _renderer() -> MarkdownIt:
    return MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable(
        ["table", "strikethrough"]
    )


def markdown_html(text: str) -> str:
    """The sanitized HTML of ``text`` read as Markdown."""
    md = _renderer()
    tokens = md.parse(text)
    for token in tokens:
        # The page's Content-Security-Policy refuses inline styles: column alignment as a class.
        if token.type in ("th_open", "td_open") and "style" in token.attrs:
            align = _ALIGN.get(str(token.attrs.pop("style")))
            if align:
                token.attrs["class"] = align
    # No trailing newline: a one-paragraph answer reads exactly as its text does.
    html = md.renderer.render(tokens, md.options, {}).strip()
    return nh3.clean(
        html,
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )
