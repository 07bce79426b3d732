"""`tdsdist report`: the static site's files, its escaping, and (with Chromium) the pages in a
real headless browser opened from file://, offline.

Three stores: `scored` (the tiny pair on the demo data, as the other store tests), `crafted`
(the tiny pair on a data file of hostile answers and ids, one unit then marked pending as after a
kill), and `synthetic` (no model: a tokenizer with `<script>alert(1)</script>` as ONE token, so
the token tables themselves carry it; arrays written directly, one unit pending).

The browser test needs Debian's `chromium` (/usr/bin/chromium) and the `playwright` Python
package (its bundled driver only: never `playwright install`); it is skipped without them, or
fails if TDSDIST_REQUIRE_BROWSER=1 (for CI).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
from browser_helpers import Watch
from click.testing import CliRunner
from tdsdist_testkit import default_corpus, train_tiny_tokenizer
from tdsdist_testkit.cli_args import cli_args

from tdsdist.analysis.figure_style import KINDS
from tdsdist.analysis.report import (
    MARKER,
    TOP_SHOWN,
    js_call,
    read_js_call,
    write_report,
)
from tdsdist.analysis.show import example_record
from tdsdist.analysis.token_text import text_ends
from tdsdist.cli import main
from tdsdist.errors import TdsError
from tdsdist.jobs.demo import demo_data_path
from tdsdist.metrics import CATEGORIES, topk_kl
from tdsdist.store import MODELS, Store, create
from tdsdist.store.contexts import StoredContexts, decode_context

EVIL_SCRIPT = "<script>alert(1)</script>"
EVIL_IMG = "<img src=x onerror=alert(2)>"
EVIL_ID = "<img src=y onerror=alert(3)>"


def score_store(tiny_pair, store: Path, data: Path, *extra: str) -> Path:
    aligned, base = tiny_pair
    args = cli_args(
        "score", aligned, base, data=data, store=store, unit_size=1, limit=3, extra=extra
    )
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return store


def report(store: Path, site: Path) -> Path:
    result = CliRunner().invoke(main, ["report", str(store), "-o", str(site)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(str(site / "index.html"))
    return site


def data_of(site: Path, name: str) -> list:
    return read_js_call((site / "data" / name).read_text(encoding="utf-8"))


def visible(s: str) -> str:
    """What the page shows of a token in its tables (report.js `visible`)."""
    if s == "":
        return "\u2205"
    for a, b in ((" ", "\u2423"), ("\n", "\u21b5"), ("\t", "\u21e5")):
        s = s.replace(a, b)
    return re.sub("[\x00-\x1f\x7f-\x9f]", lambda m: f"\\x{ord(m.group()):02x}", s)


def utf16_prefix(text: str, units: int) -> str:
    """`text.slice(0, units)` as JavaScript counts (UTF-16 code units)."""
    return text.encode("utf-16-le")[: 2 * units].decode("utf-16-le")


# ------------------------------------------------------------------------------------------------
# Stores and sites
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scored(tiny_pair, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("report_scored") / "s.zarr"
    extra = ["--max-output-tokens", "20", "--top-k", "5"]
    return score_store(tiny_pair, store, demo_data_path(), *extra)


@pytest.fixture(scope="module")
def scored_site(scored: Path, tmp_path_factory) -> Path:
    return report(scored, tmp_path_factory.mktemp("report_scored_site") / "site")


CRAFTED = [
    {"id": "script", "output": f"{EVIL_SCRIPT} Hello there."},
    {"id": EVIL_ID, "output": f"{EVIL_IMG}\u2028\u2029</script><!-- \U0001f600 ok"},
    {"id": "later", "output": "A plain answer that stays pending."},
]


@pytest.fixture(scope="module")
def crafted(tiny_pair, tmp_path_factory) -> Path:
    """Hostile answers scored for real (top-k 12: more than the 10 shown); the last unit is then
    marked pending, as a killed run leaves it."""
    folder = tmp_path_factory.mktemp("report_crafted")
    records = [
        {
            "pure_input": f"Question {i}?",
            "input": f"<s><|user|>\nQuestion {i}?\n<|assistant|>\n",
            **r,
        }
        for i, r in enumerate(CRAFTED)
    ]
    data = folder / "hostile.json"
    data.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    store = score_store(
        tiny_pair, folder / "c.zarr", data, "--max-output-tokens", "80", "--top-k", "12"
    )
    Store(store).root["units/committed"][2] = 0
    return store


@pytest.fixture(scope="module")
def crafted_site(crafted: Path, tmp_path_factory) -> Path:
    return report(crafted, tmp_path_factory.mktemp("report_crafted_site") / "site")


SYNTHETIC_ANSWERS = [
    f"Hi {EVIL_SCRIPT} and {EVIL_IMG} ok",
    "plain words here",
    "still pending",
]


def build_synthetic(path: Path) -> tuple[Path, dict]:
    """A store written without a model: ranks and top-k drawn at random, the hostile tokens
    first in every top list; example 2's unit left pending. Returns (store, its summary)."""
    tokenizer = train_tiny_tokenizer(default_corpus(), 301)
    tokenizer.add_tokens([EVIL_SCRIPT, EVIL_IMG])
    evil = tokenizer.convert_tokens_to_ids([EVIL_SCRIPT, EVIL_IMG])
    answers = [tokenizer.encode(a, add_special_tokens=False) for a in SYNTHETIC_ANSWERS]
    assert evil[0] in answers[0] and evil[1] in answers[0]
    k, vocab = 6, len(tokenizer)
    store = create(
        path,
        ids=["a", "b", "c"],
        lengths=np.array([len(a) for a in answers]),
        token_ids=np.concatenate(answers).astype(np.int32),
        flags={"answer_truncated": np.array([False, True, False])},
        unit_size=1,
        top_k=k,
        meta={
            "fingerprint": {"aligned": "synthetic-aligned", "base": "synthetic-base", "top_k": k},
            "vocab_size": vocab,
        },
        tokenizer=tokenizer,
        overwrite=False,
    )
    rng = np.random.default_rng(0)
    others = np.setdiff1d(np.arange(7, vocab), evil)
    for unit in store.units()[:2]:
        tokens = np.asarray(answers[unit.examples.start])
        n = len(tokens)
        arrays: dict[str, np.ndarray] = {}
        for model in MODELS:
            top = np.stack([rng.permutation(others)[:k] for _ in range(n)]).astype(np.int32)
            top[:, :2] = evil
            probs = np.sort(rng.dirichlet(np.ones(k + 1), size=n)[:, :k], axis=1)[:, ::-1]
            top_lp = np.log(probs).astype(np.float32)
            hit = top == tokens[:, None]
            rank = np.where(hit.any(1), hit.argmax(1) + 1, rng.integers(k + 1, 200, n))
            logprob = np.where(hit.any(1), top_lp[np.arange(n), hit.argmax(1)], -9.0)
            arrays |= {
                f"{model}/top_ids": top,
                f"{model}/top_logprobs": top_lp,
                f"{model}/rank": rank.astype(np.int32),
                f"{model}/logprob": logprob.astype(np.float32),
                f"{model}/entropy": rng.uniform(0.5, 3, n).astype(np.float32),
            }
        at_top = np.log(rng.dirichlet(np.ones(k + 1), size=n)[:, :k]).astype(np.float32)
        arrays["base/logprobs_at_aligned_top"] = at_top
        kl = topk_kl(arrays["aligned/top_logprobs"], at_top)
        kl[0] = np.inf  # the base model gave zero mass: JavaScript's Infinity in the data
        arrays["positions/kl"] = kl
        store.write_rows(unit, arrays)
        store.mark_committed(unit)
    token = {
        "token_id": evil[0],
        "token": EVIL_SCRIPT,
        "count": 9,
        "shifted": 7,
        "shift_rate": 7 / 9,
    }
    summary = {
        "examples": 2,
        "positions": 40,
        "pending_units": 1,
        "thresholds": {"unshifted_max": 1, "marginal_max": 3},
        "categories": {
            "unshifted": {"count": 20, "fraction": 0.5},
            "marginal": {"count": 8, "fraction": 0.2},
            "shifted": {"count": 12, "fraction": 0.3},
        },
        "rank_histogram": [
            {"bin": b, "count": c, "fraction": c / 40}
            for b, c in zip(
                ["1", "2", "3", "4-5", "6-10", "11-100", ">100"], [20, 5, 3, 4, 4, 4, 0]
            )
        ],
        "base_prob": {"mean": 0.41, "median": 0.38},
        "kl": {"mean": 0.7, "median": 0.2, "p90": 1.5, "max": float("inf")},
        "aligned_top1_fraction": 0.6,
        "by_position_bucket": [
            {
                "bucket": "0-4",
                "positions": 10,
                "shifted_fraction": 0.4,
                "mean_kl": 1.0,
                "mean_base_prob": 0.3,
            },
            {
                "bucket": "5-9",
                "positions": 0,
                "shifted_fraction": None,
                "mean_kl": None,
                "mean_base_prob": None,
            },
        ],
        "by_relative_position": [
            {
                "bucket": f"{10 * i}-{10 * (i + 1)}%",
                "positions": 4,
                "shifted_fraction": i / 20,
                "mean_kl": 0.1,
                "mean_base_prob": 0.5,
            }
            for i in range(10)
        ],
        "top_shifted_tokens": [token],
        "top_unshifted_tokens": [],
        "config": {"aligned": EVIL_IMG, "base": "synthetic-base", "top_k": k},
    }
    return path, summary


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[Path, dict]:
    return build_synthetic(tmp_path_factory.mktemp("report_synthetic") / "y.zarr")


