"""`compare`: paired differences with joint bootstrap intervals for stores that scored the same
answers, against a direct per-example computation; side by side otherwise."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from synthetic import build

from tdsdist.analysis.compare import compare
from tdsdist.analysis.curves import bootstrap_weights
from tdsdist.cli import main
from tdsdist.store import Store

LENGTHS = [7, 3, 12, 5, 9, 4]


def example_values(store: Store, e: int) -> dict[str, tuple[float, int]]:
    """(sum, positions) of each paired statistic over example e, position by position."""
    r = store.rows(e)
    rank = store.read("base/rank", r)
    out = {
        "unshifted": (float((rank <= 1).sum()), len(rank)),
        "shifted": (float((rank > 3).sum()), len(rank)),
        "mean_js": (float(store.read("positions/js", r).astype(np.float64).sum()), len(rank)),
    }
    a, b = store.read("aligned/top_ids", r), store.read("base/top_ids", r)
    jac = sum(len(set(a[t]) & set(b[t])) / len(set(a[t]) | set(b[t])) for t in range(len(rank)))
    out["published.jaccard"] = (jac, len(rank))
    return out


def test_paired_differences_equal_a_direct_computation(tmp_path) -> None:
    one = build(tmp_path / "one.zarr", LENGTHS, seed=1)
    two = build(tmp_path / "two.zarr", LENGTHS, seed=2, commit=[True, False, True])
    result = compare([str(one.path), str(two.path)], resamples=300, seed=4)
    paired = result["paired"]
    shared = [0, 1, 4, 5]  # unit 1 (examples 2, 3) is pending in the second store
    assert paired["shared_examples"] == len(shared)
    weights = bootstrap_weights(len(shared), 300, 4)
    rows = {r["statistic"]: r for r in paired["rows"]}
    for name in ("unshifted", "shifted", "mean_js", "published.jaccard"):
        per = [[example_values(s, e)[name] for e in shared] for s in (one, two)]
        values = [sum(x for x, _ in p) / sum(n for _, n in p) for p in per]
        diffs = []
        for w in weights:
            stat = [
                sum(wi * x for wi, (x, _) in zip(w, p)) / sum(wi * n for wi, (_, n) in zip(w, p))
                for p in per
            ]
            diffs.append(stat[1] - stat[0])
        low, high = np.percentile(diffs, [2.5, 97.5], method="inverted_cdf")
        row = rows[name]
        assert row["values"] == pytest.approx(values, rel=1e-6)
        assert row["difference"] == pytest.approx(values[1] - values[0], rel=1e-6, abs=1e-9)
        assert row["ci"] == pytest.approx([low, high], rel=1e-5, abs=1e-7)
    cli = CliRunner().invoke(main, ["compare", str(one.path), str(two.path), "--resamples", "50"])
    assert cli.exit_code == 0 and "paired differences over 4 shared examples" in cli.output
    cli = CliRunner().invoke(
        main, ["compare", str(one.path), str(two.path), "--json", "--resamples", "50"]
    )
    assert json.loads(cli.output)["paired"]["rows"]


def test_stores_on_other_answers_are_side_by_side(tmp_path) -> None:
    one = build(tmp_path / "one.zarr", LENGTHS, seed=1)
    other = build(tmp_path / "other.zarr", LENGTHS[:4], seed=3)  # other example ids
    result = compare([str(one.path), str(other.path)], resamples=50)
    assert result["paired"] is None
    rows = {r["statistic"]: r["values"] for r in result["intervals"]}
    for i in range(2):
        summary = result["summaries"][i]
        assert rows["shifted"][i]["value"] == summary["categories"]["shifted"]["fraction"]
        assert rows["published.ndcg"][i]["ci"] == summary["published"]["ndcg"]["ci"]
    cli = CliRunner().invoke(main, ["compare", str(one.path), str(other.path), "--resamples", "50"])
    assert cli.exit_code == 0 and "not paired" in cli.output
