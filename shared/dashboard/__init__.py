"""The dashboard's files (plain HTML, one JS module, CSS: no build step) and their headers."""

from __future__ import annotations

import functools
import html
from pathlib import Path

from shared.errors import NotFound

INDEX = "index.html"
_HERE = Path(__file__).parent
# Only these are served: a name is never turned into a path unchecked.
ASSETS: dict[str, str] = {
    INDEX: "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}

# No inline script or style, nothing from another origin, no framing; the page talks
# to its own origin only, so the API key can go nowhere else.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # Revalidate every time: a deploy shows at once, and the files are small.
    "Cache-Control": "no-cache",
}


TRACE_URL_SLOT = b"{{trace_console_url}}"


def page(name: str, trace_console_url: str) -> tuple[bytes, str]:
    """`asset`, with the index naming the trace console the detail view links to."""
    body, content_type = asset(name)
    if name == INDEX:
        body = body.replace(TRACE_URL_SLOT, html.escape(trace_console_url, quote=True).encode())
    return body, content_type


@functools.cache
def asset(name: str) -> tuple[bytes, str]:
    """The file's bytes and content type; NotFound for anything not in ASSETS."""
    content_type = ASSETS.get(name)
    if content_type is None:
        raise NotFound(f"no dashboard file {name!r}")
    return (_HERE / name).read_bytes(), content_type
