"""AlignTDS's published top-k metrics against a direct, position-by-position computation written
after `compute_similarity` in Re-Align/AlignTDS `src/compute_dist_diff.py` (plain Python, float64),
on synthetic stores, a scored tiny store and a 0.1.0 (format 1) store; categories by the aligned
top 1 on sampled answers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from synthetic import build
from tdsdist_testkit.cli_args import cli_args

from tdsdist.analysis import published as pub
from tdsdist.analysis.summary import Thresholds, summarize
from tdsdist.cli import main
from tdsdist.errors import TdsError
from tdsdist.store import Store

FIXTURES = Path(__file__).parent / "fixtures" / "store-0.1.0"


def norm_prob(logprobs: list[float]) -> list[float]:
    finite = [x for x in logprobs if x != -math.inf]
    top = max(finite)
    e = [math.exp(x - top) if x != -math.inf else 0.0 for x in logprobs]
    return [x / sum(e) for x in e]


def direct_position(a_ids, a_lp, b_ids, b_lp, k) -> dict[str, float]:
    """One position, the way the original code does it (ids instead of decoded strings)."""
    list1, list2 = [int(i) for i in b_ids if i >= 0], [int(i) for i in a_ids if i >= 0]
    w_b, w_a = norm_prob([float(x) for x in b_lp]), norm_prob([float(x) for x in a_lp])
    set1, set2 = set(list1), set(list2)
    kl = ws = 0.0
    for t in set1 | set2:
        w1 = w_b[list1.index(t)] if t in list1 else 0.0
        w2 = w_a[list2.index(t)] if t in list2 else 0.0
        ws += w1 * w2
        if w1 > 0 and w2 > 0:
            kl += w1 * math.log(w1 / w2)
    relevance = {tok: 1 / math.log2(i + 2) for i, tok in enumerate(list2)}
    dcg = sum(relevance.get(tok, 0.0) / math.log2(i + 2) for i, tok in enumerate(list1))
    ideal = sorted(relevance.values(), reverse=True)
    idcg = sum(ideal[i] / math.log2(i + 2) for i in range(min(len(list1), len(ideal))))
    top = list2[0]
    rank = list1.index(top) if top in list1 else k
    prob = w_b[list1.index(top)] if top in list1 else 0.0
    if top in list1:
        above = sum(1 for x in b_lp if x > b_lp[list1.index(top)])
        base_rank = above + 1
    else:
        base_rank = k + 1
    return {
        "jaccard": len(set1 & set2) / len(set1 | set2),
        "ndcg": dcg / idcg if idcg else 0.0,
        "kl_partial": kl,
        "weighted_sum": ws,
        "top_rank": rank,
        "top_prob": prob,
        "top1_differs": float(list1[0] != list2[0]),
        "aligned_top1_base_rank": base_rank,
    }


def direct(store: Store) -> tuple[dict[str, list[float]], list[int], list[int]]:
    """Every committed position's metrics, with its example index and t."""
    out: dict[str, list[float]] = {name: [] for name in pub.NAMES}
    examples, ts = [], []
    k = store.top_k
    for e in range(len(store.ids)):
        if not store.example_unit_committed(e):
            continue
        r = store.rows(e)
        arrays = [store.read(name, r) for name in pub.ARRAYS]
        pair = store.read("aligned/rank_of_base_top1", r) if store.has_pair else None
        for t in range(int(store.lengths[e])):
            d = direct_position(*(a[t] for a in arrays), k)
            d["base_top1_aligned_rank"] = float(pair[t]) if pair is not None else None
            for name in pub.NAMES:
                out[name].append(d[name])
            examples.append(e)
            ts.append(t)
    return out, examples, ts


def check_summary(store: Store, got: dict) -> None:
    ref, examples, ts = direct(store)
    published = got["published"]
    for name in pub.NAMES:
        values = ref[name]
        if not values or values[0] is None:
            assert published[name]["mean"] is None
            continue
        mean = float(np.mean(values))
        assert published[name]["mean"] == pytest.approx(mean, rel=2e-6, abs=2e-6), name
        low, high = published[name]["ci"]
        assert low - 1e-9 <= published[name]["mean"] <= high + 1e-9
        assert published[name]["definition"]
        for row in published["by_position"][:5]:
            sel = [
                v
                for v, t in zip(values, ts)
                if t == row["t"] or (row.get("tail") and t > row["t"] - 1)
            ]
            if sel:
                assert row[name] == pytest.approx(np.mean(sel), rel=2e-6, abs=2e-6)
    return None


@pytest.mark.parametrize("format_version", [2, 3])  # computed from the top-k tables / as stored
def test_per_position_metrics_equal_the_published_definitions(tmp_path, format_version) -> None:
    store = build(tmp_path / "s.zarr", [7, 3, 12, 5, 9], seed=1, format_version=format_version)
    assert store.has_published == (format_version == 3)
    rows = slice(0, int(store.meta["unit_starts"][-1]))
    got = pub.published_rows(store, rows)
    ref, examples, ts = direct(store)
    offsets = store.offsets
    index = [int(offsets[e]) + t for e, t in zip(examples, ts)]
    for name in pub.NAMES:
        np.testing.assert_allclose(got[name][index], ref[name], rtol=2e-6, atol=2e-6, err_msg=name)
    assert 0 < np.mean(ref["jaccard"]) < 1 and min(ref["kl_partial"]) < 0  # partial: can be < 0


