"""Shared pytest fixtures: tiny offline model pairs built once per session, and a headless
Chromium for the browser tests.

Building and saving a pair takes a fraction of a second, but many tests read the same folders,
so they are session-scoped and must be treated as read-only.

The browser tests (`test_report.py`, `test_serve_page.py`) need Debian's `chromium`
(/usr/bin/chromium) and the `playwright` Python package (its bundled driver only: never
`playwright install`); `browser` skips without them, or fails if TDSDIST_REQUIRE_BROWSER=1 (CI).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tdsdist_testkit import save_tiny_pair

#: Vocabulary of the models in `tiny_pair_odd_vocab`: the 301-token tokenizer padded to a
#: multiple of 64, as real checkpoints pad theirs.
ODD_MODEL_VOCAB_SIZE = 320
CHROMIUM = Path("/usr/bin/chromium")
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture(scope="session", autouse=True)
def torch_threads() -> Iterator[None]:
    """Run torch on one thread: tiny models are faster so, and results do not depend on cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(aligned, base) checkpoint folders sharing a 301-token tokenizer."""
    return save_tiny_pair(tmp_path_factory.mktemp("tiny_pair"), vocab_size=301, seed=0)


@pytest.fixture(scope="session")
def tiny_pair_odd_vocab(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(aligned, base) folders whose models have more vocabulary rows than the tokenizer has
    tokens (301 tokens, 320 rows), to check that padded logits are ignored."""
    return save_tiny_pair(
        tmp_path_factory.mktemp("tiny_pair_odd_vocab"),
        vocab_size=301,
        seed=0,
        model_vocab_size=ODD_MODEL_VOCAB_SIZE,
    )


def no_browser(reason: str) -> None:
    """Skip, or fail where CI sets TDSDIST_REQUIRE_BROWSER=1 (a skip there would hide a gap)."""
    if os.environ.get("TDSDIST_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}, and TDSDIST_REQUIRE_BROWSER=1")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """A headless Chromium (playwright's `Browser`), one per test module, closed after it."""
    if not CHROMIUM.exists():
        no_browser("browser test: /usr/bin/chromium missing (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        no_browser("browser test: the playwright package is missing (pip install playwright)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        yield b
        b.close()
