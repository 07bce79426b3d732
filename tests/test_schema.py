"""The store schema is the one list of per-position arrays: a column added to it (here, in a
test schema) is written by `create`, and shows up in `show --json`, `export` and the API with no
further code. Also the one home of two rules readers share: an example's unit (`Store.unit_of`,
from the stored `examples/unit`, computed only where a store lacks it) and which positions count
(`Filters.keep`)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from synthetic import build

import tdsdist
from tdsdist.analysis_options import Filters
from tdsdist.cli import main
from tdsdist.store import Store, schema

LENGTHS = [3, 5, 4, 2, 6]
K = 5
SURPRISE = schema.Column("surprise", "float32", float("nan"))  # positions/surprise  [P]
HINTS = schema.Column("hints", "int32", -1, per_candidate=True)  # aligned/hints  [P, k]


@pytest.fixture
def extended(tmp_path: Path, monkeypatch) -> tuple[Path, dict[str, np.ndarray]]:
    """A synthetic store written under a schema with two more columns, their values written
    through `Store.write_rows` for every unit but the last (left pending)."""
    monkeypatch.setattr(schema, "POSITION_ARRAYS", (*schema.POSITION_ARRAYS, SURPRISE))
    monkeypatch.setitem(schema.PAIR_ARRAYS, "aligned", (*schema.PAIR_ARRAYS["aligned"], HINTS))
    path = tmp_path / "extended.zarr"
    commit = [True, True, False]
    build(path, LENGTHS, k=K, commit=commit)
    store = Store(path)
    rng = np.random.default_rng(3)
    total = sum(LENGTHS)
    values = {
        "positions/surprise": rng.random(total).astype(np.float32),
        "aligned/hints": rng.integers(0, 300, (total, K)).astype(np.int32),
    }
    offsets = np.concatenate([[0], np.cumsum(LENGTHS)])
    for unit in store.units():
        if commit[unit.index]:
            lo = int(offsets[unit.examples.start])
            rows = slice(lo, lo + unit.positions)
            store.write_rows(unit, {name: v[rows] for name, v in values.items()})
    return path, values


def _answer(values: dict[str, np.ndarray], example: int) -> dict[str, np.ndarray]:
    lo = sum(LENGTHS[:example])
    return {name: v[lo : lo + LENGTHS[example]] for name, v in values.items()}


def test_a_new_column_is_created_and_listed(extended) -> None:
    path, _ = extended
    store = Store(path, mode="r")
    assert store.columns["positions/surprise"] == SURPRISE
    assert store.columns["aligned/hints"] == HINTS
    assert store.root["aligned/hints"].shape == (store.meta["unit_starts"][-1], K)
    assert store.root["positions/surprise"].metadata.dimension_names == ("position",)


def test_a_new_column_shows_up_in_show_export_and_the_api(extended, tmp_path) -> None:
    path, values = extended
    want = _answer(values, 3)  # unit 1: committed
    runner = CliRunner()

    shown = runner.invoke(main, ["show", str(path), "--example", "ex3", "--json"])
    assert shown.exit_code == 0, shown.output
    positions = json.loads(shown.output)["positions"]
    assert [p["surprise"] for p in positions] == want["positions/surprise"].tolist()
    assert [p["aligned"]["hints"] for p in positions] == want["aligned/hints"].tolist()

    out = tmp_path / "positions.parquet"
    exported = runner.invoke(main, ["export", str(path), "-o", str(out)])
    assert exported.exit_code == 0, exported.output
    table = pq.read_table(out).to_pandas()
    assert len(table) == sum(LENGTHS[:4])  # the pending unit's answer is not a row
    rows = table[table["example_id"] == "ex3"]
    np.testing.assert_array_equal(rows["surprise"].to_numpy(), want["positions/surprise"])
    np.testing.assert_array_equal(np.stack(rows["aligned_hints"].to_numpy()), want["aligned/hints"])

    example = tdsdist.open_store(path).example("ex3")
    np.testing.assert_array_equal(example["surprise"], want["positions/surprise"])
    np.testing.assert_array_equal(example["aligned_hints"], want["aligned/hints"])


def test_without_the_new_column_nothing_more_shows(tmp_path) -> None:
    """The same readers on a store of the shipped schema: no `surprise`, no `hints`."""
    path = tmp_path / "plain.zarr"
    build(path, LENGTHS, k=K)
    shown = CliRunner().invoke(main, ["show", str(path), "--example", "ex3", "--json"])
    assert shown.exit_code == 0, shown.output
    position = json.loads(shown.output)["positions"][0]
    assert "surprise" not in position and "hints" not in position["aligned"]
    assert "surprise" not in tdsdist.open_store(path).example("ex3")


def test_unit_of_reads_the_stored_units_and_computes_them_only_without(tmp_path) -> None:
    path = tmp_path / "units.zarr"
    build(path, LENGTHS, unit_size=2)
    store = Store(path, mode="r")
    assert [store.unit_of(i) for i in range(len(LENGTHS))] == [0, 0, 1, 1, 2]
    # The stored array is what is read: a store whose `examples/unit` says otherwise is believed
    # (`verify` names such a disagreement: `store.checks.layout_problems`).
    writable = Store(path)
    writable.root["examples/unit"][:] = np.array([0, 1, 1, 2, 2], np.int32)
    assert [Store(path, mode="r").unit_of(i) for i in range(5)] == [0, 1, 1, 2, 2]
    # A store without the array (none tdsdist wrote): computed by the unit rule.
    shutil.rmtree(path / "examples" / "unit")
    older = Store(path, mode="r")
    assert "unit" not in older.root["examples"]
    assert [older.unit_of(i) for i in range(5)] == [0, 0, 1, 1, 2]


def test_committed_examples_and_example_follow_unit_of(tmp_path) -> None:
    path = tmp_path / "pending.zarr"
    build(path, LENGTHS, unit_size=2, commit=[True, False, True])
    store = Store(path, mode="r")
    assert store.committed_examples().tolist() == [True, True, False, False, True]
    assert set(store.example(4)) == set(store.columns)
    assert store.example(0, ["base/rank"])["base/rank"].shape == (LENGTHS[0],)
    with pytest.raises(tdsdist.errors.TdsError, match="ex2.*not scored yet"):
        store.example(2)


@pytest.mark.parametrize("first", [0, 1, 3])
@pytest.mark.parametrize("special", [[], [2], [0, 7]])
def test_filters_keep_is_the_naive_rule(first: int, special: list[int]) -> None:
    rng = np.random.default_rng(first)
    t = rng.integers(0, 6, 200)
    tokens = rng.integers(0, 9, 200)
    filters = Filters(exclude_first=first, exclude_special_tokens=bool(special))
    ids = np.array(special, np.int64)
    want = [t[i] >= first and int(tokens[i]) not in special for i in range(200)]
    assert filters.keep(t, tokens, ids).tolist() == want


def test_filters_special_ids_load_the_tokenizer_only_when_asked() -> None:
    class Tokenizer:
        all_special_ids = [5, 1, 3]

    def never() -> Tokenizer:
        raise AssertionError("loaded a tokenizer without --exclude-special-tokens")

    assert Filters().special_ids(never).tolist() == []
    got = Filters(exclude_special_tokens=True).special_ids(Tokenizer)
    assert got.tolist() == [1, 3, 5] and got.dtype == np.int64


def test_the_heads_containers_take_names_and_dtypes_from_the_schema() -> None:
    """Every field of the pair head's container is a schema column, converted to its dtype; the
    one-model head's fields are the per-model columns (and the base's support log-probs)."""
    import torch

    from tdsdist.engine.head import HeadOutput
    from tdsdist.engine.pair_head import PairOutput

    n, k = 3, 4
    pair = PairOutput(
        **{
            f.name: torch.ones(n, k)
            if PairOutput.column_of(f.name).per_candidate
            else torch.ones(n)
            for f in dataclasses.fields(PairOutput)
        }
    )
    arrays = pair.arrays()
    everything = schema.columns_of(schema.FORMAT_VERSION)
    assert set(arrays) == {p for p in everything if not p.startswith("published/")} - {
        "positions/token_id",
        "positions/kl",
    }
    for name, values in arrays.items():
        assert values.dtype == np.dtype(everything[name].dtype), name
    head = HeadOutput(
        *(torch.ones(n, k, dtype=torch.float64) for _ in range(2)),
        *(torch.ones(n, dtype=torch.float64) for _ in range(3)),
        support_logprobs=torch.ones(n, k),
    )
    got = head.numpy()
    for c in schema.MODEL_ARRAYS:
        assert got[c.name].dtype == np.dtype(c.dtype), c.name
    assert got["support_logprobs"].dtype == np.dtype(schema.BASE_ARRAYS[0].dtype)
    # split / cat / to_cpu: one implementation for both containers (`engine/rows.py`).
    parts = pair.split([1, 2])
    assert [p.js.shape[0] for p in parts] == [1, 2]
    assert torch.equal(PairOutput.cat(parts).to_cpu().aligned_top_ids, pair.aligned_top_ids)
    assert HeadOutput.cat(head.split([2, 1])).support_logprobs.shape == (n, k)