@pytest.fixture(scope="module")
def synthetic_site(synthetic, tmp_path_factory) -> Path:
    store, summary = synthetic
    site = tmp_path_factory.mktemp("report_synthetic_site") / "site"
    assert write_report(Store(store, mode="r"), site, summary) == site / "index.html"
    return site


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------


def test_site_layout(scored_site: Path, scored: Path) -> None:
    n = len(Store(scored, mode="r").ids)
    for name in (
        "index.html",
        "example.html",
        "assets/base.js",
        "assets/report.js",
        "assets/base.css",
        "assets/report.css",
        "data/index.js",
        MARKER,
    ):
        assert (scored_site / name).is_file(), name
    assert sorted(p.name for p in (scored_site / "data").iterdir()) == sorted(
        ["index.js"] + [f"ex-{i}.js" for i in range(n)]
    )
    # The pages are static: no data in them, only the scripts of the site.
    for page in ("index.html", "example.html"):
        html = (scored_site / page).read_text()
        scripts = ["assets/base.js", "assets/report.js", "data/index.js"]
        assert re.findall(r"<script\b[^>]*>", html) == [
            f'<script src="{s}">' for s in scripts[: 3 if page == "index.html" else 2]
        ]
        assert "Content-Security-Policy" in html and "default-src 'none'" in html


