"""Per-position curves at token resolution, with 95% bootstrap intervals over examples.

"TDS diminishes over time" (Lin et al.) and "alignment is a few tokens deep" (Qi et al.) are
statements about position t in the answer. For t = 0 .. T (then one tail bin for t > T) this
gives the fractions of each category, the mean and median base rank, the mean base probability
and the mean divergences, each statistic pooled over the positions at t of all examples.

Positions of one answer are not independent, so the intervals resample **examples** (a cluster
bootstrap, seeded): each resample draws E examples with replacement and recomputes every ratio
from the drawn examples' partial sums. The sums are accumulated once per (example, bin), so the
cost of the intervals grows with examples x resamples x bins, never with positions: the resamples
are one matrix product of the resample counts `[B, E]` with the partial sums `[E, bins x stats]`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Ranks up to this are counted exactly per bin for the median; above, one bin (`> RANK_CAP`).
RANK_CAP = 100
CATEGORY_NAMES = ("unshifted", "marginal", "shifted")


class PositionCurves:
    """Partial sums per (example, position bin) of the statistics named in `means`."""

    def __init__(
        self,
        examples: int,
        max_t: int,
        means: tuple[str, ...],
        infinite: tuple[str, ...] | None = None,
        medians: bool = True,
    ) -> None:
        self.examples, self.bins = examples, max_t + 2  # t = 0 .. max_t, then the tail
        self.max_t, self.means = max_t, means
        # `infinite`: the statistics that may be +inf (a KL that divides by a masked token's
        # zero; all of `means` by default); only they get a column counting their +inf values.
        self.infinite = tuple(means if infinite is None else infinite)
        # columns: positions, 3 categories, one sum per mean statistic (finite values), one count
        # of infinite values per `infinite` statistic. float32: counts are exact (a cell holds
        # one answer's positions) and E x bins x cols is the memory.
        cols = 4 + len(means) + len(self.infinite)
        self.sums = np.zeros((examples, self.bins, cols), np.float32)
        # the base-rank histogram per bin behind the medians (`medians=False`: none, no cost)
        self.rank_hist = np.zeros((self.bins, RANK_CAP + 1), np.int64) if medians else None

    def inf_column(self, name: str) -> int | None:
        """The column counting `name`'s +inf values, or None (never infinite)."""
        if name not in self.infinite:
            return None
        return 4 + len(self.means) + self.infinite.index(name)

    def subset(self, index: np.ndarray) -> PositionCurves:
        """The same sums over the examples `index` only (a group of them), without medians:
        the rank histogram behind them is not kept per example."""
        out = PositionCurves(0, self.max_t, self.means, self.infinite, medians=False)
        out.sums, out.examples = self.sums[index], len(index)
        return out

    def add(
        self,
        example: np.ndarray,  # [m] example index of each position
        t: np.ndarray,  # [m] position in its answer
        category: np.ndarray,  # [m] 0/1/2
        base_rank: np.ndarray,  # [m]
        values: dict[str, np.ndarray],  # name -> [m] float64, one per `means`
    ) -> None:
        bins = np.minimum(t, self.max_t + 1)
        # Only the examples this block touches: a block of rows spans a few thousand answers,
        # so the counts cover those cells, not all E x bins of the store.
        first, last = int(example.min()), int(example.max())
        cell = (example - first) * self.bins + bins  # [m] flat (example, bin), local
        size = (last - first + 1) * self.bins
        flat = self.sums[first : last + 1].reshape(size, -1)
        flat[:, 0] += np.bincount(cell, minlength=size)
        by_category = np.bincount(cell * 3 + category, minlength=3 * size).reshape(size, 3)
        flat[:, 1:4] += by_category
        for j, name in enumerate(self.means):
            v = values[name]
            finite = np.isfinite(v)
            all_finite = bool(finite.all())
            weights = v if all_finite else np.where(finite, v, 0.0)
            flat[:, 4 + j] += np.bincount(cell, weights=weights, minlength=size)
            inf = self.inf_column(name)
            if not all_finite and inf is not None:
                flat[:, inf] += np.bincount(cell, weights=~finite, minlength=size)
        if self.rank_hist is None:
            return
        capped = np.minimum(base_rank, RANK_CAP + 1) - 1  # 0 .. RANK_CAP
        self.rank_hist += np.bincount(
            bins * (RANK_CAP + 1) + capped, minlength=self.bins * (RANK_CAP + 1)
        ).reshape(self.bins, RANK_CAP + 1)

    def result(
        self, resamples: int = 1000, seed: int = 0, weights: np.ndarray | None = None
    ) -> dict[str, Any]:
        """`by_position` rows and the headline fractions' intervals (`overall`); `weights`: the
        resamples' `bootstrap_weights(examples, resamples, seed)` when the caller has them."""
        if weights is None:
            weights = bootstrap_weights(self.examples, resamples, seed)  # [B, E] float32
        per_bin = self.sums.sum(0, dtype=np.float64)  # [bins, cols]
        boot = bootstrap_sums(weights, self.sums)  # [B, bins, cols]
        rows = []
        for b in range(self.bins):
            n = int(per_bin[b, 0])
            row: dict[str, Any] = {"t": b, "positions": n}
            if b > self.max_t:
                row["tail"] = True  # every t > max_t
            for c, name in enumerate(CATEGORY_NAMES):
                row[name] = _ratio(per_bin[b, 1 + c], n, boot[:, b, 1 + c], boot[:, b, 0])
            for j, name in enumerate(self.means):
                col = self.inf_column(name)
                infinite = None if col is None else (per_bin[b, col], boot[:, b, col])
                mean = _ratio(
                    per_bin[b, 4 + j], n, boot[:, b, 4 + j], boot[:, b, 0], "mean", infinite
                )
                row[f"mean_{name}"] = mean
            if self.rank_hist is not None:
                row["median_base_rank"] = _median_rank(self.rank_hist[b])
            rows.append(row)
        total, boot_total = per_bin.sum(0), boot.sum(1)  # [cols], [B, cols]
        overall = {
            name: _ratio(total[1 + c], total[0], boot_total[:, 1 + c], boot_total[:, 0])
            for c, name in enumerate(CATEGORY_NAMES)
        }
        for j, name in enumerate(self.means):
            col = self.inf_column(name)
            infinite = None if col is None else (total[col], boot_total[:, col])
            overall[f"mean_{name}"] = _ratio(
                total[4 + j], total[0], boot_total[:, 4 + j], boot_total[:, 0], "mean", infinite
            )
        return {"by_position": rows, "overall": overall, "resamples": resamples, "seed": seed}


