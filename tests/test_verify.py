"""Integrity: a damaged chunk is an error naming the array and the unit, never silent numbers;
`tdsdist verify` lists damaged units, `--repair` marks them pending, and the same `score`
command re-scores just those."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from tdsdist_testkit.cli_args import cli_args

from tdsdist.cli import main
from tdsdist.store import Store


def score_args(pair, store: Path) -> list[str]:
    return cli_args(
        "score", *pair, store=store, top_k=5, limit=6, unit_size=2, max_output_tokens=16
    )


@pytest.fixture(scope="module")
def scored(tiny_pair, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("verify") / "s.zarr"
    result = CliRunner().invoke(main, score_args(tiny_pair, store))
    assert result.exit_code == 0, result.output
    return store


def corrupt(store: Path, array: str, unit: int) -> Path:
    """Flip bytes in the middle of the chunk file (format 4: the shard; these units' shards
    hold one inner chunk, whose bytes are the middle) that holds the start of `unit`'s rows."""
    s = Store(store, mode="r")
    chunk = s.meta["unit_starts"][unit] // s.meta.get("shard_positions", s.meta["chunk_positions"])
    path = store / array / "c" / str(chunk)
    if s.root[array].ndim == 2:
        path = path / "0"
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4] = bytes(b ^ 0xFF for b in data[middle : middle + 4])
    path.write_bytes(bytes(data))
    return path


def test_a_damaged_chunk_is_named_then_repaired_and_rescored(tiny_pair, scored, tmp_path) -> None:
    store = tmp_path / "s.zarr"
    shutil.copytree(scored, store)
    corrupt(store, "positions/js", 1)
    corrupt(store, "base/top_logprobs", 1)
    runner = CliRunner()
    shown = runner.invoke(main, ["show", str(store), "--example", "2", "--json"])  # unit 1
    assert shown.exit_code == 2
    assert "damaged data in unit(s) 1" in shown.output and "verify" in shown.output
    assert len(shown.output.strip().splitlines()) == 1 and "Traceback" not in shown.output
    assert runner.invoke(main, ["show", str(store), "--example", "0"]).exit_code == 0  # unit 0
    checked = runner.invoke(main, ["verify", str(store)])
    assert checked.exit_code == 1
    assert "unit 1: damaged" in checked.output and "base/top_logprobs" in checked.output
    assert "positions/js" in checked.output and "unit 0" not in checked.output
    assert Store(store, mode="r").committed().all()  # without --repair nothing changes
    repaired = runner.invoke(main, ["verify", str(store), "--repair"])
    assert repaired.exit_code == 0 and "marked pending" in repaired.output
    assert Store(store, mode="r").committed().tolist() == [True, False, True]
    rescored = runner.invoke(main, score_args(tiny_pair, store))
    assert rescored.exit_code == 0, rescored.output
    assert "2 already committed, 1 to do" in rescored.output
    assert runner.invoke(main, ["verify", str(store)]).exit_code == 0
    a, b = Store(store, mode="r"), Store(scored, mode="r")
    for name in a.array_names():
        np.testing.assert_array_equal(a.read(name), b.read(name), err_msg=name)


def test_verify_checks_what_it_can_in_a_store_without_checksums() -> None:
    old = Path(__file__).parent / "fixtures" / "store-0.1.0" / "complete.zarr"
    result = CliRunner().invoke(main, ["verify", str(old)])
    assert result.exit_code == 0 and "no checksums" in result.output
    assert "none damaged" in result.output
