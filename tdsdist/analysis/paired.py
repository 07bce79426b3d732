"""Paired differences between stores that scored the same answers, with bootstrap intervals.

Two stores made from the same data file and answers (one base model under two templates, say)
measure the same positions, so their difference is better estimated per example than from two
independent intervals: each resample draws the shared examples once (one `bootstrap_weights`
draw, the same seed) and both stores' statistics are recomputed from those same examples, so the
interval of the difference reflects only how the stores disagree, not which examples were drawn.

Every statistic here is a ratio of per-example sums pooled over positions (a category fraction,
a mean divergence, a published metric), as in `analyze`: for resample b with weights w_e,

    stat_s(b) = sum_e w_e num_s(e) / sum_e w_e positions_s(e),    diff(b) = stat_i(b) - stat_1(b)

and the 95% interval is the 2.5 and 97.5 percentiles of diff(b).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tdsdist.analysis import published as pub
from tdsdist.analysis.curves import CATEGORY_NAMES, PositionCurves, bootstrap_weights


def per_example_sums(curves: PositionCurves, published: pub.PublishedSums | None) -> dict[str, Any]:
    """`{"positions": [E], "stats": {name: ([E] numerator, [E] count of +inf values)}}` from
    `summarize`'s accumulators (names as in the summary: categories, `mean_<divergence>`,
    `published.<metric>`)."""
    sums = curves.sums.sum(1, dtype=np.float64)  # [E, cols]
    zero = np.zeros(len(sums))
    stats = {name: (sums[:, 1 + c], zero) for c, name in enumerate(CATEGORY_NAMES)}
    for j, name in enumerate(curves.means):
        if name not in ("base_rank", "base_prob"):
            c = curves.inf_column(name)
            stats[f"mean_{name}"] = (sums[:, 4 + j], zero if c is None else sums[:, c])
    if published is not None:
        for j, name in enumerate(pub.NAMES):
            if published.present[name]:
                stats[f"published.{name}"] = (published.per_example[:, 1 + j], zero)
    return {"positions": sums[:, 0], "stats": stats}


def paired_differences(
    sums: list[dict[str, Any]], shared: np.ndarray, resamples: int, seed: int
) -> list[dict[str, Any]]:
    """Each store against the first over the examples where `shared` (`[E]` bool): one row per
    statistic both have, with both values, the difference and its 95% interval."""
    index = np.flatnonzero(shared)
    weights = bootstrap_weights(len(index), resamples, seed).astype(np.float64)  # [B, n]
    first = sums[0]
    rows = []
    for i, other in enumerate(sums[1:], start=1):
        for name in first["stats"]:
            if name not in other["stats"]:
                continue
            values: list[float | None] = []
            boots: list[np.ndarray] = []
            infinite = False
            for s in (first, other):
                num, inf = (v[index] for v in s["stats"][name])
                den = s["positions"][index]
                infinite |= bool(inf.sum() > 0)
                values.append(num.sum() / den.sum() if den.sum() else None)
                with np.errstate(divide="ignore", invalid="ignore"):
                    boots.append((weights @ num) / (weights @ den))
            row: dict[str, Any] = {"statistic": name, "store": i, "values": values}
            if infinite or None in values:  # a mean over +inf, or no positions: no difference
                row.update(difference=None, ci=[None, None])
            else:
                first_value, other_value = values
                assert first_value is not None and other_value is not None  # (None in values)
                diff = boots[1] - boots[0]
                diff = diff[np.isfinite(diff)]
                low, high = (
                    np.percentile(diff, [2.5, 97.5], method="inverted_cdf")
                    if diff.size
                    else (None, None)
                )
                row.update(
                    difference=float(other_value - first_value),
                    ci=[
                        None if low is None else float(low),
                        None if high is None else float(high),
                    ],
                )
            row["values"] = [None if v is None else float(v) for v in values]
            rows.append(row)
    return rows


def side_by_side(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each store's own value and 95% interval per statistic (stores on different answers)."""
    rows = []

    def add(name: str, cells: list[dict[str, Any] | None]) -> None:
        rows.append({"statistic": name, "values": [None if c is None else c for c in cells]})

    for name in CATEGORY_NAMES:
        add(
            name,
            [
                {"value": s["categories"][name]["fraction"], "ci": s["categories"][name]["ci"]}
                for s in summaries
            ],
        )
    names = {n for s in summaries for n in s.get("divergence", {})}
    for name in sorted(names):
        add(f"mean_{name}", [_cell(s.get("divergence", {}).get(name)) for s in summaries])
    for name in pub.NAMES:
        add(f"published.{name}", [_cell((s.get("published") or {}).get(name)) for s in summaries])
    return rows


def _cell(d: dict[str, Any] | None) -> dict[str, Any] | None:
    if not d or d.get("mean") is None:
        return None
    return {"value": d["mean"], "ci": d["ci"]}


def render_lines(result: dict[str, Any]) -> list[str]:
    lines = [""]
    paired = result.get("paired")
    if paired:
        lines.append(
            f"paired differences over {paired['shared_examples']} shared examples"
            f" (store [i] minus [1]; 95% CI, {paired['resamples']} joint resamples):"
        )
        for r in paired["rows"]:
            d, ci = r["difference"], r["ci"]
            text = "-" if d is None else f"{d:+.4g}"
            span = f" [{ci[0]:+.4g}, {ci[1]:+.4g}]" if d is not None and ci[0] is not None else ""
            lines.append(f"  [{r['store'] + 1}] {r['statistic']:<36} {text}{span}")
        return lines
    lines.append(
        "each store's value and 95% CI over its own examples (different answers: not paired):"
    )
    for r in result.get("intervals", []):
        cells = []
        for c in r["values"]:
            if c is None or c["value"] is None:
                cells.append("-")
            elif c["ci"][0] is None:
                cells.append(f"{c['value']:.4g}")
            else:
                cells.append(f"{c['value']:.4g} [{c['ci'][0]:.4g}, {c['ci'][1]:.4g}]")
        lines.append(f"  {r['statistic']:<36} " + "  ".join(cells))
    return lines