def bootstrap_weights(examples: int, resamples: int, seed: int) -> np.ndarray:
    """`[B, E]` float32: how often each example is drawn in each resample (E draws with
    replacement; one bincount per resample: numpy's multinomial over E categories is several
    times slower at E = 33K)."""
    rng = np.random.default_rng(seed)
    weights = np.zeros((resamples, examples), np.float32)
    for b in range(resamples if examples else 0):
        draws = rng.integers(0, examples, size=examples, dtype=np.int32)
        weights[b] = np.bincount(draws, minlength=examples)
    return weights


def bootstrap_sums(weights: np.ndarray, sums: np.ndarray) -> np.ndarray:
    """`[B, E] x [E, bins, cols] -> [B, bins, cols]`: every resample's totals, one product."""
    e, bins, cols = sums.shape
    flat = sums.reshape(e, bins * cols)
    used = np.flatnonzero(flat.any(0))  # columns all zero (the +inf counts, as a rule) stay 0
    out = np.zeros((len(weights), bins * cols), np.float64)
    if used.size >= flat.shape[1] // 2:  # copying the used columns would cost more than the
        out[:] = weights @ flat  # product's on the others (whose sums are exactly 0)
    elif used.size:
        out[:, used] = weights @ flat[:, used]
    return out.reshape(-1, bins, cols)


def _ratio(
    num: float,
    den: float,
    boot_num: np.ndarray,
    boot_den: np.ndarray,
    key: str = "fraction",
    infinite: tuple[float, np.ndarray] | None = None,
) -> dict[str, Any]:
    """The pooled ratio and its 95% percentile interval (resamples where the bin is empty are
    dropped; null where there are no positions at all). With `infinite` (the count of +inf
    values, and per resample), a mean over any +inf value is +inf, as it is."""
    if den == 0:
        return {key: None, "ci": [None, None]}
    keep = boot_den > 0
    ratios = boot_num[keep] / boot_den[keep]
    value = num / den
    if infinite is not None:
        ratios = np.where(infinite[1][keep] > 0, np.inf, ratios)
        value = np.inf if infinite[0] > 0 else value
    if not ratios.size:
        return {key: float(value), "ci": [None, None]}
    low, high = np.percentile(ratios, [2.5, 97.5], method="inverted_cdf")  # no +inf - +inf
    return {key: float(value), "ci": [float(low), float(high)]}


def _median_rank(hist: np.ndarray) -> int | str | None:
    total = int(hist.sum())
    if total == 0:
        return None
    i = int(np.searchsorted(np.cumsum(hist), (total + 1) / 2, side="left"))
    return i + 1 if i < RANK_CAP else f">{RANK_CAP}"
