"""AlignTDS's top-k metrics summarised over a store: means with 95% intervals over examples, and
per position (`summarize(published=True)`), read as stored (format 3) or computed from the top-k
tables (`tdsdist/topk_metrics.py` holds the definitions and their formulas)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import numpy as np

from tdsdist.analysis.curves import _ratio
from tdsdist.errors import TdsError
from tdsdist.store import PUBLISHED_ARRAYS, Store
from tdsdist.topk_metrics import (  # noqa: F401  (re-exported: the definitions)
    ARRAYS,
    METRICS,
    PAIR_ARRAY,
    published_block,
    renormalised,
    stored_arrays,
)
from tdsdist.topk_metrics import NAMES as NAMES  # re-exported (show, export, groups, paired)

#: Which token's base rank defines a position's category: the answer token (tdsdist's), or the
#: aligned model's top 1 (AlignTDS's definition); the same for greedy answers.
CATEGORY_BY = ("answer", "aligned-top1")


def check_category_by(store: Store, category_by: str, marginal_max: int) -> None:
    """One clear error for a rule that does not exist or cannot be applied to this store."""
    if category_by not in CATEGORY_BY:
        raise TdsError(f"category_by must be one of {', '.join(CATEGORY_BY)}, not {category_by!r}")
    if category_by == "aligned-top1" and marginal_max > store.top_k:
        raise TdsError(
            f"{store.path}: categories by the aligned top 1 need marginal_max <= top-k"
            f" ({store.top_k}): its base rank is known only within the base top-k"
        )


def inputs(store: Store) -> list[str]:
    """The arrays `read_block` reads from `store` (to prefetch them)."""
    pair = [PAIR_ARRAY] if store.has_pair else []
    if store.has_published:
        return [f"published/{c.name}" for c in PUBLISHED_ARRAYS] + pair
    return list(ARRAYS) + pair


#: `read(name, rows)`: `Store.read` or a `BlockReader`'s.
Read = Callable[[str, slice], np.ndarray]
#: Each metric's values over some rows (None: the store lacks its inputs).
Metrics = dict[str, np.ndarray | None]


def read_block(read: Read, rows: slice, store: Store, valid: np.ndarray | None = None) -> Metrics:
    """The metrics of the rows in `rows` (`read(name, rows)`: `Store.read` or a `BlockReader`),
    committed or not, or of those where `valid` (`[rows]` bool): for `analyze`, and for `export`
    and `show`, which select their own rows. Read as stored in format 3; computed from the top-k
    tables in older stores (on every row, then selected: cheaper than selecting the `[rows, k]`
    inputs)."""
    pair = read(PAIR_ARRAY, rows).astype(np.float64) if store.has_pair else None
    if store.has_published:
        out: dict[str, np.ndarray | None] = {
            c.name: read(f"published/{c.name}", rows).astype(np.float64) for c in PUBLISHED_ARRAYS
        }
        out["base_top1_aligned_rank"] = pair
    else:
        aligned_ids, aligned_lp, base_ids, base_lp = (read(name, rows) for name in ARRAYS)
        out = published_block(aligned_ids, aligned_lp, base_ids, base_lp, pair)
    if valid is None:
        return out
    return {name: None if v is None else v[valid] for name, v in out.items()}


def published_rows(store: Store, rows: slice) -> Metrics:
    """`read_block` on a store: `{metric: [rows] float64 or None}`."""
    return read_block(store.read, rows, store)


class PublishedSums:
    """Per-example sums of every metric (for the means and their intervals over examples) and
    per-position-bin sums (pooled means at t = 0 .. max_t, then a tail bin)."""

    def __init__(self, examples: int, max_t: int) -> None:
        self.max_t = max_t
        cols = 1 + len(NAMES)  # positions, then one sum per metric
        self.per_example = np.zeros((examples, cols), np.float64)
        self.per_bin = np.zeros((max_t + 2, cols), np.float64)
        self.present = dict.fromkeys(NAMES, False)

    def add(self, example: np.ndarray, t: np.ndarray, values: dict[str, np.ndarray | None]) -> None:
        n = len(self.per_bin)
        bins = np.minimum(t, self.max_t + 1)
        # Only the examples these rows touch (a block spans a few thousand of the store's E):
        # the same sums, in the same order, as counting over all E.
        first = int(example.min()) if example.size else 0
        local, rows = example - first, self.per_example[first:]
        e = int(local.max()) + 1 if example.size else 0
        rows[:e, 0] += np.bincount(local, minlength=e)
        self.per_bin[:, 0] += np.bincount(bins, minlength=n)
        for j, name in enumerate(NAMES):
            v = values.get(name)
            if v is None:
                continue
            self.present[name] = True
            rows[:e, 1 + j] += np.bincount(local, weights=v, minlength=e)
            self.per_bin[:, 1 + j] += np.bincount(bins, weights=v, minlength=n)

    def add_result(
        self, metrics: Metrics | Future[Metrics], example: np.ndarray, t: np.ndarray
    ) -> None:
        """`add` of a `read_block` result or of its future."""
        self.add(example, t, metrics.result() if isinstance(metrics, Future) else metrics)

    def result(self, weights: np.ndarray, by_position: bool = True) -> dict[str, Any]:
        """`{metric: {mean, ci, definition}}` plus `by_position` pooled means (null where the
        store lacks the metric's arrays)."""
        boot = weights.astype(np.float64) @ self.per_example  # [B, cols]
        total = self.per_example.sum(0)
        out: dict[str, Any] = {}
        for j, name in enumerate(NAMES):
            if self.present[name]:
                r = _ratio(total[1 + j], total[0], boot[:, 1 + j], boot[:, 0], "mean")
            else:
                r = {"mean": None, "ci": [None, None]}
            out[name] = {**r, "definition": METRICS[name]}
        if by_position:
            rows = []
            for b, row in enumerate(self.per_bin):
                n = int(row[0])
                cell: dict[str, Any] = {"t": b, "positions": n}
                if b > self.max_t:
                    cell["tail"] = True  # every t > max_t
                for j, name in enumerate(NAMES):
                    ok = n and self.present[name]
                    cell[name] = float(row[1 + j] / n) if ok else None
                rows.append(cell)
            out["by_position"] = rows
        return out


def render_lines(published: dict[str, Any] | None) -> list[str]:
    """The text output's block: every metric labelled as published or as tdsdist's."""
    if not published:
        return []
    lines = ["AlignTDS top-k metrics (as published, Lin et al. 2024; mean, 95% CI over examples):"]
    for name in NAMES:
        m = published.get(name)
        if not m or m["mean"] is None:
            continue
        ci = m["ci"]
        span = f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci[0] is not None else ""
        label = "as published" if m["definition"].startswith("as published") else "tdsdist"
        lines.append(f"  {name:<24} {m['mean']:.4g}{span}  ({label})")
    return lines
