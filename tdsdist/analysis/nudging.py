"""What `analyze` says about a nudged store (`tdsdist nudge`): how many aligned tokens the base
model needed, where, which, and what they bought.

    fraction            the share of positions whose token the aligned model chose, with its
                        95% interval over examples (the curves' `mean_nudged`, so `by_position`
                        gives the same fraction at each position t with its interval)
    top_nudged_tokens   the tokens most often chosen by the aligned model: count (times it
                        chose it), seen (times the token is in an answer), rate = count / seen,
                        among tokens nudged at least `min_support` times, most nudged first
    compare             with `nudge --compare`: the aligned model's mean log-probability per
                        token of the nudged answers and of the base-only answers (threshold 0,
                        the same prompts), each a mean over examples of the answer's per-token
                        mean, with 95% bootstrap intervals over examples, and their paired
                        difference (nudged - base only) over the examples that have both
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tdsdist.analysis.curves import bootstrap_weights
from tdsdist.store import Store


def summary(
    store: Store,
    overall: dict[str, Any],
    tokenizer: Any,
    min_support: int,
    top: int,
    resamples: int,
    seed: int,
) -> dict[str, Any]:
    """`summary["nudge"]` of a nudged store (`overall`: the curves' overall means)."""
    meta = store.meta.get("nudge", {})
    rows = store.valid_rows()
    tokens = store.read("positions/token_id")[rows].astype(np.int64)
    nudged = store.read("positions/nudged")[rows].astype(bool)
    return {
        "rule": meta.get("rule"),
        "threshold": meta.get("threshold") if meta.get("rule") == "threshold" else None,
        "fraction": overall.get("mean_nudged"),
        "nudged_positions": int(nudged.sum()),
        "positions": int(nudged.size),
        "top_nudged_tokens": top_tokens(tokens, nudged, tokenizer, min_support, top),
        "compare": compare(store, resamples, seed),
    }


def top_tokens(
    tokens: np.ndarray, nudged: np.ndarray, tokenizer: Any, min_support: int, top: int
) -> list[dict[str, Any]]:
    """`[{token_id, token, count, seen, rate}]`, most often nudged first (ties: lower id)."""
    if tokens.size == 0:
        return []
    size = int(tokens.max()) + 1
    seen = np.bincount(tokens, minlength=size)
    count = np.bincount(tokens[nudged], minlength=size)
    ids = np.flatnonzero(count >= max(min_support, 1))
    ids = ids[np.lexsort((ids, -count[ids]))][:top]
    return [
        {
            "token_id": int(i),
            "token": tokenizer.decode([int(i)]) if tokenizer is not None else None,
            "count": int(count[i]),
            "seen": int(seen[i]),
            "rate": float(count[i] / seen[i]),
        }
        for i in ids
    ]


def _interval(values: np.ndarray, weights: np.ndarray) -> dict[str, Any]:
    """Mean over examples and its 95% percentile bootstrap interval (`weights`: `[B, E]`)."""
    if values.size == 0:
        return {"mean": None, "ci": [None, None], "examples": 0}
    means = weights @ values / np.maximum(weights.sum(1), 1)  # [B]
    lo, hi = np.percentile(means, [2.5, 97.5]) if len(means) else (np.nan, np.nan)
    return {
        "mean": float(values.mean()),
        "ci": [float(lo), float(hi)],
        "examples": int(values.size),
    }


def compare(store: Store, resamples: int, seed: int) -> dict[str, Any] | None:
    """The likelihood comparison of `nudge --compare` (module docstring); None without it."""
    names = ("aligned_mean_nudged_logprob", "aligned_mean_base_only_logprob")
    if not all(f"examples/{n}" in store.root for n in names):
        return None
    done = np.repeat(store.committed(), [len(u.examples) for u in store.units()])
    nudged, base = (
        np.asarray(store.array(f"examples/{n}")[:]).astype(np.float64)[done] for n in names
    )
    out: dict[str, Any] = {}
    for key, values in (("nudged", nudged), ("base_only", base)):
        ok = np.isfinite(values)  # a base-only answer can be empty
        out[key] = _interval(values[ok], bootstrap_weights(int(ok.sum()), resamples, seed))
    both = np.isfinite(nudged) & np.isfinite(base)
    diff = (nudged - base)[both]
    out["difference"] = _interval(diff, bootstrap_weights(diff.size, resamples, seed))
    out["definition"] = (
        "the aligned model's mean log-probability per token of each answer (under its own"
        " context), averaged over examples: nudged answers against the base model's own"
        " (threshold 0) answers to the same prompts"
    )
    return out


def render_lines(nudge: dict[str, Any]) -> list[str]:
    """`analyze`'s text about a nudged store."""
    rule = nudge["rule"] + (
        f" {nudge['threshold']:g}" if nudge.get("threshold") is not None else ""
    )
    f = nudge.get("fraction") or {}
    lines = [f"nudged decoding (rule {rule}):"]
    if f.get("mean") is not None:
        lo, hi = f["ci"]
        lines.append(
            f"  nudged fraction {f['mean']:.1%} [{lo:.1%}, {hi:.1%}]"
            f" ({nudge['nudged_positions']} of {nudge['positions']} positions)"
        )
    shown = ", ".join(f"{t['token']!r} {t['count']}" for t in nudge["top_nudged_tokens"][:10])
    if shown:
        lines.append(f"  most nudged tokens: {shown}")
    c = nudge.get("compare")
    if c:

        def cell(d: dict[str, Any]) -> str:
            if d["mean"] is None:
                return "-"
            return f"{d['mean']:.3f} [{d['ci'][0]:.3f}, {d['ci'][1]:.3f}]"

        lines.append(
            "  aligned log-prob per token: nudged "
            f"{cell(c['nudged'])}, base only {cell(c['base_only'])},"
            f" difference {cell(c['difference'])}"
        )
    return lines