def test_no_network_references(scored_site: Path, synthetic_site: Path) -> None:
    for site in (scored_site, synthetic_site):
        for path in site.rglob("*"):
            if not path.is_file():
                continue
            text = path.read_text(encoding="utf-8")
            assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I), path
            assert not re.search(r"@import|url\((?!#)", text, re.I), path  # url(#id): in-file
            assert not re.search(
                r"\b(fetch|XMLHttpRequest|WebSocket|EventSource|sendBeacon|import)\s*\(", text
            ), path
            # The one URL-like string is the SVG namespace name, which is never fetched.
            urls = set(re.findall(r"https?://[^\s\"')]+", text))
            assert urls <= {"http://www.w3.org/2000/svg"}, (path, urls)


def test_example_data_match_the_store(scored_site: Path, scored: Path) -> None:
    store = Store(scored, mode="r")
    tokenizer = store.tokenizer()
    index = data_of(scored_site, "index.js")[0]
    assert [r["id"] for r in index["examples"]] == store.ids
    assert index["store"]["shown_top"] == min(TOP_SHOWN, store.top_k) == 5
    for i, example_id in enumerate(store.ids):
        n, d = data_of(scored_site, f"ex-{i}.js")
        record = example_record(store, example_id)
        positions = record["positions"]
        assert n == i and d["id"] == example_id and d["n"] == len(positions)
        assert d["token"] == [p["token_id"] for p in positions]
        assert [CATEGORIES[c] for c in d["cat"]] == [p["category"] for p in positions]
        np.testing.assert_allclose(d["kl"], [p["kl"] for p in positions], rtol=5e-3, atol=1e-6)
        for model in MODELS:
            m = d[model]
            assert m["rank"] == [p[model]["rank"] for p in positions]
            assert m["top_ids"] == [p[model]["top_ids"][:5] for p in positions]
            milli = [p[model]["top_logprobs"][:5] for p in positions]
            np.testing.assert_allclose(np.array(m["top_logprobs_milli"]) / 1000, milli, atol=6e-4)
            np.testing.assert_allclose(
                m["logprob"], [p[model]["logprob"] for p in positions], atol=6e-4
            )
        # Every id shown (answer and both top lists) has its own decoded string.
        ids = set(d["token"]) | {i for m in MODELS for row in d[m]["top_ids"] for i in row}
        assert d["strings"] == {str(i): tokenizer.decode([i]) for i in ids}
        # The prefix of each position is the decoded answer up to that token.
        assert d["text"] == tokenizer.decode(d["token"])
        for t, end in enumerate(d["ends"]):
            prefix = tokenizer.decode(d["token"][: t + 1])
            if "\ufffd" not in prefix:
                assert utf16_prefix(d["text"], end) == prefix
        row = index["examples"][i]
        assert row["n"] == d["n"] and not row["pending"]
        assert row["shifted"] == pytest.approx(
            np.mean([p["category"] == "shifted" for p in positions])
        )
        assert row["text"] and d["text"].split()[0] in row["text"]
    assert data_of(scored_site, "ex-0.js")[1]["prev"] is None
    assert data_of(scored_site, "ex-1.js")[1]["next"] == {"i": 2, "id": store.ids[2]}


