"""`tdsdist compare`: the statistics of several stores side by side.

Typical uses: one base model against several aligned models, or the `plain` template against
`urial:` prefixes. Stores scored on different data answer different questions, so they are
refused unless the user asks (`--allow-different-data`). Stores that scored the same answers
(same data file, cut and example ids) get paired differences against the first store, with
intervals from joint resamples of the shared examples (`paired.py`); others get each store's
own intervals side by side.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tdsdist.analysis import paired
from tdsdist.analysis.groups import MIN_EXAMPLES, group_indices
from tdsdist.analysis.groups import render_lines as group_lines
from tdsdist.analysis.summary import summarize
from tdsdist.errors import TdsError
from tdsdist.store import Store

ROWS: list[tuple[str, Any]] = [
    ("aligned", lambda s: s["config"]["aligned"]),
    ("base", lambda s: s["config"]["base"]),
    ("aligned template", lambda s: s["config"]["aligned_template"]),
    ("base template", lambda s: s["config"]["base_template"]),
    ("examples", lambda s: s["examples"]),
    ("positions", lambda s: s["positions"]),
    ("unshifted", lambda s: s["categories"]["unshifted"]["fraction"]),
    ("marginal", lambda s: s["categories"]["marginal"]["fraction"]),
    ("shifted", lambda s: s["categories"]["shifted"]["fraction"]),
    ("shifted, 95% CI low", lambda s: s["categories"]["shifted"]["ci"][0]),
    ("shifted, 95% CI high", lambda s: s["categories"]["shifted"]["ci"][1]),
    ("shifted at t=0", lambda s: s["by_position"][0]["shifted"]["fraction"]),
    ("aligned top-1", lambda s: s["aligned_top1_fraction"]),
    ("base prob mean", lambda s: s["base_prob"]["mean"]),
    ("base prob median", lambda s: s["base_prob"]["median"]),
    *[
        (
            f"{label} exact mean",
            lambda s, n=name: (s.get("divergence", {}).get(n) or {}).get("mean"),
        )
        for name, label in (
            ("kl_aligned_base", "KL(a||b)"),
            ("kl_base_aligned", "KL(b||a)"),
            ("js", "JS"),
            ("tv", "TV"),
        )
    ],
    ("KL mean, top-k bound", lambda s: s["kl"]["mean"]),
    ("KL median, top-k bound", lambda s: s["kl"]["median"]),
    *[
        (label, lambda s, n=name: (s.get("measures", {}).get(n) or {}).get("mean"))
        for name, label in (
            ("aligned_branching", "branching factor, aligned"),
            ("base_branching", "branching factor, base"),
            ("base_top1_prob", "base top-1 prob mean"),
        )
    ],
    ("shifted, first 10%", lambda s: s["by_relative_position"][0]["shifted_fraction"]),
    ("shifted, last 10%", lambda s: s["by_relative_position"][-1]["shifted_fraction"]),
]
FRACTIONS = {
    "unshifted",
    "marginal",
    "shifted",
    "aligned top-1",
    "shifted, first 10%",
    "shifted, 95% CI low",
    "shifted, 95% CI high",
    "shifted at t=0",
    "shifted, last 10%",
}


def compare(paths: list[str], allow_different_data: bool = False, **summary: Any) -> dict[str, Any]:
    """`summary`: what `summarize` takes besides the store (filters, intervals)."""
    stores = [Store(p, mode="r") for p in paths]
    data = {p: _data_identity(s) for p, s in zip(paths, stores)}
    if len(set(data.values())) > 1 and not allow_different_data:
        first = paths[0]
        other = next(p for p in paths if data[p] != data[first])
        what = "; ".join(
            f"{k} {a!r} vs {b!r}" for k, a, b in zip(DATA_KEYS, data[other], data[first]) if a != b
        )
        raise TdsError(
            f"{other} was scored on different data than {first} ({what});"
            " use --allow-different-data to compare anyway"
        )
    sums: list[dict[str, Any]] = [{} for _ in stores]
    summaries = [summarize(s, per_example=d, **summary) for s, d in zip(stores, sums)]
    table = [{"statistic": name, "values": [get(s) for s in summaries]} for name, get in ROWS]
    result: dict[str, Any] = {"stores": paths, "table": table, "summaries": summaries}
    if same_answers(stores):
        shared = np.logical_and.reduce([s.committed_examples() for s in stores])
        resamples, seed = summary.get("resamples", 1000), summary.get("seed", 0)
        result["paired"] = {
            "reference": paths[0],
            "shared_examples": int(shared.sum()),
            "resamples": resamples,
            "seed": seed,
            "method": "differences store [i] - [1]; 95% percentile bootstrap, the shared examples resampled jointly (the same draws for every store)",
            "rows": paired.paired_differences(sums, shared, resamples, seed),
        }
        if summary.get("group_by"):
            result["paired_by_group"] = _paired_by_group(
                stores[0], summary["group_by"], sums, shared, resamples, seed
            )
    else:
        result["paired"] = None
        result["intervals"] = paired.side_by_side(summaries)
    return result


def _paired_by_group(
    store: Store,
    field: str,
    sums: list[dict[str, Any]],
    shared: np.ndarray,
    resamples: int,
    seed: int,
) -> list[dict[str, Any]]:
    """The paired differences within each group of the shared examples (the same answers in
    every store, so the same groups); a group too small for an interval says so."""
    out = []
    for label, index in group_indices(store, field, shared).items():
        mask = np.zeros(len(shared), bool)
        mask[index] = True
        rows = paired.paired_differences(sums, mask, resamples, seed)
        small = len(index) < MIN_EXAMPLES
        if small:
            for r in rows:
                r["ci"] = [None, None]
        out.append(
            {
                "group": label,
                "shared_examples": int(len(index)),
                "interval": f"too few examples for an interval ({len(index)} < {MIN_EXAMPLES})"
                if small
                else None,
                "rows": rows,
            }
        )
    return out


def same_answers(stores: list[Store]) -> bool:
    """The same data, cut and example ids: every example's answer is the same in every store."""
    first = stores[0]
    return all(
        _data_identity(s) == _data_identity(first) and s.ids == first.ids for s in stores[1:]
    )


