"""KL over the aligned top-k support plus a tail bin, against a direct float64 computation."""

from __future__ import annotations

import numpy as np

from tdsdist.metrics import TAIL_FLOOR, categories, topk_kl


def direct_kl(p_full: np.ndarray, q_full: np.ndarray, k: int) -> np.ndarray:
    out = []
    for p, q in zip(p_full, q_full):
        support = np.argsort(-p, kind="stable")[:k]
        ps, qs = p[support], q[support]
        pt, qt = max(1 - ps.sum(), TAIL_FLOOR), max(1 - qs.sum(), TAIL_FLOOR)
        out.append(np.sum(ps * np.log(ps / qs)) + pt * np.log(pt / qt))
    return np.array(out)


def test_topk_kl_matches_direct_and_bounds_full_kl() -> None:
    rng = np.random.default_rng(0)
    logits_p, logits_q = rng.normal(0, 3, (50, 200)), rng.normal(0, 3, (50, 200))
    p = np.exp(logits_p) / np.exp(logits_p).sum(-1, keepdims=True)
    q = np.exp(logits_q) / np.exp(logits_q).sum(-1, keepdims=True)
    k = 10
    support = np.argsort(-p, axis=-1, kind="stable")[:, :k]
    got = topk_kl(
        np.log(np.take_along_axis(p, support, -1)), np.log(np.take_along_axis(q, support, -1))
    )
    np.testing.assert_allclose(got, direct_kl(p, q, k), rtol=1e-5, atol=1e-6)
    full = (p * np.log(p / q)).sum(-1)
    assert (got <= full + 1e-5).all()  # coarse-graining never increases KL


def test_identical_distributions_have_zero_kl() -> None:
    lp = np.log(np.array([[0.5, 0.3, 0.1], [0.9, 0.05, 0.05]]))
    assert np.allclose(topk_kl(lp, lp), 0.0, atol=1e-7)
    assert (topk_kl(lp, lp) >= 0).all()


def test_zero_base_tail_is_finite() -> None:
    aligned = np.log(np.array([[0.6, 0.3]]))  # aligned tail 0.1
    base = np.log(np.array([[0.7, 0.3]]))  # base tail 0: floored, not infinite
    assert np.isfinite(topk_kl(aligned, base)).all()


def test_categories_boundaries() -> None:
    assert categories(np.array([1, 2, 3, 4, 1000])).tolist() == [0, 1, 1, 2, 2]
