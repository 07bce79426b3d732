"""`tdsdist export`: the Parquet table read back equals the store's arrays, row for row.

The reference is built straight from the store, example by example (`Store.rows`), not through
the streamed blocks the export uses; blocks as small as a few rows (an example cut across many
blocks and row groups) must give the same table. Stores of format 1 (tdsdist 0.1.0) export with
null exact-divergence columns.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from tdsdist_testkit import assert_float32_close
from tdsdist_testkit.cli_args import cli_args

from tdsdist.analysis import export
from tdsdist.analysis.export import COLUMNS, _published_type, export_parquet
from tdsdist.analysis.published import NAMES as PUBLISHED
from tdsdist.analysis.published import published_rows
from tdsdist.analysis.summary import Filters, Thresholds
from tdsdist.cli import main
from tdsdist.errors import TdsError
from tdsdist.metrics import CATEGORIES, categories
from tdsdist.store import DIVERGENCES, MODELS, Store

FIXTURES = Path(__file__).parent / "fixtures" / "store-0.1.0"
ANSWERS = [
    "Hello there, fine.</s>",
    "A short answer here.</s>",
    "Yes.</s>",
    "No, not quite so.</s>",
]


def score_with_eos(tiny_pair, folder: Path) -> Path:
    """The tiny pair on short answers that end in the literal `</s>`, mapped to the EOS token:
    every answer then holds one special token (for the special-token filter)."""
    records = [
        {
            "id": f"q{i}",
            "pure_input": f"Q{i}?",
            "input": f"<|user|>\nQ{i}?\n<|assistant|>\n",
            "output": a,
        }
        for i, a in enumerate(ANSWERS)
    ]
    data = folder / "data.json"
    data.write_text(json.dumps(records), encoding="utf-8")
    aligned, base = tiny_pair
    args = cli_args(
        "score",
        aligned,
        base,
        data=data,
        store=folder / "s.zarr",
        unit_size=1,
        top_k=5,
        answer_eos_text="</s>",
        answer_eos="map",
    )
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return folder / "s.zarr"


@pytest.fixture(scope="module")
def scored(tiny_pair, tmp_path_factory) -> Path:
    return score_with_eos(tiny_pair, tmp_path_factory.mktemp("export_scored"))


def expected(store: Store, thresholds=Thresholds(), filters=Filters()) -> dict[str, list]:
    """The table as it should be, example by example from the store's arrays."""
    tokenizer = store.tokenizer()
    special = set(tokenizer.all_special_ids) if filters.exclude_special_tokens else set()
    done = store.committed()
    cols: dict[str, list] = {c: [] for c in COLUMNS}
    for i, example_id in enumerate(store.ids):
        if not done[i // store.meta["unit_size"]]:
            continue
        rows = store.rows(i)
        tokens = store.read("positions/token_id", rows)
        t = np.arange(len(tokens))
        keep = (t >= filters.exclude_first) & ~np.isin(tokens, list(special))
        cols["example_index"] += [i] * int(keep.sum())
        cols["example_id"] += [example_id] * int(keep.sum())
        cols["t"] += t[keep].tolist()
        cols["token_id"] += tokens[keep].tolist()
        cols["token"] += [tokenizer.decode([int(x)]) for x in tokens[keep]]
        for model in MODELS:
            for name in ("logprob", "rank", "entropy"):
                cols[f"{model}_{name}"] += store.read(f"{model}/{name}", rows)[keep].tolist()
            entropy = store.read(f"{model}/entropy", rows)[keep].astype(np.float64)
            cols[f"{model}_branching"] += np.exp(entropy).astype(np.float32).tolist()
        top1 = store.read("base/top_logprobs", rows)[keep][:, 0].astype(np.float64)
        cols["base_top1_prob"] += np.exp(top1).astype(np.float32).tolist()
        for name in DIVERGENCES:
            values = (
                store.read(f"positions/{name}", rows)[keep].tolist()
                if store.has_pair
                else [None] * int(keep.sum())
            )
            cols[name] += values
        cols["topk_kl"] += store.read("positions/kl", rows)[keep].tolist()
        rank = store.read("base/rank", rows)[keep]
        cats = categories(rank, thresholds.unshifted_max, thresholds.marginal_max)
        cols["category"] += [CATEGORIES[c] for c in cats]
        published = published_rows(store, rows)  # one example's rows (export reads whole blocks)
        for name in PUBLISHED:
            values = published.get(name)
            kind = _published_type(name).to_pandas_dtype()
            cols[f"published_{name}"] += (
                [None] * int(keep.sum()) if values is None else values[keep].astype(kind).tolist()
            )
    return cols


def assert_table_equals(path: Path, want: dict[str, list]) -> None:
    table = pq.read_table(path)
    assert table.column_names == list(COLUMNS)
    for name in COLUMNS:
        got = table.column(name).to_pylist()
        # Exact: float32 values travel unchanged (to_pylist of float32 and of the store's
        # float32 arrays give the same Python floats), NaN compared as NaN.
        assert len(got) == len(want[name]), name
        if (
            name.startswith("published_")
            and table.schema.field(name).type == pa.float32()
            and None not in got
        ):
            # Computed from the top-k lists in float32, vectorised over whatever rows are read
            # at once: the export's blocks and this test's examples round differently.
            assert_float32_close(np.array(got), np.array(want[name], np.float64), err_msg=name)
            continue
        assert [_key(x) for x in got] == [_key(x) for x in want[name]], name


def _key(x):
    return "nan" if isinstance(x, float) and x != x else x


def test_export_equals_the_store(scored: Path, tmp_path: Path) -> None:
    store = Store(scored, mode="r")
    out = tmp_path / "all.parquet"
    result = CliRunner().invoke(main, ["export", str(scored), "-o", str(out)])
    assert result.exit_code == 0, result.output
    want = expected(store)
    assert len(want["t"]) == int(store.lengths.sum())  # every committed position, no gap row
    assert_table_equals(out, want)
    assert f"{len(want['t'])} rows" in result.output
    table = pq.read_table(out)
    assert (
        str(table.schema.field("category").type)
        == "dictionary<values=string, indices=int8, ordered=0>"
    )
    meta = json.loads(table.schema.metadata[b"tdsdist"])
    assert meta["exact_divergences"] and meta["thresholds"] == {
        "unshifted_max": 1,
        "marginal_max": 3,
    }
    # The exact divergences are real numbers here (format 2), not the null columns of format 1.
    assert table.column("js").null_count == 0 and np.isfinite(table.column("js").to_numpy()).all()


def test_small_blocks_give_the_same_table(scored: Path, tmp_path: Path, monkeypatch) -> None:
    """Blocks of 7 rows cut every example across blocks (and row groups): same rows."""
    monkeypatch.setattr(export, "BLOCK_ROWS", 7)
    result = export_parquet(Store(scored, mode="r"), tmp_path / "small.parquet")
    assert result["row_groups"] > len(ANSWERS)
    assert (
        pq.ParquetFile(tmp_path / "small.parquet").metadata.num_row_groups == result["row_groups"]
    )
    assert_table_equals(tmp_path / "small.parquet", expected(Store(scored, mode="r")))


def test_filters_and_thresholds(scored: Path, tmp_path: Path) -> None:
    store = Store(scored, mode="r")
    out = tmp_path / "cut.parquet"
    args = [
        "export",
        str(scored),
        "-o",
        str(out),
        "--exclude-first",
        "2",
        "--exclude-special-tokens",
        "--unshifted-max",
        "2",
        "--marginal-max",
        "10",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    filters, thresholds = Filters(2, True), Thresholds(2, 10)
    want = expected(store, thresholds, filters)
    assert_table_equals(out, want)
    # The filters dropped exactly the first two positions and the EOS of each answer.
    eos = store.tokenizer().eos_token_id
    everything = pq.read_table(export_parquet(store, tmp_path / "all.parquet")["path"])
    tokens, t = everything.column("token_id").to_numpy(), everything.column("t").to_numpy()
    assert (tokens == eos).sum() == len(ANSWERS)  # the mapped </s>: one special token each
    assert len(want["t"]) == int(((t >= 2) & (tokens != eos)).sum()) < len(t)
    assert min(want["t"]) == 2 and eos not in want["token_id"]


def test_pending_units_are_left_out(scored: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.zarr"
    shutil.copytree(scored, copy)
    Store(copy).mark_pending(1)
    store = Store(copy, mode="r")
    export_parquet(store, tmp_path / "p.parquet")
    want = expected(store)
    assert 1 not in want["example_index"] and want["example_index"]
    assert_table_equals(tmp_path / "p.parquet", want)


@pytest.mark.parametrize("name", ["complete", "partial", "recorded-completed", "recorded"])
def test_stores_of_0_1_0_export(name: str, tmp_path: Path) -> None:
    store = Store(FIXTURES / f"{name}.zarr", mode="r")
    out = tmp_path / f"{name}.parquet"
    export_parquet(store, out)
    want = expected(store)
    assert_table_equals(out, want)
    table = pq.read_table(out)
    for column in DIVERGENCES:  # format 1: no exact divergences, null columns of their type
        assert table.column(column).null_count == table.num_rows
        assert str(table.schema.field(column).type) == "float"
    if name == "recorded":  # nothing committed: an empty table with the full schema
        assert table.num_rows == 0 and table.column_names == list(COLUMNS)
    else:
        assert table.num_rows > 0


def test_an_interrupted_export_leaves_nothing(scored: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "t.parquet"
    out.write_bytes(b"PAR1 the previous export")
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as Ctrl-C in the middle of the table
        return real(*args, **kwargs)

    real = export._table
    monkeypatch.setattr(export, "BLOCK_ROWS", 4096)  # several blocks: fail after one was written
    monkeypatch.setattr(export, "_table", failing)
    with pytest.raises(KeyboardInterrupt):
        export_parquet(Store(scored, mode="r"), out)
    assert out.read_bytes() == b"PAR1 the previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet"]  # no temporary left


def test_bad_output_paths(scored: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["export", str(scored), "-o", str(tmp_path / "no" / "x.parquet")]
    )
    assert (
        result.exit_code == 2
        and result.output.startswith("error: ")
        and "does not exist" in result.output
    )
    assert len(result.output.strip().splitlines()) == 1
    with pytest.raises(TdsError, match="is a folder"):
        export_parquet(Store(scored, mode="r"), tmp_path)


@pytest.mark.parametrize("which", ["scored", "0.1.0"])
def test_show_json_has_the_published_metrics_of_export(
    which: str, scored: Path, tmp_path: Path
) -> None:
    """`show --json`'s per-position `published` object holds export's `published_*` columns
    (format 3: stored; format 1: computed from the top-k lists, the format-2-only rank null)."""
    from tdsdist.analysis.show import example_record

    store = Store(scored if which == "scored" else FIXTURES / "complete.zarr", mode="r")
    export_parquet(store, tmp_path / "p.parquet")
    table = pq.read_table(tmp_path / "p.parquet").to_pydict()
    checked = 0
    for index, example_id in enumerate(store.ids):
        record = example_record(store, example_id)
        rows = [r for r, e in enumerate(table["example_index"]) if e == index]
        assert [table["t"][r] for r in rows] == [p["t"] for p in record["positions"]]
        for r, position in zip(rows, record["positions"]):
            for name in PUBLISHED:
                got, want = position["published"][name], table[f"published_{name}"][r]
                if want is None or isinstance(want, (bool, int)):
                    assert got == want, name
                elif which == "scored":  # stored in format 3: read, the same float32
                    assert np.float32(got) == np.float32(want), name
                else:  # computed from float32 top-k lists over other blocks of rows
                    assert_float32_close(np.array([got]), np.array([want]), 1.0, name)
                checked += 1
    assert checked >= len(PUBLISHED) * 10
    if which == "0.1.0":
        assert table["published_base_top1_aligned_rank"][0] is None
