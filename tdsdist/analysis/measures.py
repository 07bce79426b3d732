"""The per-position measures beyond the categories, for `analyze`'s curves and headline numbers.

Follow-up work on alignment reads more than the base rank off each position: each model's
entropy and branching factor (Yang & Holtzman 2025: about 12 in base models, about 1.2 after
alignment, falling along the answer), the base model's confidence in its own top 1 (the quantity
Fei et al.'s nudging thresholds), and the exact divergences between the two next-token
distributions (Qi et al.'s KL by position, Meng et al.'s Jensen-Shannon). Each is a mean over the
positions at t (and over all positions), with the same 95% bootstrap interval over examples as
the category fractions (`curves.py`).

    mean_aligned_entropy, mean_base_entropy   entropy of each model's next-token distribution
                                              (nats; stored by every format)
    aligned_branching, base_branching         exp(mean entropy): the branching factor, the
                                              number of equally likely tokens with that
                                              entropy; its interval is exp of the entropy's
                                              (exp is monotone: the same percentiles)
    mean_base_top1_prob                       the base model's probability of its own top 1
    mean_base_prob                            the base probability of the answer token
    mean_kl_aligned_base, mean_kl_base_aligned, mean_js, mean_tv
                                              the exact divergences (pair head, format >= 2);
                                              format 1 has only `mean_kl`, the top-k + tail
                                              lower bound of KL(aligned || base)
    mean_nudged                               a nudged store only (`tdsdist nudge`): the
                                              fraction of positions whose token the aligned
                                              model chose
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from tdsdist.store import DIVERGENCES, MODELS, Store

#: KLs divide by the other model's probability, which a masked token makes 0: +inf is possible.
MAY_BE_INFINITE = ("kl", "kl_aligned_base", "kl_base_aligned")
ENTROPIES = tuple(f"{m}_entropy" for m in MODELS)  # aligned_entropy, base_entropy


def divergences(store: Store) -> tuple[str, ...]:
    """The divergences a store has per position: the exact four (the pair head); with a
    vocabulary union KL(aligned || base) is +inf at every position (the aligned model's appended
    tokens have base probability 0), so it is left out; format 1: the top-k KL bound."""
    if not store.has_pair:
        return ("kl",)
    if store.meta.get("vocab_union"):
        return tuple(d for d in DIVERGENCES if d != "kl_aligned_base")
    return DIVERGENCES


def curve_means(store: Store) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(every mean statistic of the curves, those that may be +inf)."""
    divs = divergences(store)
    means = ("base_rank", "base_prob", "base_top1_prob", *ENTROPIES, *divs)
    if getattr(store, "nudged", False):
        means += ("nudged",)
    return means, tuple(d for d in divs if d in MAY_BE_INFINITE)


def arrays(store: Store) -> list[str]:
    """The store arrays `block_values` reads (for the reader's prefetch)."""
    names = [f"{m}/entropy" for m in MODELS] + ["base/top_logprobs"]
    names += ["positions/nudged"] if getattr(store, "nudged", False) else []
    return names + [f"positions/{d}" for d in divergences(store)]


def block_values(
    read: Callable[[str, slice], np.ndarray], rows: slice, valid: np.ndarray, store: Store
) -> dict[str, np.ndarray]:
    """`{name: [m] float64}` of the measures read here (the caller adds base rank and prob)."""
    out = {f"{m}_entropy": read(f"{m}/entropy", rows)[valid].astype(np.float64) for m in MODELS}
    top1 = read("base/top_logprobs", rows)[:, 0][valid]  # [m]: the base model's own top 1
    out["base_top1_prob"] = np.exp(top1.astype(np.float64))
    for d in divergences(store):
        out[d] = read(f"positions/{d}", rows)[valid].astype(np.float64)
    if getattr(store, "nudged", False):  # 1 where the aligned model chose the token
        out["nudged"] = read("positions/nudged", rows)[valid].astype(np.float64)
    return out


def add_branching(row: dict[str, Any]) -> dict[str, Any]:
    """`aligned_branching` and `base_branching` next to each `mean_<model>_entropy` of `row`."""
    for model in MODELS:
        entropy = row.get(f"mean_{model}_entropy")
        if entropy is not None:
            row[f"{model}_branching"] = {
                "mean": _exp(entropy["mean"]),
                "ci": [_exp(x) for x in entropy["ci"]],
            }
    return row


def _exp(x: float | None) -> float | None:
    return None if x is None else float(math.exp(x)) if math.isfinite(x) else float(x)


def headline(overall: dict[str, Any]) -> dict[str, Any]:
    """The measures over all positions (`summary["measures"]`), each `{"mean", "ci"}`."""
    out = {}
    for name in ("base_top1_prob", "base_prob", *ENTROPIES, "nudged"):
        if f"mean_{name}" in overall:
            out[name] = overall[f"mean_{name}"]
    add_branching(overall)
    for model in MODELS:
        if f"{model}_branching" in overall:
            out[f"{model}_branching"] = overall[f"{model}_branching"]
    return out


def render_lines(summary: dict[str, Any]) -> list[str]:
    """The headline measures of `analyze`'s text, one line per pair of models."""
    m = summary.get("measures") or {}

    def cell(name: str, digits: str = ".3g") -> str:
        d = m.get(name) or {}
        if d.get("mean") is None:
            return "-"
        lo, hi = d.get("ci") or [None, None]
        span = f" [{lo:{digits}}, {hi:{digits}}]" if lo is not None else ""
        return f"{d['mean']:{digits}}{span}"

    if not m:
        return []
    return [
        "measures (mean over positions, 95% CI over examples):",
        f"  entropy (nats)    aligned {cell('aligned_entropy')}   base {cell('base_entropy')}",
        f"  branching factor  aligned {cell('aligned_branching')}   base {cell('base_branching')}",
        f"  base top-1 probability {cell('base_top1_prob')}",
    ]
