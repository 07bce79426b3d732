"""Per-position quantities derived from both models' statistics: KL and the shift category.

KL is computed over the aligned model's top-k support plus one "tail" bin:

    S = aligned top-k ids,  p_i, q_i = aligned and base probabilities of i in S,
    p_tail = 1 - sum_S p_i,  q_tail = 1 - sum_S q_i,
    KL_k = sum_{i in S} p_i log(p_i / q_i) + p_tail log(p_tail / q_tail)

This is the exact KL between the two distributions coarsened to k + 1 outcomes, hence a lower bound
of the full KL(aligned || base) (data processing inequality) that is tight when the aligned model's
mass is concentrated on its top k; 0 log 0 = 0. The tail masses are differences of float32 sums,
reliable to about 1e-6, so both tails are floored at TAIL_FLOOR: a base tail that rounds to zero
must not turn a negligible aligned tail into an infinite KL.
"""

from __future__ import annotations

import numpy as np

CATEGORIES = ("unshifted", "marginal", "shifted")
TAIL_FLOOR = 1e-6


def topk_kl(
    aligned_top_logprobs: np.ndarray, base_logprobs_at_aligned_top: np.ndarray
) -> np.ndarray:
    """`KL_k` per row, `[P, k] x [P, k] -> [P]` float32 (computed in float64)."""
    lp = aligned_top_logprobs.astype(np.float64)
    lq = base_logprobs_at_aligned_top.astype(np.float64)
    p = np.exp(lp)
    with np.errstate(divide="ignore", invalid="ignore"):
        head = np.where(p > 0, p * (lp - lq), 0.0).sum(-1)
        p_tail = np.clip(1.0 - p.sum(-1), TAIL_FLOOR, 1.0)
        q_tail = np.clip(1.0 - np.exp(lq).sum(-1), TAIL_FLOOR, 1.0)
        tail = p_tail * (np.log(p_tail) - np.log(q_tail))
    # KL_k >= 0 exactly; float rounding can leave -1e-9 where the distributions agree.
    kl: np.ndarray = np.maximum(head + tail, 0.0).astype(np.float32)
    return kl


def categories(base_rank: np.ndarray, unshifted_max: int = 1, marginal_max: int = 3) -> np.ndarray:
    """0 unshifted (rank <= unshifted_max), 1 marginal (<= marginal_max), 2 shifted: `[P] -> [P]` int8."""
    return (base_rank > unshifted_max).astype(np.int8) + (base_rank > marginal_max)
