"""What the browser tests (`test_report.py`, `test_serve_page.py`) share besides the `browser`
fixture of `conftest.py`: a page that watches for what must never happen."""

from __future__ import annotations


class Watch:
    """A new page that records what must not happen: requests to anywhere but `allowed` (a URL
    prefix), dialogs, script errors and, with `console`, console errors and warnings.
    `check()` asserts that none happened."""

    def __init__(self, browser, allowed: str, height: int, console: bool = False) -> None:
        self.allowed = allowed
        self.page = browser.new_page(viewport={"width": 1280, "height": height})
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        if console:
            self.page.on(
                "console",
                lambda m: self.errors.append(m.text) if m.type in ("error", "warning") else None,
            )

    def check(self) -> None:
        elsewhere = [u for u in self.requests if not u.startswith(self.allowed)]
        assert not elsewhere, elsewhere
        assert not self.dialogs, self.dialogs
        assert not self.errors, self.errors
