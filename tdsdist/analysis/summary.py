"""The published TDS statistics of a store, streamed over blocks of rows with numpy.

Memory is bounded whatever the store's size: rows are read in blocks of `BLOCK_ROWS`, and every
statistic is a running sum, a fixed-bin histogram (medians and quantiles: exact to the bin width,
stated per key) or a per-vocabulary-token count. No Python loop runs per position.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from tdsdist.analysis import measures
from tdsdist.analysis import nudging as nudge_stats
from tdsdist.analysis import published as pub
from tdsdist.analysis import tokens as token_tables
from tdsdist.analysis.chunks import BlockReader, committed_blocks, metrics_pool, pool
from tdsdist.analysis.curves import PositionCurves, bootstrap_weights
from tdsdist.analysis.groups import by_group
from tdsdist.analysis.paired import per_example_sums
from tdsdist.analysis.summary_text import render_text  # noqa: F401  (re-exported: analyze's text)
from tdsdist.analysis_options import Filters, Thresholds
from tdsdist.store import Store
from tdsdist.store.fields import read_field

BLOCK_ROWS = 1 << 18
CATEGORY_BY = pub.CATEGORY_BY
RANK_BINS = [
    (1, 1, "1"),
    (2, 2, "2"),
    (3, 3, "3"),
    (4, 5, "4-5"),
    (6, 10, "6-10"),
    (11, 100, "11-100"),
    (101, None, ">100"),
]
POSITION_EDGES = [0, 5, 10, 20, 50, 100, 200, 500]  # absolute position buckets: [0,5), [5,10), ...
DECILES = 10
PROB_BINS = 10_000  # base probability histogram on [0, 1]: medians exact to 1e-4
KL_EDGES = np.concatenate([[0.0], np.logspace(-6, 3, 1801), [np.inf]])  # 0.5% relative bins


def kl_bins(kl: np.ndarray) -> np.ndarray:
    """`[m]` finite KLs >= 0 -> `[m]` int64 bin of `KL_EDGES`: the same as `searchsorted(KL_EDGES,
    kl, side="right") - 1`, 10x faster (a binary search over 1,803 edges mispredicts a branch
    per step). The bin is guessed from log10 (uniform in log past the 0 bin), then moved by one
    where the exact edges say so: the guess is never off by more than one bin."""
    with np.errstate(divide="ignore"):
        guess = np.floor((np.log10(kl) + 6.0) * 200.0)  # -inf at 0
    i: np.ndarray = np.clip(guess, -1.0, 1800.0).astype(np.int64) + 1
    i -= KL_EDGES[i] > kl
    i += KL_EDGES[i + 1] <= kl
    return i


class _Acc:
    """Running sums for one set of buckets (positions, shifted, KL, base probability)."""

    def __init__(self, n: int) -> None:
        self.n = np.zeros(n, np.int64)
        self.shifted = np.zeros(n, np.int64)
        self.kl = np.zeros(n, np.float64)
        self.prob = np.zeros(n, np.float64)

    def add(
        self, bucket: np.ndarray, shifted: np.ndarray, kl: np.ndarray, prob: np.ndarray
    ) -> None:
        n = len(self.n)
        self.n += np.bincount(bucket, minlength=n)
        self.shifted += np.bincount(bucket, weights=shifted, minlength=n).astype(np.int64)
        self.kl += np.bincount(bucket, weights=kl, minlength=n)
        self.prob += np.bincount(bucket, weights=prob, minlength=n)

    def rows(self, labels: list[str]) -> list[dict[str, Any]]:
        out = []
        for i, label in enumerate(labels):
            n = int(self.n[i])
            out.append(
                {
                    "bucket": label,
                    "positions": n,
                    "shifted_fraction": float(self.shifted[i] / n) if n else None,
                    "mean_kl": float(self.kl[i] / n) if n else None,
                    "mean_base_prob": float(self.prob[i] / n) if n else None,
                }
            )
        return out


def summarize(
    store: Store,
    thresholds: Thresholds = Thresholds(),
    min_support: int = 5,
    top_tokens: int = 20,
    filters: Filters = Filters(),
    max_t: int = 100,
    resamples: int = 1000,
    seed: int = 0,
    category_by: str = "answer",
    published: bool = True,
    token_rows: int = 50,
    per_example: dict[str, Any] | None = None,
    groups: dict[str, Any] | None = None,
    group_by: str | None = None,
) -> dict[str, Any]:
    """All statistics of the committed units (pending units are counted, not included).

    `by_position`: per position t = 0 .. `max_t` and one tail bin, with 95% bootstrap intervals
    over examples (`curves.py`: `resamples`, `seed`); the category fractions gain intervals too.
    `category_by` (`CATEGORY_BY`): whose base rank makes the categories. `published`: AlignTDS's
    top-k metrics (`published.py`), their intervals drawn from the same resamples. `token_rows`:
    rows of each table of `tokens` (`tokens.py`). `per_example`: a dict filled with the
    per-example sums behind every ratio (`paired.per_example_sums`), for paired comparisons.
    `groups`: a dict filled with the accumulators themselves (`groups.py` splits them by group).
    `group_by`: a field the store kept; `groups` of the result holds every statistic per group.
    """
    if group_by is not None:
        read_field(store, group_by)  # a field the store lacks: one error line, before any work
        groups = {} if groups is None else groups
    pub.check_category_by(store, category_by, thresholds.marginal_max)
    reader = BlockReader(store)
    read = reader.read
    # transformers (and torch) import for seconds: load the tokenizer beside the blocks' numpy.
    tokenizer_load = pool().submit(store.tokenizer)
    vocab = int(store.meta.get("vocab_size", 0)) or 1
    special = filters.special_ids(tokenizer_load.result)
    # The curves carry every measure (`measures.py`): entropies, the base top-1 probability and
    # the exact divergences (a vocabulary union leaves out KL(aligned || base), +inf everywhere:
    # README "Vocabularies that differ by appended tokens").
    union = store.meta.get("vocab_union")
    divergences = measures.divergences(store)
    curves = PositionCurves(len(store.ids), max_t, *measures.curve_means(store))
    # The position buckets and deciles get intervals from the same per-example resamples.
    buckets = PositionCurves(len(store.ids), len(POSITION_EDGES) - 2, (), medians=False)
    deciles = PositionCurves(len(store.ids), DECILES - 2, (), medians=False)
    excluded = 0
    counts = np.zeros(3, np.int64)
    rank_hist = np.zeros(len(RANK_BINS), np.int64)
    rank_edges = [lo for lo, _, _ in RANK_BINS]
    prob_hist = np.zeros(PROB_BINS, np.int64)
    kl_hist = np.zeros(len(KL_EDGES) - 1, np.int64)
    prob_sum = kl_sum = 0.0
    kl_max = 0.0
    top1 = 0
    token_counts = token_tables.TokenCounts(vocab)
    published_sums = pub.PublishedSums(len(store.ids), max_t) if published else None
    by_pos = _Acc(len(POSITION_EDGES))
    by_rel = _Acc(DECILES)
    needed = [
        "positions/token_id",
        "base/rank",
        "aligned/rank",
        "base/logprob",
        "aligned/logprob",
        "positions/kl",
    ]
    needed += [n for n in measures.arrays(store) if n not in needed]
    if published or category_by == "aligned-top1":
        needed += pub.inputs(store)
    # The published sums and the curves' are added in the metrics thread, block after block
    # (its one thread keeps the order: the same sums), beside this thread's statistics.
    in_flight: list[Future[None]] = []  # the metrics thread's futures of the last block
    # The resamples depend only on the examples: drawn in a thread of their own meanwhile.
    draws = ThreadPoolExecutor(1)
    drawn = draws.submit(bootstrap_weights, len(store.ids), resamples, seed)
    draws.shutdown(wait=False)
    for rows, valid, t, length, example in committed_blocks(store, BLOCK_ROWS):
        reader.prefetch(needed, rows)  # every array of the block at once, each in a thread
        block_tokens = read("positions/token_id", rows)  # read once per block
        if filters.exclude_first or special.size:
            token = block_tokens[valid]
            keep = filters.keep(t, token, special)
            excluded += int((~keep).sum())
            valid = valid.copy()
            valid[valid] = keep
            t, length, example = t[keep], length[keep], example[keep]
            if not keep.any():
                reader.forget(rows)
                continue
        base_rank = read("base/rank", rows)[valid]
        aligned_rank = read("aligned/rank", rows)[valid]
        base_logprob = read("base/logprob", rows)[valid]
        prob = np.exp(base_logprob.astype(np.float64))
        kl = read("positions/kl", rows)[valid].astype(np.float64)
        tokens = np.clip(block_tokens[valid], 0, vocab - 1)
        metrics: pub.Metrics | Future[pub.Metrics] | None
        if category_by == "aligned-top1":  # the categories need the metrics now
            metrics = block_metrics = pub.read_block(read, rows, store, valid)
            top1_rank = block_metrics["aligned_top1_base_rank"]
            assert top1_rank is not None  # stored (format 3) or from the top-k tables: never None
            cat = thresholds.categorize(top1_rank)
        else:  # computed in a thread beside this block's own statistics
            metrics = (
                metrics_pool().submit(pub.read_block, read, rows, store, valid)
                if published
                else None
            )
            cat = thresholds.categorize(base_rank)
        block_sums: list[Future[None]] = []  # this block's, in the metrics thread
        if published_sums is not None:
            assert metrics is not None  # read whenever published (published_sums is None if not)
            block_sums.append(metrics_pool().submit(published_sums.add_result, metrics, example, t))
        counts += np.bincount(cat, minlength=3)
        rank_hist += np.bincount(
            np.searchsorted(rank_edges, base_rank, side="right") - 1, minlength=len(RANK_BINS)
        )
        prob_hist += np.bincount(
            np.minimum((prob * PROB_BINS).astype(np.int64), PROB_BINS - 1), minlength=PROB_BINS
        )
        finite_kl = np.clip(np.where(np.isfinite(kl), kl, KL_EDGES[-2]), 0.0, None)
        kl_hist += np.bincount(kl_bins(finite_kl), minlength=len(kl_hist))[: len(kl_hist)]
        prob_sum += prob.sum()
        kl_sum += finite_kl.sum()
        kl_max = max(kl_max, float(kl.max()))
        top1 += int((aligned_rank == 1).sum())
        shifted = cat == 2
        token_counts.add(tokens, cat, base_logprob > read("aligned/logprob", rows)[valid])
        bucket = np.searchsorted(POSITION_EDGES, t, side="right") - 1
        decile = np.minimum((t * DECILES) // length, DECILES - 1)
        by_pos.add(bucket, shifted, finite_kl, prob)
        by_rel.add(decile, shifted, finite_kl, prob)
        buckets.add(example, bucket, cat, base_rank, {})
        deciles.add(example, decile, cat, base_rank, {})
        # the exact KLs may be +inf (a masked token): kept as such
        values = {"base_rank": base_rank.astype(np.float64), "base_prob": prob, "kl": kl}
        values.update(measures.block_values(read, rows, valid, store))
        block_sums.append(metrics_pool().submit(curves.add, example, t, cat, base_rank, values))
        for added in in_flight:  # the previous block's: done while this one was computed
            added.result()
        in_flight = block_sums
    for added in in_flight:
        added.result()
    n = int(counts.sum())
    weights = drawn.result()  # the same draws for all
    curve = curves.result(resamples, seed, weights)
    for row in curve["by_position"]:
        measures.add_branching(row)
    if groups is not None:  # the per-example sums behind every group's statistics
        groups.update(curves=curves, published=published_sums)
    if per_example is not None:
        per_example.update(per_example_sums(curves, published_sums))
    done = store.committed()
    names = ("unshifted", "marginal", "shifted")
    tokenizer = tokenizer_load.result() if n else None
    tok_count, tok_shifted, tok_unshifted = token_counts.counts[:3]
    return {
        "store": str(store.path),
        "examples": int(sum(len(u.examples) for u in store.units() if done[u.index])),
        "positions": n,
        "pending_units": int((~done).sum()),
        "thresholds": {
            "unshifted_max": thresholds.unshifted_max,
            "marginal_max": thresholds.marginal_max,
        },
        "categories": {
            k: {
                "count": int(c),
                "fraction": float(c / n) if n else 0.0,
                "ci": curve["overall"][k]["ci"],
            }
            for k, c in zip(names, counts)
        },
        "rank_histogram": [
            {"bin": label, "count": int(c), "fraction": float(c / n) if n else 0.0}
            for (_, _, label), c in zip(RANK_BINS, rank_hist)
        ],
        "base_prob": {
            "mean": prob_sum / n if n else None,
            "median": _median(prob_hist, np.linspace(0, 1, PROB_BINS + 1)),
        },
        "kl": {
            "mean": kl_sum / n if n else None,
            "median": _quantile(kl_hist, KL_EDGES, 0.5),
            "p90": _quantile(kl_hist, KL_EDGES, 0.9),
            "max": kl_max if n else None,
            "definition": "KL(aligned || base) over the aligned top-k ids plus one tail bin (a lower bound of the full KL)",
        },
        "aligned_top1_fraction": float(top1 / n) if n else None,
        "divergence": {
            name: curve["overall"][f"mean_{name}"] for name in divergences if name != "kl"
        },
        "measures": measures.headline(curve["overall"]),
        **({"vocab_union": union} if union else {}),
        "by_position": curve["by_position"],
        "by_position_bucket": _with_ci(
            by_pos.rows(_position_labels()), buckets, resamples, seed, weights
        ),
        "intervals": {
            "method": "95% percentile bootstrap over examples (positions pooled per resample)",
            "resamples": resamples,
            "seed": seed,
            "max_t": max_t,
            "divergences": "exact (pair head)" if store.has_pair else "top-k KL (format 1)",
        },
        "excluded": {
            "first": filters.exclude_first,
            "special_token_ids": special.tolist(),
            "positions": excluded,
        },
        "by_relative_position": _with_ci(
            by_rel.rows([f"{10 * i}-{10 * (i + 1)}%" for i in range(DECILES)]),
            deciles,
            resamples,
            seed,
            weights,
        ),
        "top_shifted_tokens": _token_table(
            tok_count, tok_shifted, min_support, top_tokens, tokenizer, "shifted"
        ),
        "top_unshifted_tokens": _token_table(
            tok_count, tok_unshifted, min_support, top_tokens, tokenizer, "unshifted"
        ),
        "category_by": category_by,
        "published": published_sums.result(weights) if published_sums is not None else None,
        "tokens": token_counts.tables(tokenizer, min_support, token_rows),
        "config": {
            k: store.meta.get("fingerprint", {}).get(k)
            for k in ("aligned", "base", "aligned_template", "base_template", "top_k")
        },
        **(
            {"groups": by_group(store, group_by, groups, _committed(store, done), resamples, seed)}
            if group_by and groups is not None  # groups: set above whenever group_by is
            else {}
        ),
        **(
            {
                "nudge": nudge_stats.summary(
                    store, curve["overall"], tokenizer, min_support, top_tokens, resamples, seed
                )
            }
            if store.nudged
            else {}
        ),
    }


def _committed(store: Store, done: np.ndarray) -> np.ndarray:
    """`[E]` bool: the example's unit is committed."""
    committed: np.ndarray = done[store.example_units]
    return committed


