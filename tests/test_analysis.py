"""`summarize`, `compare` and `open_store` against direct per-example computations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from tdsdist_testkit.cli_args import cli_args

import tdsdist
from tdsdist.analysis import summary as analysis
from tdsdist.analysis.compare import compare
from tdsdist.analysis.summary import Thresholds, summarize
from tdsdist.cli import main
from tdsdist.config import ScoreConfig
from tdsdist.errors import TdsError
from tdsdist.jobs.demo import demo_data_path
from tdsdist.jobs.prepare import prepare
from tdsdist.jobs.resume import create_store
from tdsdist.store import Store


def score(pair, store: Path, *extra: str) -> Path:
    aligned, base = pair
    args = cli_args("score", aligned, base, store=store, top_k=5, unit_size=2, extra=extra)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return store


@pytest.fixture(scope="module")
def stores(tiny_pair, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("analysis")
    return {
        "five": score(tiny_pair, root / "five.zarr", "--limit", "5", "--max-output-tokens", "60"),
        "one": score(tiny_pair, root / "one.zarr", "--limit", "1", "--max-output-tokens", "30"),
        "urial": score(
            tiny_pair,
            root / "urial.zarr",
            "--limit",
            "5",
            "--max-output-tokens",
            "60",
            "--base-template",
            f"urial:{demo_data_path().parent / 'urial_inst_1k_v4.txt'}",
            "--truncate-context",
        ),
    }


def direct(path: Path, thresholds=Thresholds(), min_support: int = 2) -> dict:
    """The statistics the slow, obvious way: example by example, position by position."""
    s = Store(path, mode="r")
    rows = []
    for i in range(len(s.ids)):
        if not s.example_unit_committed(i):
            continue
        r = s.rows(i)
        n = s.lengths[i]
        for t in range(n):
            rows.append(
                dict(
                    t=t,
                    rel=t / n,
                    rank=int(s.read("base/rank", r)[t]),
                    arank=int(s.read("aligned/rank", r)[t]),
                    p=float(np.exp(np.float64(s.read("base/logprob", r)[t]))),
                    kl=float(s.read("positions/kl", r)[t]),
                    tok=int(s.read("positions/token_id", r)[t]),
                )
            )
    ranks = np.array([x["rank"] for x in rows])
    cat = np.array(
        [
            0 if x <= thresholds.unshifted_max else 1 if x <= thresholds.marginal_max else 2
            for x in ranks
        ]
    )
    return {"rows": rows, "ranks": ranks, "cat": cat}


def test_statistics_match_direct_computation(stores) -> None:
    got = summarize(Store(stores["five"], mode="r"), min_support=2)
    ref = direct(stores["five"])
    n = len(ref["rows"])
    assert got["positions"] == n and got["examples"] == 5
    for c, name in enumerate(("unshifted", "marginal", "shifted")):
        assert got["categories"][name]["count"] == int((ref["cat"] == c).sum())
    bins = [(1, 1), (2, 2), (3, 3), (4, 5), (6, 10), (11, 100), (101, 10**9)]
    assert [b["count"] for b in got["rank_histogram"]] == [
        int(((ref["ranks"] >= lo) & (ref["ranks"] <= hi)).sum()) for lo, hi in bins
    ]
    probs = np.array([x["p"] for x in ref["rows"]])
    kls = np.array([x["kl"] for x in ref["rows"]])
    assert got["base_prob"]["mean"] == pytest.approx(probs.mean(), rel=1e-9)
    assert got["base_prob"]["median"] == pytest.approx(np.median(probs), abs=2e-4)  # bin width 1e-4
    assert got["kl"]["mean"] == pytest.approx(kls.mean(), rel=1e-6)
    assert got["kl"]["median"] == pytest.approx(np.median(kls), rel=0.02)  # 0.5% log bins
    assert got["kl"]["max"] == pytest.approx(kls.max(), rel=1e-6)
    assert got["aligned_top1_fraction"] == pytest.approx(
        np.mean([x["arank"] == 1 for x in ref["rows"]])
    )
    # Curves: absolute buckets and deciles of relative position.
    edges = analysis.POSITION_EDGES + [10**9]
    for b, row in enumerate(got["by_position_bucket"]):
        sel = [x for x, c in zip(ref["rows"], ref["cat"]) if edges[b] <= x["t"] < edges[b + 1]]
        assert row["positions"] == len(sel)
        if sel:
            shifted = [
                c == 2 for x, c in zip(ref["rows"], ref["cat"]) if edges[b] <= x["t"] < edges[b + 1]
            ]
            assert row["shifted_fraction"] == pytest.approx(np.mean(shifted))
            assert row["mean_kl"] == pytest.approx(np.mean([x["kl"] for x in sel]), rel=1e-6)
    for d, row in enumerate(got["by_relative_position"]):
        sel = [x for x in ref["rows"] if min(int(x["rel"] * 10), 9) == d]
        assert row["positions"] == len(sel)
        if sel:
            assert row["mean_base_prob"] == pytest.approx(np.mean([x["p"] for x in sel]))
    # Tokens: counts and shift rates among tokens seen at least twice.
    toks = np.array([x["tok"] for x in ref["rows"]])
    for entry in got["top_shifted_tokens"]:
        mask = toks == entry["token_id"]
        assert entry["count"] == int(mask.sum()) >= 2
        assert entry["shifted"] == int((ref["cat"][mask] == 2).sum())
    rates = [e["shifted"] for e in got["top_shifted_tokens"]]
    assert rates == sorted(rates, reverse=True)


def test_thresholds_are_configurable(stores) -> None:
    th = Thresholds(unshifted_max=2, marginal_max=10)
    got = summarize(Store(stores["five"], mode="r"), th)
    ref = direct(stores["five"], th)
    assert [got["categories"][k]["count"] for k in ("unshifted", "marginal", "shifted")] == [
        int((ref["cat"] == c).sum()) for c in range(3)
    ]
    with pytest.raises(ValueError):
        Thresholds(3, 2)


def test_one_example_store(stores) -> None:
    got = summarize(Store(stores["one"], mode="r"))
    ref = direct(stores["one"])
    assert got["examples"] == 1 and got["positions"] == len(ref["rows"]) == 30
    assert got["categories"]["shifted"]["count"] == int((ref["cat"] == 2).sum())


def test_empty_store_has_zero_counts_and_no_crash(tiny_pair, tmp_path: Path) -> None:
    aligned, base = tiny_pair
    config = ScoreConfig(
        aligned=str(aligned),
        base=str(base),
        data=str(demo_data_path()),
        store=str(tmp_path / "e.zarr"),
        limit=3,
        max_output_tokens=20,
    )
    create_store(prepare(config))  # planned, nothing scored
    got = summarize(Store(config.store, mode="r"))
    assert got["positions"] == 0 and got["examples"] == 0 and got["pending_units"] == 1
    assert got["base_prob"]["median"] is None and got["kl"]["mean"] is None
    text = CliRunner().invoke(main, ["analyze", config.store])
    assert text.exit_code == 0 and "1 units still pending" in text.output


def test_compare_side_by_side_and_refuses_other_data(stores) -> None:
    result = compare([str(stores["five"]), str(stores["urial"])])
    row = {r["statistic"]: r["values"] for r in result["table"]}
    assert row["base template"][0] == "plain" and row["base template"][1].startswith("urial:")
    assert row["positions"][0] == row["positions"][1]
    with pytest.raises(TdsError, match="different data"):
        compare([str(stores["five"]), str(stores["one"])])  # --limit differs: other data
    assert compare([str(stores["five"]), str(stores["one"])], allow_different_data=True)
    cli = CliRunner().invoke(main, ["compare", str(stores["five"]), str(stores["urial"])])
    assert cli.exit_code == 0 and "shifted" in cli.output


def test_open_store_api(stores) -> None:
    st = tdsdist.open_store(stores["five"])
    assert len(st) == 5
    ex = st.example("2")
    s = Store(stores["five"], mode="r")
    np.testing.assert_array_equal(ex["base_rank"], s.read("base/rank", s.rows(2)))
    df = st.dataframe("2")
    assert len(df) == s.lengths[2] and {"token", "base_rank", "aligned_logprob", "category"} <= set(
        df.columns
    )
    assert st.array("base/rank").shape[0] == s.meta["unit_starts"][-1]
    assert st.summary()["positions"] == summarize(s)["positions"]


def test_block_reader_equals_zarr_and_refuses_damaged_chunks(tmp_path: Path) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from synthetic import build

    from tdsdist.analysis.chunks import BlockReader
    from tdsdist.store import DamagedChunk

    fixture = Path(__file__).parent / "fixtures" / "store-0.1.0" / "complete.zarr"
    synthetic = build(
        tmp_path / "s.zarr", [3000, 2500, 4000], commit=[True, False, True], unit_size=1
    )
    for store in (synthetic, Store(fixture, mode="r")):  # format 3 (checksums), format 1
        reader = BlockReader(store)
        total = int(store.meta["unit_starts"][-1])
        for name in store.array_names():
            for rows in (slice(0, total), slice(5, total - 3), slice(4096, 4100)):
                want = store.read(name, rows)
                got = reader.read(name, rows)
                assert got.dtype == want.dtype and np.array_equal(got, want, equal_nan=True), name
            assert reader.layouts[name] is not None  # read by the fast path, not zarr's
    chunk = synthetic.path / "base" / "rank" / "c" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(DamagedChunk, match="base/rank"):
        BlockReader(Store(synthetic.path, mode="r")).read("base/rank", slice(0, 100))
