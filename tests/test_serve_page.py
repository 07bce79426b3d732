"""The page of `tdsdist serve` (`GET /`) in a real headless Chromium against a real server on
127.0.0.1 with the tiny pair: a greedy answer streams in token by token; a clicked token's panel
shows what the API's JSON says for the same request (ranks, ties, category, the four divergences,
both top-k lists, decoded); score mode; hostile text stays text; the API key field.

Needs Debian's `chromium` (/usr/bin/chromium) and the `playwright` package (its bundled driver
only: never `playwright install`); skipped without them, or fails if TDSDIST_REQUIRE_BROWSER=1.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx
import pytest
from browser_helpers import Watch
from serve_helpers import Server, model_args, post
from transformers import AutoTokenizer

try:
    from playwright.sync_api import expect
except ImportError:  # the browser test skips (or fails where required) in its fixture
    expect = None

KEY = "page-key"
TOP_K = 5
INSTRUCTION = "the cat sat"
MAX_NEW = 48
HOSTILE = "<img src=x onerror=alert(1)> and <script>alert(2)</script> ok"
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "serve-screenshot.png"
DIVERGENCE_LABELS = {
    "kl_aligned_base": "KL(aligned \u2016 base)",
    "kl_base_aligned": "KL(base \u2016 aligned)",
    "js": "Jensen-Shannon",
    "tv": "total variation",
}


@pytest.fixture(scope="module")
def server(tiny_pair):
    s = Server(
        [*model_args(tiny_pair, TOP_K), "--max-new-tokens", "64"], env={"TDSDIST_API_KEY": KEY}
    )
    yield s
    assert s.terminate() == 0, s.stderr_text()
    assert "Traceback" not in s.stderr_text(), s.stderr_text()


AUTH = {"authorization": f"Bearer {KEY}"}


def wait_status(page, start: str) -> None:
    """Wait for the status line (the page's CSP forbids eval: no `wait_for_function`)."""
    expect(page.locator("#status")).to_have_text(re.compile("^" + start), timeout=60_000)


def metric(page, name: str) -> str:
    """The value of one metric of the panel (or the summary), by its exact label."""
    return page.evaluate(
        """name => [...document.querySelectorAll('#panel dl.metrics div, #summary div')]
            .find(d => d.querySelector('dt').textContent === name).querySelector('dd').textContent""",
        name,
    )


def visible(s: str) -> str:
    """What the page shows of a token in its tables (page.js `visible`)."""
    if s == "":
        return "\u2205"
    for a, b in ((" ", "\u2423"), ("\n", "\u21b5"), ("\t", "\u21e5")):
        s = s.replace(a, b)
    return "".join(f"\\x{ord(c):02x}" if ord(c) < 32 or 127 <= ord(c) <= 159 else c for c in s)


def token_texts(page) -> list[str]:
    """Each answer token's own text (the visible-whitespace markers left out)."""
    return page.evaluate(
        """[...document.querySelectorAll('#answer .tok')].map(s => {
            const c = s.cloneNode(true); c.querySelectorAll('.ws').forEach(w => w.remove());
            return c.textContent; })"""
    )


def check_panel(page, tokenizer, position: dict, t: int, n: int) -> None:
    """The panel of token t against the API's position object."""
    page.locator("#answer .tok").nth(t).click()
    page.wait_for_selector("#panel table.top.aligned")
    assert f"Token {t + 1} of {n}" in page.locator("#panel h2").inner_text()
    assert metric(page, "category").startswith(position["category"])
    for model in ("base", "aligned"):
        assert metric(page, f"{model} rank") == str(position[model]["rank"])
        tops = page.locator(f"#panel table.top.{model} tbody code.tokentext").all_text_contents()
        assert tops == [visible(tokenizer.decode([i])) for i in position[model]["top_ids"]]
    ties = f"{position['base']['ties']} / {position['aligned']['ties']}"
    assert metric(page, "ties base / aligned") == ties
    for name, label in DIVERGENCE_LABELS.items():
        assert float(metric(page, label)) == pytest.approx(
            position["divergence"][name], rel=1e-3, abs=1e-9
        )
    assert float(metric(page, "KL over the aligned top-k")) == pytest.approx(
        position["kl"], rel=1e-3, abs=1e-9
    )
    assert page.locator("#answer .tok.sel").count() == 1


def check_summary(page, summary: dict) -> None:
    assert metric(page, "tokens") == str(summary["positions"])
    for c, f in summary["fractions"].items():
        assert metric(page, c) == f"{100 * f:.1f}%"
    for name, label in DIVERGENCE_LABELS.items():
        assert float(metric(page, f"mean {label}")) == pytest.approx(
            summary["mean"][name], rel=1e-3, abs=1e-9
        )


def test_page(browser, server, tiny_pair) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_pair[0])
    r = httpx.get(server.url + "/")  # the page itself needs no key; its data does
    assert r.status_code == 200 and "default-src 'none'" in r.headers["content-security-policy"]
    assert httpx.get(server.url + "/static/app.py").status_code == 404  # only the page's files
    shared = httpx.get(server.url + "/static/base.css")  # the report's stylesheet, shared
    assert shared.status_code == 200 and shared.headers["content-type"].startswith("text/css")
    script = httpx.get(server.url + "/static/base.js")  # the report's shared formatting
    assert script.status_code == 200 and "function visible" in script.text
    w = Watch(browser, server.url + "/", 1000)
    page = w.page
    page.goto(server.url + "/")

    # Without the key: the server's one-line 401 shows, nothing else happens.
    page.fill("#instruction", INSTRUCTION)
    page.fill("#max-new-tokens", str(MAX_NEW))
    page.click("#submit")
    page.wait_for_selector("#status.error")
    assert "HTTP 401" in page.inner_text("#status")
    page.fill("#api-key", KEY)
    assert page.evaluate("sessionStorage.getItem('tdsdist-api-key')") == KEY

    # Generate: the tokens arrive one event at a time (a MutationObserver notes the count each
    # time the answer changes), greedy, so the API gives the same answer.
    page.evaluate(
        """() => { window.seen = []; new MutationObserver(() => window.seen.push(
            document.querySelectorAll('#answer .tok').length)).observe(
            document.getElementById('answer'), {childList: true}); }"""
    )
    page.click("#submit")
    wait_status(page, "Done")
    want = post(
        server.url,
        "/v1/generate",
        {"instruction": INSTRUCTION, "max_new_tokens": MAX_NEW},
        headers=AUTH,
    ).json()
    n = len(want["token_ids"])
    assert n >= 4, want
    ids = page.eval_on_selector_all("#answer .tok", "s => s.map(x => Number(x.dataset.tokenId))")
    assert ids == want["token_ids"]
    seen = page.evaluate("window.seen")
    assert seen[-1] == n and len({c for c in seen if 0 < c < n}) >= 3, seen  # not all at once
    assert token_texts(page) == [p["token"] for p in want["positions"]]
    check_summary(page, want["summary"])
    for t in sorted({0, n // 2, n - 1}):
        check_panel(page, tokenizer, want["positions"][t], t, n)
    # The keyboard moves the selection.
    page.focus("#answer")
    page.keyboard.press("Home")
    assert "Token 1 of" in page.locator("#panel h2").inner_text()
    page.keyboard.press("ArrowRight")
    assert "Token 2 of" in page.locator("#panel h2").inner_text()
    # Colour by a divergence: a heat scale; the largest value is the darkest.
    page.select_option("#color-by", "js")
    js = [p["divergence"]["js"] for p in want["positions"]]
    colors = page.eval_on_selector_all(
        "#answer .tok", "s => s.map(x => getComputedStyle(x).backgroundColor)"
    )
    assert colors[js.index(max(js))] == "rgb(213, 94, 0)"
    assert page.locator("#answer .tok.heat").count() == n
    page.select_option("#color-by", "category")
    assert page.locator("#answer .tok.shifted").count() == sum(
        p["category"] == "shifted" for p in want["positions"]
    )

    # Score mode, with an answer that would be markup if inserted as HTML.
    page.check("input[name=mode][value=score]")
    page.fill("#instruction", "why is the sky blue")
    page.fill("#answer-input", HOSTILE)
    page.click("#submit")
    wait_status(page, "Scored")
    scored = post(
        server.url,
        "/v1/score",
        {"instruction": "why is the sky blue", "answer": HOSTILE},
        headers=AUTH,
    ).json()
    texts = token_texts(page)
    assert texts == [p["token"] for p in scored["positions"]]
    assert "".join(texts) == HOSTILE
    assert page.locator("#answer img, #answer script, img").count() == 0
    check_summary(page, scored["summary"])
    t = next(i for i, p in enumerate(scored["positions"]) if "<" in p["token"])
    check_panel(page, tokenizer, scored["positions"][t], t, len(scored["positions"]))
    assert page.locator("#panel img").count() == 0

    # Back to the generated answer for the picture.
    page.check("input[name=mode][value=generate]")
    page.fill("#instruction", INSTRUCTION)
    page.click("#submit")
    wait_status(page, "Done")
    page.locator("#answer .tok").nth(min(5, n - 1)).click()
    page.wait_for_selector("#panel table.top.aligned")
    shot = page.screenshot(full_page=True)
    if os.environ.get("TDSDIST_SCREENSHOT") == "1":  # on request (the committed one: SmolLM2)
        SCREENSHOT.write_bytes(shot)
    w.check()


def test_tokens_endpoint(server, tiny_pair) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_pair[0])
    ids = [0, 5, 17, len(tokenizer) - 1]
    r = post(server.url, "/v1/tokens", {"ids": ids}, headers=AUTH)
    assert r.status_code == 200 and r.json()["tokens"] == [tokenizer.decode([i]) for i in ids]
    bad = post(server.url, "/v1/tokens", {"ids": [1, len(tokenizer)]}, headers=AUTH)
    assert bad.status_code == 422 and "ids[1]" in bad.json()["error"]
    assert post(server.url, "/v1/tokens", {"ids": [1]}).status_code == 401