def _with_ci(
    rows: list[dict[str, Any]],
    curves: PositionCurves,
    resamples: int,
    seed: int,
    weights: np.ndarray,
) -> list[dict[str, Any]]:
    """`shifted_ci` on each bucket row: the 95% interval over examples of its shifted fraction."""
    for row, r in zip(rows, curves.result(resamples, seed, weights)["by_position"]):
        row["shifted_ci"] = r["shifted"]["ci"]
    return rows


def _position_labels() -> list[str]:
    edges = POSITION_EDGES
    return [f"{a}-{b - 1}" for a, b in zip(edges[:-1], edges[1:])] + [f"{edges[-1]}+"]


def _median(hist: np.ndarray, edges: np.ndarray) -> float | None:
    return _quantile(hist, edges, 0.5)


def _quantile(hist: np.ndarray, edges: np.ndarray, q: float) -> float | None:
    """The q-quantile from a histogram: the midpoint of the bin where the cumulative count crosses."""
    total = hist.sum()
    if total == 0:
        return None
    i = int(np.searchsorted(np.cumsum(hist), q * total, side="left"))
    lo, hi = edges[i], edges[i + 1]
    return float(lo if not np.isfinite(hi) else (lo + hi) / 2)


def _token_table(
    count: np.ndarray, hits: np.ndarray, min_support: int, top: int, tokenizer: Any, key: str
) -> list[dict[str, Any]]:
    """Tokens by how often they are `key`, among those seen at least `min_support` times."""
    eligible = np.flatnonzero((count >= min_support) & (hits > 0))
    order = eligible[np.lexsort((-hits[eligible] / count[eligible], -hits[eligible]))][:top]
    return [
        {
            "token_id": int(i),
            "token": tokenizer.decode([int(i)]) if tokenizer is not None else str(i),
            "count": int(count[i]),
            key: int(hits[i]),
            f"{key}_rate": float(hits[i] / count[i]),
        }
        for i in order
    ]
