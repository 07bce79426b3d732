"""The exploration page (`GET /`): one HTML file, its script and its style, shipped as package
data (`page_assets/`) and served from memory; nothing comes from a CDN. The Content-Security-Policy
lets the page run only its own script and talk only to this server, so that text a model or a
user wrote can never run as code even if it reached the page as markup (it does not: the script
inserts text with `textContent` only)."""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi.responses import Response

#: The files the page is made of, by name, with their media types.
PAGE_ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "page.js": "text/javascript; charset=utf-8",
    "page.css": "text/css; charset=utf-8",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self';"
    " img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@cache
def _asset(name: str) -> bytes:
    return resources.files("tdsdist.serve").joinpath("page_assets", name).read_bytes()


def page_response(name: str) -> Response:
    """One of the page's files (404 for any other name: no path ever reaches the file system)."""
    if name not in PAGE_ASSETS:
        return Response(b'{"error": "not found"}', status_code=404, media_type="application/json")
    headers = {
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }
    return Response(_asset(name), media_type=PAGE_ASSETS[name], headers=headers)
