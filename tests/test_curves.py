"""Per-position curves and their bootstrap intervals over examples: against direct computations,
on a scored store with filters, and the intervals' coverage in a seeded simulation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from tdsdist_testkit.cli_args import cli_args

from tdsdist.analysis.curves import PositionCurves
from tdsdist.analysis.summary import Filters, summarize
from tdsdist.cli import main
from tdsdist.metrics import categories
from tdsdist.store import Store


def random_rows(rng, examples: int, max_len: int):
    rows = []
    for e in range(examples):
        n = int(rng.integers(1, max_len))
        rows.append(
            dict(
                example=np.full(n, e),
                t=np.arange(n),
                rank=rng.geometric(0.5, n),
                prob=rng.random(n),
                kl=np.where(rng.random(n) < 0.02, np.inf, rng.exponential(0.3, n)),
            )
        )
    return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}


def test_curves_equal_a_direct_computation() -> None:
    rng = np.random.default_rng(3)
    data = random_rows(rng, examples=40, max_len=30)
    cat = categories(data["rank"])
    curves = PositionCurves(40, max_t=10, means=("base_rank", "base_prob", "kl"))
    half = len(cat) // 2
    for part in (slice(0, half), slice(half, None)):  # fed in two blocks, as summarize streams
        values = {
            "base_rank": data["rank"][part].astype(float),
            "base_prob": data["prob"][part],
            "kl": data["kl"][part],
        }
        curves.add(data["example"][part], data["t"][part], cat[part], data["rank"][part], values)
    got = curves.result(resamples=200, seed=1)
    bins = np.minimum(data["t"], 11)
    for row in got["by_position"]:
        sel = bins == row["t"]
        assert row["positions"] == int(sel.sum())
        assert row.get("tail", False) == (row["t"] == 11)
        for c, name in enumerate(("unshifted", "marginal", "shifted")):
            f = row[name]
            assert f["fraction"] == pytest.approx(np.mean(cat[sel] == c), abs=1e-6)
            assert f["ci"][0] <= f["fraction"] + 1e-6 and f["fraction"] - 1e-6 <= f["ci"][1]
        assert row["mean_base_prob"]["mean"] == pytest.approx(data["prob"][sel].mean(), rel=1e-5)
        assert row["mean_base_rank"]["mean"] == pytest.approx(data["rank"][sel].mean(), rel=1e-5)
        kl = data["kl"][sel]
        want = np.inf if np.isinf(kl).any() else kl.mean()  # a mean over +inf is +inf
        assert row["mean_kl"]["mean"] == pytest.approx(want, rel=1e-5)
        assert row["median_base_rank"] == int(np.sort(data["rank"][sel])[sel.sum() // 2])
    overall = got["overall"]["shifted"]
    assert overall["fraction"] == pytest.approx(np.mean(cat == 2), abs=1e-6)
    again = curves.result(resamples=200, seed=1)
    assert again == got  # seeded


def test_intervals_cover_the_truth_about_95_percent() -> None:
    """Stores of 60 answers whose shifted rates vary by answer (so positions of an answer are
    correlated): the interval over examples covers the population fraction in ~95% of 300."""
    rng = np.random.default_rng(0)
    covered, truth = 0, 0.2
    trials = 300
    for _ in range(trials):
        examples = 60
        rates = rng.beta(2, 8, examples)  # mean 0.2 per answer
        lengths = rng.integers(5, 40, examples)
        example = np.repeat(np.arange(examples), lengths)
        shifted = rng.random(len(example)) < rates[example]
        # The population fraction is length-weighted: E[L r] / E[L] = 0.2 (L and r independent).
        rank = np.where(shifted, 5, 1)
        curves = PositionCurves(examples, max_t=0, means=())
        curves.add(example, np.zeros(len(example), np.int64), categories(rank), rank, {})
        lo, hi = curves.result(resamples=400, seed=int(rng.integers(1 << 30)))["overall"][
            "shifted"
        ]["ci"]
        covered += lo <= truth <= hi
    assert 0.91 <= covered / trials <= 0.985, covered / trials


@pytest.fixture(scope="module")
def scored(tiny_pair, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("curves") / "s.zarr"
    args = cli_args(
        "score", *tiny_pair, store=store, top_k=5, limit=6, unit_size=2, max_output_tokens=20
    )
    assert CliRunner().invoke(main, args).exit_code == 0
    return store


def test_summary_by_position_and_filters_on_a_scored_store(scored) -> None:
    s = Store(scored, mode="r")
    rows = s.valid_rows()
    t = np.concatenate([np.arange(n) for n in s.lengths])
    rank, js = s.read("base/rank")[rows], s.read("positions/js")[rows]
    tokens = s.read("positions/token_id")[rows]
    full = summarize(s, max_t=5, resamples=100)
    assert full["excluded"]["positions"] == 0
    for row in full["by_position"][:6]:
        sel = t == row["t"]
        assert row["shifted"]["fraction"] == pytest.approx(np.mean(rank[sel] > 3))
        assert row["mean_js"]["mean"] == pytest.approx(js[sel].mean(), rel=1e-5)
    assert full["intervals"]["divergences"] == "exact (pair head)"
    assert full["divergence"]["js"]["mean"] == pytest.approx(js.mean(), rel=1e-5)
    lo, hi = full["divergence"]["js"]["ci"]
    assert lo <= js.mean() <= hi
    special = set(s.tokenizer().all_special_ids)
    cut = summarize(
        s, filters=Filters(exclude_first=3, exclude_special_tokens=True), max_t=5, resamples=100
    )
    keep = (t >= 3) & ~np.isin(tokens, list(special))
    assert cut["positions"] == int(keep.sum())
    assert cut["excluded"]["positions"] == int((~keep).sum()) and cut["excluded"]["first"] == 3
    assert cut["by_position"][0]["positions"] == 0  # t = 0 left out
    assert cut["categories"]["shifted"]["fraction"] == pytest.approx(np.mean(rank[keep] > 3))
    result = CliRunner().invoke(main, ["analyze", str(scored), "--exclude-first", "3", "--json"])
    assert result.exit_code == 0, result.output
