"""AlignTDS's own top-k similarity metrics ("as published"), per position, beside tdsdist's exact
divergences: the definitions. `score` stores them per unit (store format 3: `stored_arrays`);
`analysis/published.py` summarises them, computing them here for stores of earlier formats.

Lin et al. (ICLR 2024) compare the two models' top-k lists at each position with the functions of
`src/compute_dist_diff.py` in github.com/Re-Align/AlignTDS (commit 178a262), called as
`compute_similarity(base_tokens, aligned_tokens, metric, top_k)`: list 1 is the base model's,
list 2 the aligned model's, each a position's top-k tokens by logit (`top_k=30` in
`src/logit_analysis.py`). With B, A the base and aligned top-k lists (ids, best first) and

    norm_prob:  p~(i) = exp(logit_i) / sum_{j in list} exp(logit_j)      (softmax over the list;
                here exp(lp_i) / sum_j exp(lp_j) of the stored log-probabilities: the same)

the metrics are, per position:

    jaccard        |B n A| / |B u A|
    ndcg           DCG / IDCG,  rel(i) = 1 / log2(r_A(i) + 1) for i in A (r_A: 1-based rank in
                   A), 0 otherwise;  DCG = sum_{j=1..|B|} rel(B_j) / log2(j + 1);
                   IDCG = sum_{j=1..min(|A|,|B|)} 1 / log2(j + 1)^2
    kl_partial     sum_{i in B n A, p~_B(i) > 0, p~_A(i) > 0} p~_B(i) log(p~_B(i) / p~_A(i))
                   (the base's renormalised probabilities against the aligned's, over the
                   intersection only: not a divergence, it can be negative)
    weighted_sum   sum_{i in B n A} p~_B(i) p~_A(i)
    top_rank       the 0-based index of A_1 (the aligned top 1) in B; k when absent
    top_prob       p~_B(A_1); 0 when A_1 is not in B

and tdsdist adds, from the same arrays, the marker `top1_differs` (B_1 != A_1), the base rank of
A_1 (`aligned_top1_base_rank`: 1 + the base top-k entries strictly above A_1's base
log-probability, the head's rule for ties; k + 1 standing for "> k"), which is what AlignTDS's
categories are made of (`summarize(category_by="aligned-top1")`), and in format 2 the aligned
model's exact rank of B_1 (`aligned/rank_of_base_top1`).

Differences from the published code, all deliberate: sets are of token ids, where the original
compares decoded strings in `jaccard` and `kl_partial` (two ids with the same text count once
there); k is the store's top-k for every metric (the original's `top_k=50` on lists of 30 uses
whole lists, except `top_rank`'s absent value 50; its `@10` variants of Jaccard, KL and the
weighted sum, on the first 10 of each list, are not computed here); the original's nDCG ignores `top_k` and would
fail on lists of unequal length (IDCG then sums the shorter list). The exact divergences
(`positions/kl_aligned_base`, `js`) stay the headline: these metrics see only the top k.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np

from tdsdist.store import PUBLISHED_ARRAYS
from tdsdist.threads import pool

#: The store arrays the metrics need (formats 1 and 2), and the one only format 2 has.
ARRAYS = ("aligned/top_ids", "aligned/top_logprobs", "base/top_ids", "base/top_logprobs")
PAIR_ARRAY = "aligned/rank_of_base_top1"
#: name -> its formula, "as published" or the tdsdist addition it is, in the order they print.
METRICS: dict[str, str] = {
    "jaccard": "as published: |B n A| / |B u A| of the base (B) and aligned (A) top-k ids",
    "ndcg": "as published: DCG of B with relevance 1/log2(rank in A + 1), over the ideal DCG",
    "kl_partial": "as published: sum over B n A of p~B log(p~B / p~A), p~ renormalised over each top-k (not a divergence: can be < 0)",
    "weighted_sum": "as published: sum over B n A of p~B p~A",
    "top_rank": "as published: 0-based index of the aligned top 1 in B, k when absent",
    "top_prob": "as published: p~B of the aligned top 1, 0 when absent from B",
    "top1_differs": "tdsdist: fraction of positions where the base top 1 is not the aligned top 1",
    "aligned_top1_base_rank": "tdsdist: base rank of the aligned top 1 (1 + base top-k entries above it; k + 1 standing for > k)",
    "base_top1_aligned_rank": "tdsdist: exact aligned rank of the base top 1 (format 2 only)",
}
NAMES = tuple(METRICS)
#: Rows per vectorised step: the `[rows, k]` temporaries stay in cache (8K rows: 7% slower, 32K: 4x).
SUB_ROWS = 1 << 12
R = TypeVar("R")


def renormalised(
    logprobs: np.ndarray, probabilities: bool = True
) -> tuple[np.ndarray | None, np.ndarray]:
    """`[m, k] -> ([m, k], [m, k])` float32: each row's probabilities renormalised over its k
    entries (AlignTDS's `norm_prob`) and their logs; a -inf entry gets probability 0.

    The stored log-probabilities are log-softmax values, so a row's best is >= -log(vocab) and
    `exp` needs no shift (it cannot underflow the whole row); a row that does is shifted."""
    p = np.exp(logprobs)
    total = p.sum(1, keepdims=True)
    low = ~(total > 1e-30).ravel()  # NaN rows (no data) too: harmless, they are not kept
    if low.any():
        top = logprobs[low].max(1, keepdims=True)
        p[low] = np.exp(logprobs[low] - top)
        total[low] = p[low].sum(1, keepdims=True) * np.exp(top)
    log_total = np.log(total)
    if not probabilities:  # the logs alone (the aligned side needs no more)
        return None, logprobs - log_total
    p /= total
    return p, logprobs - log_total


def published_block(
    aligned_ids: np.ndarray,  # [m, k] int
    aligned_lp: np.ndarray,  # [m, k] float32
    base_ids: np.ndarray,  # [m, k] int
    base_lp: np.ndarray,  # [m, k] float32
    base_top1_aligned_rank: np.ndarray | None = None,  # [m] int (format 2)
) -> dict[str, np.ndarray | None]:
    """Every metric of `METRICS` per row, `[m]` float64 (None where its array is missing)."""
    inputs = (aligned_ids, aligned_lp, base_ids, base_lp)
    parts = in_sub_blocks(lambda a, b: _block(*(x[a:b] for x in inputs)), len(aligned_ids))
    out: dict[str, np.ndarray | None] = {
        name: np.concatenate([p[name] for p in parts]).astype(np.float64) for name in parts[0]
    }
    rank = base_top1_aligned_rank
    out["base_top1_aligned_rank"] = None if rank is None else rank.astype(np.float64)
    return out


def in_sub_blocks(one: Callable[[int, int], R], m: int) -> list[R]:
    """`one(a, b)` over the `SUB_ROWS` sub-blocks `[a, b)` of `m` rows (one empty block when
    `m` is 0), in order. numpy releases the GIL inside each operation: the sub-blocks share the
    cores, and each one's temporaries are freed when it ends."""
    spans = [(a, min(a + SUB_ROWS, m)) for a in range(0, m, SUB_ROWS)] or [(0, 0)]

    def run(span: tuple[int, int]) -> R:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
            return one(*span)

    return list(pool().map(run, spans)) if len(spans) > 1 else [run(spans[0])]


def _block(
    aligned_ids: np.ndarray, aligned_lp: np.ndarray, base_ids: np.ndarray, base_lp: np.ndarray
) -> dict[str, np.ndarray]:
    m, k = base_ids.shape
    # where[r, j] = 1 + the index of B_j in A (0: absent): one comparison per entry of A, k
    # passes over [m, k] in cache (ids are unique within a list: at most one match).
    small = np.uint8 if k < 255 else np.int64
    where = np.zeros((m, k), small)
    eq = np.empty((m, k), bool)
    step = np.empty((m, k), small)
    a_ids, b_ids = aligned_ids, base_ids
    if m and max(int(a_ids.max()), int(b_ids.max())) < 32767:  # a 32K vocabulary: compare int16
        a_ids, b_ids = a_ids.astype(np.int16), b_ids.astype(np.int16)
    for i in range(k):
        np.equal(b_ids, a_ids[:, i : i + 1], out=eq)
        np.multiply(eq, small(i + 1), out=step)
        where += step
    # Only a row with repeated ids (-1 padding, no data) can sum several matches: keep it an index.
    np.minimum(where, k, out=where)
    in_a = where > 0
    if base_ids.min() >= 0 and aligned_ids.min() >= 0:  # full lists (the usual case)
        n_a = n_b = np.full(m, k)
        valid_a1: bool | np.ndarray = True
    else:  # a -1 (no entry) in B matches a -1 in A: not an id
        in_a &= base_ids >= 0
        n_a, n_b = (aligned_ids >= 0).sum(1), (base_ids >= 0).sum(1)
        valid_a1 = aligned_ids[:, :1] >= 0
    inter = np.add.reduce(in_a.view(np.uint8), axis=1, dtype=small).astype(np.int64)
    union = n_a + n_b - inter
    discount = (1.0 / np.log2(np.arange(k) + 2.0)).astype(np.float32)  # [k]
    flat = where.astype(np.intp)  # 1 + index in A, 0 where absent
    relevance = np.concatenate([[0.0], discount]).astype(np.float32)[flat]  # 0 where absent
    ideal = np.concatenate([[0.0], np.cumsum(discount.astype(np.float64) ** 2)])[
        np.minimum(n_a, n_b)
    ]
    flat += (np.arange(m, dtype=np.intp) * k - 1)[:, None]  # into the flat [m, kA]; absent: junk
    a1 = (where == 1) & valid_a1  # [m, kB]: B_j == A_1
    found = a1.any(1)
    at = a1.argmax(1)
    rows = np.arange(m)
    kl, ws, top_prob = _probabilities(aligned_lp, base_lp, in_a, flat, rows, at)
    above = np.count_nonzero(base_lp > base_lp[rows, at][:, None], axis=1)  # ties: best rank
    return {
        "jaccard": np.where(union > 0, inter / np.maximum(union, 1), np.nan),
        "ndcg": np.where(ideal > 0, (relevance @ discount) / np.where(ideal > 0, ideal, 1.0), 0.0),
        "kl_partial": kl,
        "weighted_sum": ws,
        "top_rank": np.where(found, at, k),
        "top_prob": np.where(found, top_prob, 0.0),
        "top1_differs": base_ids[:, 0] != aligned_ids[:, 0],
        "aligned_top1_base_rank": np.where(found, above + 1, k + 1),
    }


def _probabilities(
    aligned_lp: np.ndarray,
    base_lp: np.ndarray,
    in_a: np.ndarray,
    flat: np.ndarray,
    rows: np.ndarray,
    at: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`kl_partial`, `weighted_sum` and p~B at index `at` of each row (`[m]` each). With e = exp
    of the stored log-probabilities and s their row sums (p~ = e / s), over B n A:
    KL = (sum eB (lB - lA) - (log sB - log sA) sum eB) / sB and WS = sum eB eA / (sB sA): no
    `[m, k]` array of renormalised probabilities or their logs is made."""
    eb, ea = np.exp(base_lp), np.exp(aligned_lp)
    sb, sa = eb.sum(1), ea.sum(1)
    finite = base_lp.min() > -np.inf and aligned_lp.min() > -np.inf  # no masked entry, no NaN
    if finite and sb.min() > 1e-30 and sa.min() > 1e-30:
        la_at_b = aligned_lp.ravel()[flat]  # lA of B_j (where in_a)
        eb_in = np.where(in_a, eb, 0.0)
        diff = np.einsum("ij,ij->i", eb_in, base_lp - la_at_b)
        kl = (diff - (np.log(sb) - np.log(sa)) * eb_in.sum(1)) / sb
        ws = np.einsum("ij,ij->i", eb_in, np.exp(la_at_b)) / (sb * sa)
        return kl, ws, eb[rows, at] / sb
    # Masked (-inf) entries or rows without data: renormalised arrays, 0 log 0 = 0, and a token
    # either model gives 0 is skipped (the original's `if w1 > 0 and w2 > 0`).
    _, log_pa = renormalised(aligned_lp, probabilities=False)
    pb, log_pb = renormalised(base_lp)
    assert pb is not None  # probabilities=True
    log_pa_at_b = log_pa.ravel()[flat]
    pa_at_b = np.exp(log_pa_at_b)
    both = in_a & (pb > 0) & (pa_at_b > 0)
    kl = np.einsum("ij,ij->i", pb, np.where(both, log_pb - log_pa_at_b, 0.0))
    ws = np.einsum("ij,ij->i", pb, np.where(in_a, pa_at_b, 0.0))
    return kl, ws, pb[rows, at]


def stored_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`published/<name>` of one scored unit (`arrays`: the pair head's, by store name), in the
    store's dtypes: what `score` writes in a store of format 3.

    Each array is allocated once at the unit's size and filled sub-block by sub-block (the same
    sub-blocks as `published_block`, so the same values to the bit): the temporaries are a
    sub-block's, never the unit's."""
    inputs = [arrays[name] for name in ARRAYS]
    m = len(inputs[0])
    stored = {f"published/{c.name}": np.empty(m, c.dtype) for c in PUBLISHED_ARRAYS}

    def one(a: int, b: int) -> None:
        if a == b:
            return
        out = _block(*(x[a:b] for x in inputs))
        for c in PUBLISHED_ARRAYS:  # through float64, as `published_block` gives them
            stored[f"published/{c.name}"][a:b] = out[c.name].astype(np.float64)

    in_sub_blocks(one, m)
    return stored