def test_data_files_are_inert(crafted_site: Path, synthetic_site: Path) -> None:
    """Hostile strings are in the data, escaped: nothing in a file can end a script or start
    markup, and reading the JSON back gives the strings unchanged."""
    for site in (crafted_site, synthetic_site):
        for page in ("index.html", "example.html"):  # static: no data, so nothing hostile
            assert "alert(" not in (site / page).read_text(encoding="utf-8")
        for path in (site / "data").iterdir():
            text = path.read_text(encoding="utf-8")
            assert "<script>alert" not in text.lower(), path
            assert not re.search("[<>&\u2028\u2029]", text), path
        assert (
            "\\u003cscript\\u003ealert(1)\\u003c/script\\u003e"
            in (site / "data/ex-0.js").read_text()
        )
    # Round trip: the crafted answers and id come back exactly.
    crafted = data_of(crafted_site, "ex-0.js")[1]
    assert crafted["text"].startswith(EVIL_SCRIPT)
    hostile = data_of(crafted_site, "ex-1.js")[1]
    assert hostile["id"] == EVIL_ID and hostile["text"].startswith(
        EVIL_IMG + "\u2028\u2029</script><!--"
    )
    assert "\U0001f600" in hostile["text"]
    # Ends are UTF-16 offsets (the emoji is two units in JavaScript) and reach the end of the text.
    assert hostile["ends"][-1] == len(hostile["text"].encode("utf-16-le")) // 2
    synthetic = data_of(synthetic_site, "ex-0.js")[1]
    assert (
        EVIL_SCRIPT in synthetic["strings"].values() and EVIL_IMG in synthetic["strings"].values()
    )
    assert synthetic["kl"][0] == float("inf")
    assert all(len(row) == 6 for row in synthetic["base"]["top_ids"])  # top-k 6 < 10: all of it
    assert all(len(row) == TOP_SHOWN for row in crafted["base"]["top_ids"])  # top-k 12: 10 shown
    index = data_of(synthetic_site, "index.js")[0]
    assert index["summary"]["top_shifted_tokens"][0]["token"] == EVIL_SCRIPT


def test_js_call_escapes() -> None:
    value = {"s": "</script><!--\u2028\u2029&<b>", "x": [float("inf"), float("-inf"), 1.5]}
    text = js_call("example", 3, value)
    assert text.startswith("tdsReport.example(3,{") and text.endswith(");\n")
    assert not re.search("[<>&\u2028\u2029]", text)
    assert "Infinity" in text and "-Infinity" in text
    assert read_js_call(text) == [3, value]


