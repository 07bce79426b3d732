"""Token tables against direct counts: by id, merged by text (`a` and ` a` together), ranked by
count and by shift rate with a minimum support, and the base-favoured positions."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from synthetic import build

from tdsdist.analysis.summary import Thresholds, summarize
from tdsdist.analysis.token_text import TokenText
from tdsdist.analysis.tokens import text_key

#: Ids of the tiny tokenizer (300 entries) decoding to `a`/` a`, `b`/` b`, `c`/` c`, and others.
PAIRS = [70, 266, 71, 287, 72, 269]
OTHERS = [75, 78, 82, 83, 46, 22]


def direct_counts(store) -> dict[int, dict[str, int]]:
    th = Thresholds()
    counts: dict[int, dict[str, int]] = defaultdict(
        lambda: dict(count=0, shifted=0, unshifted=0, base_favoured=0)
    )
    for e in range(len(store.ids)):
        if not store.example_unit_committed(e):
            continue
        r = store.rows(e)
        tok, rank = store.read("positions/token_id", r), store.read("base/rank", r)
        blp, alp = store.read("base/logprob", r), store.read("aligned/logprob", r)
        for t in range(len(tok)):
            c = counts[int(tok[t])]
            c["count"] += 1
            c["shifted"] += int(rank[t] > th.marginal_max)
            c["unshifted"] += int(rank[t] <= th.unshifted_max)
            c["base_favoured"] += int(blp[t] > alp[t])
    return dict(counts)


def test_tables_by_id_and_by_text_equal_direct_counts(tmp_path) -> None:
    store = build(
        tmp_path / "t.zarr",
        [30, 25, 40, 20, 35],
        seed=7,
        candidates=PAIRS + OTHERS,
        commit=[True, True, False],
    )
    got = summarize(store, min_support=8, token_rows=50, resamples=20)["tokens"]
    ref = direct_counts(store)
    by_count = got["by_id"]["by_count"]
    assert {r["token_id"] for r in by_count} == set(ref)
    for r in by_count:
        for key in ("count", "shifted", "unshifted", "base_favoured"):
            assert r[key] == ref[r["token_id"]][key]
    assert [r["count"] for r in by_count] == sorted(
        (c["count"] for c in ref.values()), reverse=True
    )
    rate = got["by_id"]["by_shift_rate"]
    assert all(r["count"] >= 8 for r in rate)
    want = sorted(
        ((c["shifted"] / c["count"]) for c in ref.values() if c["count"] >= 8), reverse=True
    )
    assert [r["shifted_rate"] for r in rate] == want
    # Merged by text: direct grouping of the decoded ids.
    texts = TokenText(store.tokenizer()).table(np.array(sorted(ref)))
    merged: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for i, c in ref.items():
        for key, v in c.items():
            merged[text_key(texts[str(i)])][key] += v
    rows = {r["text"]: r for r in got["by_text"]["by_count"]}
    assert set(rows) == set(merged)
    for text, c in merged.items():
        assert {key: rows[text][key] for key in c} == dict(c)
    assert sorted(rows["a"]["token_ids"]) == [70, 266]  # `a` and ` a` together
    # Base-favoured positions.
    fav = got["base_favoured"]
    total = sum(c["base_favoured"] for c in ref.values())
    assert fav["positions"] == total and fav["fraction"] == total / sum(
        c["count"] for c in ref.values()
    )
    assert [r["base_favoured"] for r in fav["by_id"]] == sorted(
        (c["base_favoured"] for c in ref.values() if c["base_favoured"]), reverse=True
    )


def test_rows_limit_and_old_keys_kept(tmp_path) -> None:
    store = build(tmp_path / "t.zarr", [30, 25], seed=8, candidates=PAIRS + OTHERS)
    got = summarize(store, min_support=1, token_rows=3, resamples=20)
    assert (
        len(got["tokens"]["by_id"]["by_count"]) == 3
        and len(got["tokens"]["by_text"]["by_shift_rate"]) == 3
    )
    assert "top_shifted_tokens" in got and "top_unshifted_tokens" in got
    ref = direct_counts(store)
    for entry in got["top_shifted_tokens"]:
        assert entry["shifted"] == ref[entry["token_id"]]["shifted"]
