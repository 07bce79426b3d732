"""Stores written by tdsdist 0.1.0 keep working: they open, show, analyse, resume and complete.

The stores under `tests/fixtures/store-0.1.0/` were written by 0.1.0 itself (see its README) with
the tiny pair that `save_tiny_pair(Path("models"), vocab_size=301, seed=0)` builds; the models
are rebuilt here beside a copy (the stores name them by relative path, as a user's would).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from compat_helpers import (
    CLOSE,
    EXACT,
    assert_json_close,
    assert_same_store,
    copy_with_models,
    keep_keys_of,
    resume_partial,
    run,
)
from tdsdist_testkit.cli_args import cli_args

FIXTURES = Path(__file__).parent / "fixtures" / "store-0.1.0"
COMPLETE_RECORDED = cli_args(
    None,
    "models/aligned",
    "models/base",
    data="answers.json",
    aligned_template="chat",
    unit_size=2,
    top_k=5,
)


@pytest.fixture(scope="module")
def old(tmp_path_factory) -> Path:
    """A copy of the 0.1.0 fixtures with the tiny pair rebuilt under `models/`."""
    return copy_with_models(FIXTURES, tmp_path_factory.mktemp("compat") / "v010")


def test_show_and_analyze_print_what_010_printed(old: Path, monkeypatch) -> None:
    for example in ("0", "5"):
        result = run(old, monkeypatch, "show", "complete.zarr", "--example", example, "--json")
        assert result.exit_code == 0, result.output
        want = json.loads((old / f"show_{example}.json").read_text())
        got = json.loads(result.output)
        assert_json_close(keep_keys_of(got, want), want)  # 0.1.0's fields, unchanged
        assert got["format_version"] == 1
        for p in got["positions"]:  # what format 1 never measured is reported as such
            assert p["divergence"] is None and p["aligned"]["ties"] is None
    result = run(old, monkeypatch, "analyze", "complete.zarr", "--json")
    assert result.exit_code == 0, result.output
    got, want = json.loads(result.output), json.loads((old / "analyze.json").read_text())
    # New keys may be added and none may change, except one on purpose: 0.1.0's coarse
    # `by_position` buckets moved to `by_position_bucket` (`by_position` is now per token, with
    # intervals), and the category fractions gained their interval.
    for row in got["by_position_bucket"] + got["by_relative_position"]:  # new: intervals
        lo, hi = row.pop("shifted_ci")
        assert row["positions"] == 0 or lo <= row["shifted_fraction"] <= hi
    assert_json_close(got["by_position_bucket"], want.pop("by_position"))
    for c in want["categories"].values():
        c["ci"] = None
    for c in got["categories"].values():
        lo, hi = c.pop("ci")
        assert lo <= c["fraction"] <= hi
        c["ci"] = None
    assert_json_close(keep_keys_of(got, want), want)


def test_status_and_the_python_api_read_010_stores(old: Path, monkeypatch) -> None:
    import tdsdist

    for name in ("partial", "recorded"):
        result = run(old, monkeypatch, "status", f"{name}.zarr", "--json")
        assert json.loads(result.output) == json.loads((old / f"status_{name}.json").read_text())
    store = tdsdist.open_store(old / "complete.zarr")
    example = store.example("3")
    assert (example["base_rank"] >= 1).all() and len(example["token_id"]) == 12
    assert (
        store.summary()["positions"] == json.loads((old / "analyze.json").read_text())["positions"]
    )


def test_a_store_killed_under_010_resumes_to_the_complete_one(old: Path, monkeypatch) -> None:
    import tdsdist.inputs.fingerprint as fingerprint

    monkeypatch.setattr(fingerprint, "__version__", "0.2.0")  # a later release resumes it too
    resume_partial(old, monkeypatch, EXACT + CLOSE)  # the unit 0.1.0 committed is kept


def test_a_store_recorded_by_010_generate_is_completed(old: Path, monkeypatch) -> None:
    result = run(old, monkeypatch, "score", *COMPLETE_RECORDED, "--store", "recorded.zarr")
    assert result.exit_code == 0, result.output
    assert "base pass only" in result.output
    assert_same_store(old / "recorded.zarr", old / "recorded-completed.zarr")
    result = run(old, monkeypatch, "show", "recorded.zarr", "--example", "1", "--json")
    want = json.loads((old / "show_recorded_1.json").read_text())
    got = json.loads(result.output)
    assert [p["token_id"] for p in got["positions"]] == [p["token_id"] for p in want["positions"]]
    assert [p["base"]["rank"] for p in got["positions"]] == [
        p["base"]["rank"] for p in want["positions"]
    ]


def test_report_and_compare_read_010_stores(old: Path, monkeypatch) -> None:
    result = run(old, monkeypatch, "report", "complete.zarr", "-o", "site")
    assert result.exit_code == 0, result.output
    assert (old / "site" / "index.html").exists()
    result = run(old, monkeypatch, "compare", "complete.zarr", "complete.zarr", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)["summaries"][0]
    assert summary["intervals"]["divergences"] == "top-k KL (format 1)"
    assert "mean_kl" in summary["by_position"][0]