def test_text_ends_split_characters() -> None:
    """Characters split over byte tokens, and astral characters (two UTF-16 units)."""
    tokenizer = train_tiny_tokenizer(default_corpus(), 301)
    text = "a\u2028b \U0001f600 c"
    ids = tokenizer.encode(text, add_special_tokens=False)
    ends = text_ends(tokenizer, ids, tokenizer.decode(ids))
    assert ends == sorted(ends) and ends[-1] == len(text.encode("utf-16-le")) // 2
    for t, end in enumerate(ends):
        prefix = tokenizer.decode(ids[: t + 1])
        if "\ufffd" not in prefix:
            assert utf16_prefix(text, end) == prefix
    # With the one-by-one decoded tokens: used where they add up to the text, else ignored.
    for answer in (text, "Hello there, Alice explains the river."):
        ids = tokenizer.encode(answer, add_special_tokens=False)
        pieces = [tokenizer.decode([i]) for i in ids]
        full = tokenizer.decode(ids)
        assert text_ends(tokenizer, ids, full, pieces) == text_ends(tokenizer, ids, full)


def test_pending_examples_have_no_page(crafted_site: Path, synthetic_site: Path) -> None:
    for site in (crafted_site, synthetic_site):
        rows = data_of(site, "index.js")[0]["examples"]
        assert [r["pending"] for r in rows] == [False, False, True]
        assert "shifted" not in rows[2] and rows[2]["text"]  # listed with its answer's start
        assert not (site / "data" / "ex-2.js").exists()
        assert data_of(site, "ex-1.js")[1]["next"] is None  # navigation skips pending examples


def test_output_folder_rules(scored: Path, tmp_path: Path) -> None:
    other = tmp_path / "not-a-report"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    result = CliRunner().invoke(main, ["report", str(scored), "-o", str(other)])
    assert result.exit_code == 2 and "not a tdsdist report" in result.output
    assert sorted(p.name for p in other.iterdir()) == ["keep.txt"]
    site = report(scored, tmp_path / "site")
    (site / "data" / "ex-99.js").write_text("stale")
    report(scored, site)  # an earlier report is replaced whole
    assert not (site / "data" / "ex-99.js").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
    with pytest.raises(TdsError):
        write_report(Store(scored, mode="r"), other / "keep.txt", {})


# ------------------------------------------------------------------------------------------------
# In a real browser
# ------------------------------------------------------------------------------------------------


def column(page, key: str) -> list[str]:
    index = ["i", "id", "n", "shifted", "kl", "text"].index(key) + 1
    return page.locator(f"#examples-table tbody tr td:nth-child({index})").all_inner_texts()


def metric(page, name: str) -> str:
    """The value of one metric of the panel, by its exact label."""
    return page.evaluate(
        """name => [...document.querySelectorAll('#panel dl.metrics div')]
            .find(d => d.querySelector('dt').textContent === name).querySelector('dd').textContent""",
        name,
    )


def panel_tokens(page, model: str) -> list[str]:
    return page.locator(f"#panel table.top.{model} tbody code.tokentext").all_text_contents()


