"""Stores of format 3 (one file per 4,096-position chunk) and their format-4 twins (one shard per
array and unit) keep working: they show and analyse as the release that wrote them did, a killed
one resumes to the complete one in its own format, and the twins hold the same numbers.

The stores under `tests/fixtures/store-format3/` and `store-format4/` were written by those
releases themselves with the same `tests/fixtures/make_store.sh` (their READMEs).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
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

from tdsdist.store import Store

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def old(tmp_path_factory) -> Path:
    """Both fixture folders under one root, with the tiny pair rebuilt in each."""
    root = tmp_path_factory.mktemp("compat34")
    for version in (3, 4):
        copy_with_models(FIXTURES / f"store-format{version}", root / f"format{version}")
    return root


@pytest.mark.parametrize("version", [3, 4])
def test_show_and_analyze_print_what_their_release_printed(old: Path, monkeypatch, version) -> None:
    folder = old / f"format{version}"
    result = run(folder, monkeypatch, "show", "complete.zarr", "--example", "0", "--json")
    assert result.exit_code == 0, result.output
    want = json.loads((folder / "show_0.json").read_text())
    got = json.loads(result.output)
    assert_json_close(keep_keys_of(got, want), want)
    assert got["format_version"] == version
    result = run(folder, monkeypatch, "analyze", "complete.zarr", "--json")
    assert result.exit_code == 0, result.output
    got, want = json.loads(result.output), json.loads((folder / "analyze.json").read_text())
    assert_json_close(keep_keys_of(got, want), want)


def test_the_format_4_twin_holds_the_same_numbers(old: Path) -> None:
    three, four = (Store(old / f"format{v}" / "complete.zarr", mode="r") for v in (3, 4))
    assert "shard_positions" not in three.meta and four.meta["shard_positions"] == 4096
    assert three.array_names() == four.array_names() and three.ids == four.ids
    for name in three.array_names():  # same rows: these units fit one chunk in both layouts
        np.testing.assert_array_equal(four.read(name), three.read(name), err_msg=name)


@pytest.mark.parametrize("version", [3, 4])
def test_a_killed_store_resumes_in_its_own_format(old: Path, monkeypatch, version) -> None:
    folder = old / f"format{version}"
    partial = folder / "partial.zarr"
    after = resume_partial(folder, monkeypatch, EXACT + CLOSE)
    assert after.format_version == version
    assert ("shard_positions" in after.meta) == (version == 4)
    for name in after.array_names():  # format 3: a file per chunk; format 4: a shard per unit
        files = sorted(p.name for p in (partial / name / "c").iterdir())
        assert files == ["0", "1", "2"], (name, files)
    result = run(folder, monkeypatch, "verify", "partial.zarr")
    assert result.exit_code == 0 and "none damaged" in result.output
