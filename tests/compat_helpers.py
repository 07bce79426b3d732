"""What the compatibility tests share: the arrays compared, the command that made the fixture
stores, and JSON and store comparisons (`test_compat.py`: 0.1.0; `test_compat_format2.py`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from tdsdist_testkit import assert_float32_close, save_tiny_pair
from tdsdist_testkit.cli_args import cli_args

from tdsdist.cli import main
from tdsdist.store import Store

EXACT = ["aligned/top_ids", "base/top_ids", "aligned/rank", "base/rank", "positions/token_id"]
CLOSE = [
    "aligned/top_logprobs",
    "base/top_logprobs",
    "aligned/logprob",
    "base/logprob",
    "aligned/entropy",
    "base/entropy",
    "base/logprobs_at_aligned_top",
    "positions/kl",
]
SCORE = cli_args(
    None,
    "models/aligned",
    "models/base",
    data="data.json",
    unit_size=2,
    max_output_tokens=12,
    top_k=5,
)


def keep_keys_of(got, want):
    """`got` restricted to the keys `want` has, recursively (new fields may be added)."""
    if isinstance(want, dict):
        return {k: keep_keys_of(got[k], v) for k, v in want.items()}
    if isinstance(want, list) and isinstance(got, list):
        return [keep_keys_of(g, w) for g, w in zip(got, want)]
    return got


def assert_json_close(got, want, where: str = "") -> None:
    """Equal JSON, floats to 1e-12 relative: numpy's float64 sums may take other SIMD paths on
    another CPU, and nothing else may differ."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), where
        for key in want:
            assert_json_close(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_json_close(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-12, abs=1e-300), where
    else:
        assert got == want, where


def assert_same_store(got: Path, want: Path, rows: np.ndarray | None = None) -> None:
    a, b = Store(got, mode="r"), Store(want, mode="r")
    assert a.committed().all() and b.committed().all()
    assert a.ids == b.ids
    mask = b.valid_rows() if rows is None else rows
    for name in EXACT:
        np.testing.assert_array_equal(a.read(name)[mask], b.read(name)[mask], err_msg=name)
    for name in CLOSE:
        assert_float32_close(a.read(name)[mask], b.read(name)[mask], err_msg=name)


def copy_with_models(fixtures: Path, root: Path) -> Path:
    """A copy of a fixture folder with the tiny pair its stores name (`models/`) rebuilt beside
    them, as `save_tiny_pair(Path("models"), vocab_size=301, seed=0)` made it."""
    shutil.copytree(fixtures, root)
    save_tiny_pair(root / "models", vocab_size=301, seed=0)
    return root


def run(root: Path, monkeypatch, *args: str):
    """`tdsdist ARGS` from `root` (the stores name the models by relative path, as users do)."""
    monkeypatch.chdir(root)
    return CliRunner().invoke(main, list(args))


def resume_partial(folder: Path, monkeypatch, names: list[str]) -> Store:
    """Score `folder/partial.zarr` (killed after committing its first unit) again with the
    fixture's command: it resumes, scoring the 2 units left, to what `complete.zarr` holds, and
    the arrays `names` of the committed unit are not scored again. Returns the resumed store."""
    partial = folder / "partial.zarr"
    before = Store(partial, mode="r")
    first = slice(0, before.units()[0].positions)
    kept = {name: before.read(name)[first].copy() for name in names}
    result = run(folder, monkeypatch, "score", *SCORE, "--store", "partial.zarr")
    assert result.exit_code == 0, result.output
    assert "1 already committed, 2 to do" in result.output
    assert_same_store(partial, folder / "complete.zarr")
    after = Store(partial, mode="r")
    for name, values in kept.items():
        np.testing.assert_array_equal(after.read(name)[first], values, err_msg=name)
    return after