@pytest.mark.parametrize("format_version", [2, 3])
def test_summary_published_means_intervals_and_curves(tmp_path, format_version) -> None:
    store = build(
        tmp_path / "s.zarr",
        [7, 3, 12, 5, 9, 4],
        seed=2,
        commit=[True, False, True],
        format_version=format_version,
    )
    got = summarize(store, max_t=3, resamples=200)
    assert got["examples"] == 4  # the pending unit's two examples are left out
    check_summary(store, got)
    text = CliRunner().invoke(main, ["analyze", str(store.path)])
    assert text.exit_code == 0 and "as published" in text.output and "jaccard" in text.output
    off = CliRunner().invoke(main, ["analyze", str(store.path), "--no-published", "--json"])
    assert off.exit_code == 0 and json.loads(off.output)["published"] is None


def test_one_example_and_empty_stores(tmp_path) -> None:
    one = build(tmp_path / "one.zarr", [6], seed=3, unit_size=1)
    got = summarize(one, resamples=50)
    check_summary(one, got)
    assert got["published"]["jaccard"]["ci"][0] == pytest.approx(
        got["published"]["jaccard"]["mean"]
    )
    empty = build(tmp_path / "empty.zarr", [4, 5], seed=4, commit=[False])
    got = summarize(empty, resamples=50)
    assert got["positions"] == 0
    assert all(got["published"][name]["mean"] is None for name in pub.NAMES)
    assert (
        got["tokens"]["by_id"]["by_count"] == []
        and got["tokens"]["base_favoured"]["fraction"] is None
    )
    assert CliRunner().invoke(main, ["analyze", str(empty.path)]).exit_code == 0


def categories_direct(ranks: list[float], th: Thresholds) -> list[int]:
    return [0 if r <= th.unshifted_max else 1 if r <= th.marginal_max else 2 for r in ranks]


def test_category_by_aligned_top1_on_sampled_answers(tmp_path) -> None:
    store = build(tmp_path / "s.zarr", [10, 8, 12, 6], seed=5, sampled=0.5)
    th = Thresholds()
    by_answer = summarize(store, th, resamples=50)
    by_top1 = summarize(store, th, resamples=50, category_by="aligned-top1")
    ref, _, _ = direct(store)
    # The aligned top 1's base rank, straight from the cross array (an independent route).
    a1_rank = []
    for e in range(len(store.ids)):
        r = store.rows(e)
        lp, at = store.read("base/top_logprobs", r), store.read("base/logprobs_at_aligned_top", r)
        a1_rank += [min(int((lp[t] > at[t, 0]).sum()) + 1, store.top_k + 1) for t in range(len(lp))]
    assert a1_rank == [int(x) for x in ref["aligned_top1_base_rank"]]
    cat_top1 = categories_direct(a1_rank, th)
    answer_rank = np.concatenate([store.read("base/rank", store.rows(e)) for e in range(4)])
    cat_answer = categories_direct(answer_rank.tolist(), th)
    assert cat_top1 != cat_answer  # the sampled answers make them differ
    for c, name in enumerate(("unshifted", "marginal", "shifted")):
        assert by_top1["categories"][name]["count"] == cat_top1.count(c)
        assert by_answer["categories"][name]["count"] == cat_answer.count(c)
    assert by_top1["category_by"] == "aligned-top1" and by_answer["category_by"] == "answer"
    alone = summarize(store, th, resamples=20, category_by="aligned-top1", published=False)
    assert alone["published"] is None
    assert [alone["categories"][n]["count"] for n in ("unshifted", "marginal", "shifted")] == [
        cat_top1.count(c) for c in range(3)
    ]
    result = CliRunner().invoke(main, ["analyze", str(store.path), "--category-by", "aligned-top1"])
    assert result.exit_code == 0 and "aligned model's top 1" in result.output
    with pytest.raises(TdsError, match="marginal_max <= top-k"):
        summarize(store, Thresholds(1, 9), category_by="aligned-top1")


def test_greedy_answers_give_the_same_categories_either_way(tmp_path) -> None:
    store = build(tmp_path / "g.zarr", [10, 8, 5], seed=6, sampled=0.0)
    a = summarize(store, resamples=20)["categories"]
    b = summarize(store, resamples=20, category_by="aligned-top1")["categories"]
    assert {k: v["count"] for k, v in a.items()} == {k: v["count"] for k, v in b.items()}


def test_format_1_store_computes_what_it_can() -> None:
    store = Store(FIXTURES / "complete.zarr", mode="r")
    got = summarize(store, resamples=50)
    check_summary(store, got)
    assert got["published"]["base_top1_aligned_rank"]["mean"] is None
    assert got["published"]["jaccard"]["mean"] is not None


def test_scored_store(tiny_pair, tmp_path) -> None:
    aligned, base = tiny_pair
    path = tmp_path / "scored.zarr"
    args = cli_args(
        "score", aligned, base, store=path, top_k=5, unit_size=2, limit=3, max_output_tokens=25
    )
    assert CliRunner().invoke(main, args).exit_code == 0
    store = Store(path, mode="r")
    assert store.has_published  # stored by `score`, per position: as the definitions give them
    ref, examples, ts = direct(store)
    stored = pub.published_rows(store, slice(0, int(store.meta["unit_starts"][-1])))
    index = [int(store.offsets[e]) + t for e, t in zip(examples, ts)]
    for name in pub.NAMES:
        np.testing.assert_allclose(
            stored[name][index], ref[name], rtol=2e-6, atol=2e-6, err_msg=name
        )
    got = summarize(store, resamples=100)
    check_summary(store, got)
    ranks = np.concatenate([store.read("aligned/rank", store.rows(e)) for e in range(3)])
    assert (ranks != 1).any()  # the demo's answers are not the tiny model's greedy choices
    other = summarize(store, resamples=20, category_by="aligned-top1")
    ref, _, _ = direct(store)
    cat = categories_direct(ref["aligned_top1_base_rank"], Thresholds())
    for c, name in enumerate(("unshifted", "marginal", "shifted")):
        assert other["categories"][name]["count"] == cat.count(c)