def test_browser(
    browser,
    scored_site: Path,
    scored: Path,
    crafted_site: Path,
    synthetic_site: Path,
    synthetic,
    tmp_path: Path,
) -> None:
    start = time.perf_counter()
    w = Watch(browser, "file://", 900, console=True)  # offline: nothing off file://
    page = w.page
    store = Store(scored, mode="r")

    # Index: summary, charts, table sorted by shifted fraction, descending.
    page.goto((scored_site / "index.html").as_uri())
    page.wait_for_selector("#examples-table tbody tr")
    assert page.locator("#filters").count() == 0  # no filters: nothing said
    assert page.locator("h1").inner_text() == "Token distribution shift"
    assert "unshifted" in page.locator("#categories").inner_text()
    assert page.locator("svg.chart").count() >= 5
    assert page.locator("#examples-table tbody tr").count() == len(store.ids)
    shifted_th = page.locator("th.col-shifted")
    assert shifted_th.get_attribute("aria-sort") == "descending"
    values = [float(v.rstrip("%")) for v in column(page, "shifted")]
    assert values == sorted(values, reverse=True)
    # The figures (SVG files of the site, drawn from the same summary): every one loaded.
    figures = page.locator("#figures img")
    assert figures.count() == len(data_of(scored_site, "index.js")[0]["figures"]) == len(KINDS)
    page.wait_for_function("[...document.querySelectorAll('#figures img')].every(i => i.complete)")
    widths = page.evaluate(
        "[...document.querySelectorAll('#figures img')].map(i => i.naturalWidth)"
    )
    assert all(w > 0 for w in widths), widths
    page.screenshot(path=str(tmp_path / "index.png"), full_page=True)
    # Key numbers: the exact divergences with their intervals; the top-k figure named as a bound.
    numbers = page.locator("dl.numbers").inner_text()
    summary = data_of(scored_site, "index.js")[0]["summary"]
    kl = summary["divergence"]["kl_aligned_base"]
    assert "KL(aligned \u2016 base), exact" in numbers and "top-k + tail lower bound" in numbers
    shown = numbers.split("KL(aligned \u2016 base), exact")[1].split("\n")[1]
    mean, low, high = (float(x) for x in re.findall(r"-?\d[\d.]*(?:e[-+]?\d+)?", shown)[:3])
    assert mean == pytest.approx(kl["mean"], rel=5e-3) and low <= mean <= high
    assert [low, high] == pytest.approx(kl["ci"], rel=5e-3)
    # The position curves draw their intervals: a whisker per bucket that has positions.
    buckets = [r for r in summary["by_position_bucket"] if r["positions"]]
    assert page.locator("svg.chart path.ci").count() >= len(buckets) > 0

    # Sort by clicking a header, then from the keyboard.
    page.click("th.col-n button")
    assert page.locator("th.col-n").get_attribute("aria-sort") == "descending"
    page.click("th.col-n button")
    assert page.locator("th.col-n").get_attribute("aria-sort") == "ascending"
    counts = [int(v) for v in column(page, "n")]
    assert counts == sorted(counts)
    page.focus("th.col-id button")
    page.keyboard.press("Enter")
    assert page.locator("th.col-id").get_attribute("aria-sort") == "ascending"
    assert column(page, "id") == sorted(store.ids, key=int)
    assert shifted_th.get_attribute("aria-sort") is None

    # Open example 1 from its row; click a token: both top lists, side by side, decoded right.
    page.click("#examples-table tbody a[href='example.html?ex=1']")
    page.wait_for_selector(".answer .tok")
    assert page.url.endswith("example.html?ex=1")
    assert page.locator("#example-id").inner_text() == store.ids[1]
    tokens = page.locator(".answer .tok")
    assert tokens.count() == store.lengths[1]
    t = 3
    tokens.nth(t).click()
    page.wait_for_selector("#panel table.top.base")
    tokenizer = store.tokenizer()
    rows = store.rows(1)
    for model in MODELS:
        top = store.read(f"{model}/top_ids", rows)[t][: min(TOP_SHOWN, store.top_k)]
        assert panel_tokens(page, model) == [visible(tokenizer.decode([int(i)])) for i in top]
    base_box = page.locator("#panel table.top.base").bounding_box()
    aligned_box = page.locator("#panel table.top.aligned").bounding_box()
    assert abs(base_box["y"] - aligned_box["y"]) < 2 and aligned_box["x"] > base_box["x"] + 100
    token_ids = store.read("positions/token_id", rows)
    assert f"Token {t + 1} of {store.lengths[1]}" in page.locator("#panel h2").inner_text()
    header = page.locator("header.top dl.stats").inner_text()
    exact = float(store.read("positions/kl_aligned_base", rows).astype(np.float64).mean())
    shown = header.split("mean KL(aligned \u2016 base), exact")[1].split("\n")[1]
    assert float(shown) == pytest.approx(exact, rel=5e-3)
    assert "mean KL, top-k + tail lower bound" in header
    assert metric(page, "base rank") == str(store.read("base/rank", rows)[t])
    assert metric(page, "aligned rank") == str(store.read("aligned/rank", rows)[t])
    # The pair head's exact divergences and ties (stores of format 2), as the page rounds them.
    js, tv = (float(store.read(f"positions/{n}", rows)[t]) for n in ("js", "tv"))
    shown_js, shown_tv = (
        float(x) for x in metric(page, "Jensen-Shannon / total variation").split(" / ")
    )
    assert shown_js == pytest.approx(js, rel=5e-3) and shown_tv == pytest.approx(tv, rel=5e-3)
    kl = float(store.read("positions/kl_aligned_base", rows)[t])
    assert float(metric(page, "KL(aligned \u2016 base), exact")) == pytest.approx(kl, rel=5e-3)
    ties = f"{store.read('base/ties', rows)[t]} / {store.read('aligned/ties', rows)[t]}"
    assert metric(page, "ties base / aligned") == ties
    differs = store.read("base/top_ids", rows)[t][0] != store.read("aligned/top_ids", rows)[t][0]
    assert metric(page, "base top 1 vs aligned top 1") == ("differ" if differs else "same")
    assert page.locator("#panel .prefix").inner_text() == tokenizer.decode(token_ids[: t + 1])
    page.screenshot(path=str(tmp_path / "example.png"))

    # What the models saw: the instruction (open), both contexts (collapsed until opened), as the
    # store holds them, special tokens and whitespace kept; the base top-1 marker on the tokens.
    stored = StoredContexts(store)
    assert page.locator("#instruction-text").inner_text() == stored.instruction(1)
    for model in MODELS:
        text = decode_context(tokenizer, stored.ids(1, model))
        box = page.locator(f"#context-{model}-text")
        assert not box.is_visible() and box.text_content() == text
        page.click(f"#context-{model} summary")
        assert box.is_visible() and box.inner_text() == text
        assert box.evaluate("e => getComputedStyle(e).whiteSpace") == "pre-wrap"
        assert (
            f"({len(stored.ids(1, model))} tokens"
            in page.locator(f"#context-{model} summary").inner_text()
        )
    assert page.locator("#context-base-text").inner_text().startswith("<s># Query:")
    top = [store.read(f"{m}/top_ids", rows)[:, 0] for m in ("base", "aligned")]
    differs_at = np.flatnonzero(top[0] != top[1]).tolist()
    marked = page.evaluate(
        "[...document.querySelectorAll('.answer .tok')].flatMap((s, i) => s.classList.contains('differs') ? [i] : [])"
    )
    assert (
        marked == differs_at
        and "differs from the aligned" in page.locator("#differs-legend").inner_text()
    )
    assert (
        page.locator(".answer .tok.excluded").count() == 0 and page.locator("#filters").count() == 0
    )

    # Keyboard: focus shows the panel; arrows, End move along the answer.
    tokens.nth(0).focus()
    assert "Token 1 of" in page.locator("#panel h2").inner_text()
    page.keyboard.press("ArrowRight")
    assert "Token 2 of" in page.locator("#panel h2").inner_text()
    assert page.evaluate("document.activeElement.getAttribute('data-t')") == "1"
    page.keyboard.press("End")
    assert f"Token {store.lengths[1]} of" in page.locator("#panel h2").inner_text()
    assert page.locator(".answer .tok[tabindex='0']").count() == 1  # one tab stop (roving)

    # With analyze's filters: exactly the left-out positions greyed, said in the header and panel.
    filtered = tmp_path / "filtered"
    result = CliRunner().invoke(
        main,
        [
            "report",
            str(scored),
            "-o",
            str(filtered),
            "--exclude-first",
            "2",
            "--exclude-special-tokens",
        ],
    )
    assert result.exit_code == 0, result.output
    page.goto((filtered / "index.html").as_uri())
    page.wait_for_selector("#examples-table tbody tr")
    left_out = data_of(filtered, "index.js")[0]["summary"]["excluded"]["positions"]
    assert "first 2 positions and special tokens" in page.locator("#filters").inner_text()
    assert f"({left_out} positions)" in page.locator("#filters").inner_text()
    page.goto((filtered / "example.html").as_uri() + "?ex=1")
    page.wait_for_selector(".answer .tok")
    special = set(tokenizer.all_special_ids)
    expected = [i for i, tok in enumerate(token_ids.tolist()) if i < 2 or tok in special]
    greyed = page.evaluate(
        "[...document.querySelectorAll('.answer .tok')].flatMap((s, i) => s.classList.contains('excluded') ? [i] : [])"
    )
    assert greyed == expected
    header = page.locator("#filters").inner_text()
    assert (
        "first 2 positions" in header
        and f"{len(expected)} of {store.lengths[1]} positions" in header
    )
    page.locator(".answer .tok").nth(0).click()
    assert "first 2 positions" in page.locator("#panel-excluded").inner_text()
    assert metric(page, "in the summary").startswith("left out")
    page.locator(".answer .tok").nth(3).click()
    assert (
        metric(page, "in the summary") == "counted" and page.locator("#panel-excluded").count() == 0
    )
    page.screenshot(path=str(tmp_path / "filtered.png"))
    page.goto((scored_site / "example.html").as_uri() + "?ex=1")
    page.wait_for_selector(".answer .tok")

    # Previous / next.
    page.click("nav.exnav a[rel=next]")
    page.wait_for_selector(".answer .tok")
    assert page.locator("#example-id").inner_text() == store.ids[2]
    assert page.locator("nav.exnav a[rel=next]").count() == 0  # the last example
    page.click("nav.exnav a[rel=prev]")
    page.wait_for_selector(".answer .tok")
    assert page.locator("#example-id").inner_text() == store.ids[1]

    # Hostile tokens, one token each: shown as text, nothing executed, no element injected.
    store_y, _ = synthetic
    ids_y = Store(store_y, mode="r").read("positions/token_id", Store(store_y, mode="r").rows(0))
    tok_y = Store(store_y, mode="r").tokenizer()
    t_evil = [tok_y.decode([int(i)]) for i in ids_y].index(EVIL_SCRIPT)
    page.goto((synthetic_site / "example.html").as_uri() + "?ex=0")
    page.wait_for_selector(".answer .tok")
    page.locator(".answer .tok").nth(t_evil).click()
    assert page.locator(".answer .tok").nth(t_evil).inner_text() == EVIL_SCRIPT
    assert page.locator("#panel-token").inner_text() == EVIL_SCRIPT
    assert panel_tokens(page, "base")[:2] == [EVIL_SCRIPT, visible(EVIL_IMG)]
    for model in MODELS:  # all of top-6, control characters included (\x0c here)
        top = Store(store_y, mode="r").read(f"{model}/top_ids", slice(0, len(ids_y)))[t_evil]
        assert panel_tokens(page, model) == [visible(tok_y.decode([int(i)])) for i in top]
    assert page.evaluate("document.querySelectorAll('img').length") == 0
    scripts = page.evaluate("[...document.scripts].map(s => s.getAttribute('src'))")
    assert scripts == ["assets/base.js", "assets/report.js", "data/ex-0.js"]
    page.screenshot(path=str(tmp_path / "hostile.png"))
    page.goto((synthetic_site / "index.html").as_uri())
    page.wait_for_selector("#examples-table tbody tr")
    labels = page.locator("svg.chart text.token-label").all_text_contents()
    assert labels and labels[0] == "<script>alert(1\u2026"  # shortened to 16 characters
    shifted_chart = page.locator("svg.chart", has_text="Tokens most often shifted")
    assert "78% (7/9)" in shifted_chart.text_content()  # read from `shift_rate`
    assert EVIL_IMG in page.locator("dl.config").inner_text()  # the config, as text
    stray = "[...document.querySelectorAll('img')].filter(i => !i.closest('#figures')).length"
    assert page.evaluate(stray) == 0  # the only images are the site's own figures

    # Crafted (scored) answers and id: text in the table, the prefix and the title; a pending row.
    page.goto((crafted_site / "index.html").as_uri())
    page.wait_for_selector("#examples-table tbody tr")
    assert EVIL_ID in column(page, "id")
    pending = page.locator("#examples-table tbody tr.pending")
    assert pending.count() == 1 and pending.locator("a").count() == 0
    assert "pending" in pending.inner_text()
    page.goto((crafted_site / "example.html").as_uri() + "?ex=1")
    page.wait_for_selector(".answer .tok")
    assert page.locator("#example-id").inner_text() == EVIL_ID
    page.locator(".answer .tok").last.click()
    assert page.locator("#panel .prefix").inner_text().startswith(EVIL_IMG)
    assert page.evaluate("document.querySelectorAll('img').length") == 0
    w.check()
    # A pending example has no data file: the page says so (the browser logs the missing file).
    page.goto((crafted_site / "example.html").as_uri() + "?ex=2")
    assert "pending" in page.locator("[role=alert]").inner_text()
    assert w.errors == ["Failed to load resource: net::ERR_FILE_NOT_FOUND"]
    w.errors.clear()
    w.check()
    page.close()
    print(f"browser test: {time.perf_counter() - start:.1f} s")
