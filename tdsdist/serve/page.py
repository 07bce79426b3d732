"""The exploration page (`GET /`): one HTML file, its script and its style (over the report's
`base.css`), shipped as package data (`page_assets/`) and served from memory; nothing comes from
a CDN. `WithPage` answers `GET /` and `GET /static/NAME` before the API (and its API key check)
sees the request: the page holds no data; it asks for the key and sends it with its own
requests. The Content-Security-Policy lets the page run only its own script and talk only to this
server, so that text a model or a user wrote can never run as code even if it reached the page as
markup (it does not: the script inserts text with `textContent` only)."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from fastapi.responses import Response

#: The files the page is made of, by name, with their media types.
PAGE_ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "base.js": "text/javascript; charset=utf-8",
    "page.js": "text/javascript; charset=utf-8",
    "base.css": "text/css; charset=utf-8",
    "page.css": "text/css; charset=utf-8",
}
#: Files kept elsewhere, by name: (package, folder). `base.css` is the look the page shares with
#: `tdsdist report` (colours, tokens, the panel), one stylesheet for both; `base.js` the number and
#: token-text formatting both pages share.
SHARED_ASSETS = {
    "base.css": ("tdsdist.analysis", "report_assets"),
    "base.js": ("tdsdist.analysis", "report_assets"),
}
#: Ids one `POST /v1/tokens` may ask for (the page asks for two top-k lists at a time).
MAX_TOKEN_IDS = 4096
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self';"
    " img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@cache
def _asset(name: str) -> bytes:
    package, folder = SHARED_ASSETS.get(name, ("tdsdist.serve", "page_assets"))
    return resources.files(package).joinpath(folder).joinpath(name).read_bytes()


def page_response(name: str) -> Response:
    """One of the page's files (404 for any other name: no path ever reaches the file system)."""
    if name not in PAGE_ASSETS:
        body = json.dumps({"error": f"GET /static/{name}: Not Found"}).encode()
        return Response(body, status_code=404, media_type="application/json")
    headers = {
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }
    return Response(_asset(name), media_type=PAGE_ASSETS[name], headers=headers)


class WithPage:
    """ASGI wrapper: `GET /` and `GET /static/NAME` are the page's files; the rest goes to `app`."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and scope.get("method") in ("GET", "HEAD"):
            if path == "/":
                await page_response("index.html")(scope, receive, send)
                return
            if path.startswith("/static/"):
                await page_response(path.removeprefix("/static/"))(scope, receive, send)
                return
        await self.app(scope, receive, send)