DATA_KEYS = ("data_sha256", "limit", "max_output_tokens")


def _data_identity(store: Store) -> tuple[Any, ...]:
    """Same file, same examples, same answer cut: the same positions to compare."""
    fingerprint = store.meta["fingerprint"]
    return tuple(fingerprint.get(k) for k in DATA_KEYS)


def render_text(result: dict[str, Any]) -> str:
    headers = ["statistic"] + [f"[{i + 1}]" for i in range(len(result["stores"]))]
    lines = [f"[{i + 1}] {p}" for i, p in enumerate(result["stores"])] + [""]
    cells = [headers] + [
        [row["statistic"]] + [_fmt(row["statistic"], v) for v in row["values"]]
        for row in result["table"]
    ]
    widths = [max(len(r[c]) for r in cells) for c in range(len(headers))]
    for r in cells:
        lines.append(
            "  ".join(
                v.ljust(w) if c == 0 else v.rjust(w) for c, (v, w) in enumerate(zip(r, widths))
            )
        )
    if len(result["stores"]) > 1 and ("paired" in result or "intervals" in result):
        lines += paired.render_lines(result)
    for i, s in enumerate(result["summaries"]):
        if s.get("groups"):
            lines += ["", f"[{i + 1}]"] + group_lines(s["groups"])
    for g in result.get("paired_by_group") or []:
        lines.append(
            f"\npaired differences in group {g['group']} ({g['shared_examples']} shared examples{'; ' + g['interval'] if g['interval'] else ''}):"
        )
        for r in g["rows"]:
            if r["statistic"] not in ("shifted", "mean_js", "mean_kl_aligned_base", "mean_kl"):
                continue
            d, ci = r["difference"], r["ci"]
            text = "-" if d is None else f"{d:+.4g}"
            span = f" [{ci[0]:+.4g}, {ci[1]:+.4g}]" if d is not None and ci[0] is not None else ""
            lines.append(f"  [{r['store'] + 1}] {r['statistic']:<36} {text}{span}")
    return "\n".join(lines)


def _fmt(name: str, value: Any) -> str:
    if value is None:
        return "-"
    if name in FRACTIONS:
        return f"{100 * value:.2f}%"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
