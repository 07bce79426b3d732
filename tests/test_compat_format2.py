"""Stores of format 2 (the release before format 3) keep working: they show and analyse as that
release did, AlignTDS's metrics are computed from their top-k tables, and a killed one resumes
to the complete one in its own format (no `published/` arrays appear in it).

The stores under `tests/fixtures/store-format2/` were written by that release itself (its README).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from compat_helpers import (
    CLOSE,
    EXACT,
    assert_json_close,
    copy_with_models,
    keep_keys_of,
    resume_partial,
    run,
)

from tdsdist.analysis import published as pub
from tdsdist.store import PAIR_ARRAYS, Store

FIXTURES = Path(__file__).parent / "fixtures" / "store-format2"
PAIR = [f"{g}/{c.name}" for g, cs in PAIR_ARRAYS.items() for c in cs]


@pytest.fixture(scope="module")
def old(tmp_path_factory) -> Path:
    return copy_with_models(FIXTURES, tmp_path_factory.mktemp("compat2") / "format2")


def test_show_and_analyze_print_what_format_2_printed(old: Path, monkeypatch) -> None:
    result = run(old, monkeypatch, "show", "complete.zarr", "--example", "0", "--json")
    assert result.exit_code == 0, result.output
    want = json.loads((old / "show_0.json").read_text())
    got = json.loads(result.output)
    assert_json_close(keep_keys_of(got, want), want)
    assert got["format_version"] == 2
    result = run(old, monkeypatch, "analyze", "complete.zarr", "--json")
    assert result.exit_code == 0, result.output
    got, want = json.loads(result.output), json.loads((old / "analyze.json").read_text())
    assert_json_close(keep_keys_of(got, want), want)  # nothing that release printed changed
    store = Store(old / "complete.zarr", mode="r")
    assert not store.has_published and got["published"]["jaccard"]["mean"] is not None
    rows = store.valid_rows()
    computed = pub.published_rows(store, slice(0, len(rows)))
    assert got["published"]["jaccard"]["mean"] == pytest.approx(computed["jaccard"][rows].mean())


def test_a_killed_format_2_store_resumes_in_its_own_format(old: Path, monkeypatch) -> None:
    after = resume_partial(old, monkeypatch, EXACT + CLOSE + PAIR)
    assert after.format_version == 2 and not (old / "partial.zarr" / "published").exists()
    result = run(old, monkeypatch, "verify", "partial.zarr")
    assert result.exit_code == 0 and "none damaged" in result.output
