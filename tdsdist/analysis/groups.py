"""Every statistic of `analyze` per group of examples (`--group-by FIELD`), with intervals, and the
differences between groups.

The groups are the values of one field the store kept from the input (`store/fields.py`): harmful
against benign prompts (Qi et al. 2025), a benchmark's categories. `summarize` accumulates sums
per example (`curves.PositionCurves`, `published.PublishedSums`), so a group's statistic is the
same pooled ratio over its own examples, and its 95% interval resamples its own examples
(`bootstrap_weights` over the group, seeded by the group's rank). A group with fewer than
`MIN_EXAMPLES` examples gets its values and no interval: the field `interval` says why (a
percentile bootstrap over 4 examples has 35 distinct resamples: its "interval" would be noise).

Groups hold different examples, so their difference is not paired: each group is resampled on
its own and the difference of two groups is taken resample by resample (a two-sample bootstrap),
against the first group (in sorted order) that is large enough; the values of `compare` between
stores that scored the same answers stay paired within each group (`compare.py`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np

from tdsdist.analysis import measures
from tdsdist.analysis import published as pub
from tdsdist.analysis.curves import CATEGORY_NAMES, PositionCurves, bootstrap_weights
from tdsdist.store import MODELS, Store
from tdsdist.store.fields import read_field

MIN_EXAMPLES = 5  # examples a group needs for an interval (and for a difference's interval)
MISSING = "(missing)"


def label_of(value: Any) -> str:
    """A group's name: a string as it is, any other value as JSON, a missing one `(missing)`."""
    if value is None:
        return MISSING
    return value if isinstance(value, str) else json.dumps(value)


def group_indices(store: Store, field: str, committed: np.ndarray) -> dict[str, np.ndarray]:
    """`{label: [n] example indices}` of the committed examples, labels sorted."""
    values = read_field(store, field)
    labels = np.array([label_of(v) for v in values], dtype=object)
    out = {}
    for label in sorted(set(labels[committed].tolist())):
        out[label] = np.flatnonzero((labels == label) & committed)
    return out


def per_example(curves: PositionCurves, published: pub.PublishedSums | None) -> dict[str, Any]:
    """`{"positions": [E], "stats": {name: ([E] sum, [E] +inf count or None)}}`: the sums behind
    every headline ratio (categories, every mean, the published metrics)."""
    sums = curves.sums.sum(1, dtype=np.float64)  # [E, cols]
    stats: dict[str, tuple[np.ndarray, np.ndarray | None]] = {
        name: (sums[:, 1 + c], None) for c, name in enumerate(CATEGORY_NAMES)
    }
    for j, name in enumerate(curves.means):
        c = curves.inf_column(name)
        stats[f"mean_{name}"] = (sums[:, 4 + j], None if c is None else sums[:, c])
    if published is not None:
        for j, name in enumerate(pub.NAMES):
            if published.present[name]:
                stats[f"published.{name}"] = (published.per_example[:, 1 + j], None)
    return {"positions": sums[:, 0], "stats": stats}


#: (value, [B] resampled values, +inf anywhere) of one statistic.
Boot = tuple[float | None, np.ndarray, bool]


def _boot(sums: dict[str, Any], index: np.ndarray, weights: np.ndarray) -> dict[str, Boot]:
    """Per statistic over the examples `index`: (value, [B] resampled values, +inf anywhere)."""
    den = sums["positions"][index]
    boot_den = weights @ den  # [B]
    out = {}
    for name, (num, inf) in sums["stats"].items():
        infinite = inf is not None and bool(inf[index].sum() > 0)
        value = float(num[index].sum() / den.sum()) if den.sum() else None
        with np.errstate(divide="ignore", invalid="ignore"):
            boot = (weights @ num[index]) / boot_den
        out[name] = (np.inf if infinite else value, boot, infinite)
    return out


def _cell(value: float | None, boot: np.ndarray, key: str) -> dict[str, Any]:
    """`{key: value, "ci": [low, high]}`: the 2.5 and 97.5 percentiles of the finite resamples
    (none: no interval); a mean over a +inf value is +inf, without an interval."""
    finite = boot[np.isfinite(boot)]
    if value is None or not np.isfinite(value) or not finite.size:
        return {key: value, "ci": [None, None]}
    low, high = np.percentile(finite, [2.5, 97.5], method="inverted_cdf")
    return {key: float(value), "ci": [float(low), float(high)]}


def by_group(
    store: Store,
    field: str,
    acc: dict[str, Any],
    committed: np.ndarray,
    resamples: int,
    seed: int,
) -> dict[str, Any]:
    """`summary["groups"]`: each group's statistics and curves, and the differences."""
    curves, published = acc["curves"], acc.get("published")
    sums = per_example(curves, published)
    groups, boots = [], {}
    for rank, (label, index) in enumerate(group_indices(store, field, committed).items()):
        enough = len(index) >= MIN_EXAMPLES
        weights = bootstrap_weights(len(index), resamples if enough else 0, seed + rank)
        stats = _boot(sums, index, weights.astype(np.float64))
        for model in MODELS:  # exp(mean entropy), resample by resample: differences too
            if f"mean_{model}_entropy" in stats:
                value, boot, infinite = stats[f"mean_{model}_entropy"]
                branching = None if value is None else float(np.exp(value))
                stats[f"{model}_branching"] = (branching, np.exp(boot), infinite)
        boots[label] = (stats, enough)
        sub = curves.subset(index).result(resamples if enough else 0, seed + rank, weights)
        rows = [measures.add_branching(r) for r in sub["by_position"]]
        statistics = {
            name: _cell(value, boot, "fraction" if name in CATEGORY_NAMES else "mean")
            for name, (value, boot, _) in stats.items()
        }
        groups.append(
            {
                "group": label,
                "examples": int(len(index)),
                "positions": int(sums["positions"][index].sum()),
                "interval": None
                if enough
                else f"too few examples for an interval ({len(index)} < {MIN_EXAMPLES})",
                "statistics": statistics,
                "by_position": rows,
            }
        )
    return {
        "field": field,
        "min_examples_for_interval": MIN_EXAMPLES,
        "method": "per group: 95% percentile bootstrap over the group's examples; differences:"
        " group minus the reference group, each resampled on its own (two-sample bootstrap)",
        "groups": groups,
        "differences": _differences(boots),
    }


def _differences(boots: dict[str, tuple[dict[str, Boot], bool]]) -> list[dict[str, Any]]:
    """Each group minus the first group large enough for an interval (the reference)."""
    reference = next((g for g, (_, enough) in boots.items() if enough), None)
    if reference is None:
        return []
    ref, _ = boots[reference]
    rows = []
    for label, (stats, enough) in boots.items():
        if label == reference:
            continue
        for name, (value, boot, infinite) in stats.items():
            r_value, r_boot, r_inf = ref[name]
            row: dict[str, Any] = {"group": label, "reference": reference, "statistic": name}
            if value is None or r_value is None or infinite or r_inf:
                row.update(difference=None, ci=[None, None])
            elif not enough:
                row.update(difference=float(value - r_value), ci=[None, None])
                row["interval"] = f"too few examples for an interval (< {MIN_EXAMPLES})"
            else:
                diff = boot - r_boot
                diff = diff[np.isfinite(diff)]
                ci = (
                    np.percentile(diff, [2.5, 97.5], method="inverted_cdf")
                    if diff.size
                    else (None, None)
                )
                row.update(
                    difference=float(value - r_value),
                    ci=[None if c is None else float(c) for c in ci],
                )
            rows.append(row)
    return rows


def group_summaries(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One summary-like dict per group (`group`: its name) with what the figures draw per group:
    the categories and the curves (no rank histogram or token tables: not kept per group)."""
    keep = ("store", "config", "thresholds", "excluded", "intervals")
    out = []
    for g in summary["groups"]["groups"]:
        s = g["statistics"]
        out.append(
            {
                **{k: summary.get(k) for k in keep},
                "group": g["group"],
                "examples": g["examples"],
                "positions": g["positions"],
                "categories": {c: s[c] for c in CATEGORY_NAMES},
                "by_position": g["by_position"],
            }
        )
    return out


HEADLINE = (
    "shifted",
    "mean_kl_aligned_base",
    "mean_js",
    "mean_kl",
    "aligned_branching",
    "base_branching",
)


def render_lines(groups: dict[str, Any] | None) -> list[str]:
    """`analyze`'s text: one line per group, then the headline differences."""
    if not groups:
        return []

    def cell(d: dict[str, Any] | None, pct: bool = False) -> str:
        if not d:
            return "-"
        v = d.get("fraction", d.get("mean"))
        if v is None:
            return "-"
        lo, hi = d.get("ci") or [None, None]
        f: Callable[[float], str] = (lambda x: f"{100 * x:.1f}%") if pct else (lambda x: f"{x:.4g}")
        return f(v) + (f" [{f(lo)}, {f(hi)}]" if lo is not None else "")

    lines = [f"by {groups['field']} (95% CI over each group's examples):"]
    for g in groups["groups"]:
        s = g["statistics"]
        parts = [f"{name} {cell(s.get(name), name == 'shifted')}" for name in HEADLINE if name in s]
        lines.append(f"  {g['group']!s:<16} {g['examples']:>5} examples  " + ", ".join(parts))
        if g["interval"]:
            lines.append(f"  {'':<16} {g['interval']}")
    diffs = [d for d in groups["differences"] if d["statistic"] in HEADLINE]
    if diffs:
        lines.append("differences (group minus reference, 95% CI, two-sample bootstrap):")
        for d in diffs:
            text = "-" if d["difference"] is None else f"{d['difference']:+.4g}"
            if d["ci"][0] is not None:
                text += f" [{d['ci'][0]:+.4g}, {d['ci'][1]:+.4g}]"
            elif d.get("interval"):
                text += f" ({d['interval']})"
            lines.append(f"  {d['group']} - {d['reference']}: {d['statistic']:<22} {text}")
    return lines
