"""The float64 per-token reference: what the published pipeline computes, one fresh forward per token.

Kept in the package (not with the test helpers) because users validate their own hardware and
kernels with it, and `tools/gpu/correctness.py` runs it against the engine on CUDA. It needs
only torch and numpy.
"""

from __future__ import annotations

import numpy as np
import torch


@torch.no_grad()
def per_token_reference(
    model: torch.nn.Module,
    context: list[int],
    answer: list[int],
    k: int,
    vocab: int,
    support: np.ndarray | None = None,  # [N, k] ids, or None
) -> dict[str, np.ndarray]:
    """What the published pipeline does, as the reference the engine is checked against.

    For every answer position t, a fresh forward pass over `context + answer[:t]` (no cache, no
    batching, no padding), then the full next-token distribution in float64 over the first
    `vocab` logits (rows past the tokenizer are padding). Runs wherever `model` lives; the
    statistics come back as numpy arrays: top_ids [N, k] (stable order: ties by id),
    top_logprobs [N, k], logprob [N], rank [N] (1 + number of strictly greater logits),
    target_gap [N] (distance from the target's logit to the nearest other one: below float32's
    resolution a rank may differ by one without error), and support [N, k] (log-probs at
    `support`'s ids) when `support` is given.
    """
    device = next(model.parameters()).device
    rows: dict[str, list[object]] = {"top_ids": [], "top_logprobs": [], "logprob": [], "rank": []}
    rows["target_gap"] = []
    rows["support"] = []
    for t, target in enumerate(answer):
        ids = torch.tensor([context + answer[:t]], device=device)
        logits = model(ids).logits[0, -1, :vocab].double().cpu()
        logp = torch.log_softmax(logits, -1)
        order = torch.sort(logits, descending=True, stable=True).indices[:k]
        rows["top_ids"].append(order.numpy())
        rows["top_logprobs"].append(logp[order].numpy())
        rows["logprob"].append(logp[target].item())
        rows["rank"].append(int((logits > logits[target]).sum()) + 1)
        others = torch.cat([logits[:target], logits[target + 1 :]])
        rows["target_gap"].append(
            (others - logits[target]).abs().min().item() if len(others) else np.inf
        )
        if support is not None:
            rows["support"].append(logp[torch.as_tensor(support[t]).long()].numpy())
    if support is None:
        del rows["support"]
    return {key: np.array(v) for key, v in rows.items()}


def divergences64(logits_p: torch.Tensor, logits_q: torch.Tensor) -> dict[str, float]:
    """KL(p || q), KL(q || p), JS (natural log) and TV of two distributions given by `[V]`
    logits, in float64, with `0 log 0 = 0` and `+inf` where p > 0 = q."""
    lp, lq = torch.log_softmax(logits_p.double(), -1), torch.log_softmax(logits_q.double(), -1)
    p, q = lp.exp(), lq.exp()
    m = (p + q) / 2

    def kl(a: torch.Tensor, la: torch.Tensor, lb: torch.Tensor) -> float:
        support = a > 0
        if torch.isneginf(lb[support]).any():
            return float("inf")
        return float((a[support] * (la[support] - lb[support])).sum())

    lm = m.log()
    return {
        "kl_aligned_base": kl(p, lp, lq),
        "kl_base_aligned": kl(q, lq, lp),
        "js": 0.5 * kl(p, lp, lm) + 0.5 * kl(q, lq, lm),
        "tv": float((p - q).abs().sum() / 2),
    }


@torch.no_grad()
def per_token_pair_reference(
    aligned: torch.nn.Module,
    base: torch.nn.Module,
    aligned_context: list[int],
    base_context: list[int],
    answer: list[int],
    k: int,
    vocab: int,
    base_vocab: int | None = None,
) -> dict[str, np.ndarray]:
    """The pair head's quantities, from a fresh forward per answer token of each model (float64
    statistics over the first `vocab` logits). Keys are the store's array names.

    `base_vocab` < `vocab`: the aligned vocabulary appends tokens to the base one; the base's
    first `base_vocab` logits are padded with -inf to `vocab` (the union: the base gives the
    appended ids probability 0)."""
    base_vocab = vocab if base_vocab is None else base_vocab
    rows: dict[str, list[object]] = {}  # name -> per-position values (arrays or numbers)

    def add(name: str, value: object) -> None:
        rows.setdefault(name, []).append(value)

    for t, target in enumerate(answer):
        logits = {}
        for name, model, context in (
            ("aligned", aligned, aligned_context),
            ("base", base, base_context),
        ):
            device = next(model.parameters()).device
            ids = torch.tensor([context + answer[:t]], device=device)
            width = vocab if name == "aligned" else base_vocab
            x = model(ids).logits[0, -1, :width].double().cpu()
            logits[name] = torch.cat([x, x.new_full((vocab - width,), float("-inf"))])
        for name, other in (("aligned", "base"), ("base", "aligned")):
            x = logits[name]
            logp = torch.log_softmax(x, -1)
            top = torch.sort(x, descending=True, stable=True).indices[:k]
            other_top = torch.sort(logits[other], descending=True, stable=True).indices[:k]
            add(f"{name}/top_ids", top.numpy())
            add(f"{name}/top_logprobs", logp[top].numpy())
            add(f"{name}/logprob", logp[target].item())
            add(f"{name}/rank", int((x > x[target]).sum()) + 1)
            add(f"{name}/ties", int((x == x[target]).sum()) - 1)
            add(f"{name}/entropy", float(-(logp.exp() * logp).nan_to_num(nan=0.0).sum()))
            add(f"{name}/logprobs_at_{other}_top", logp[other_top].numpy())
            if name == "aligned":
                add("aligned/rank_of_base_top1", int((x > x[other_top[0]]).sum()) + 1)
        for key, value in divergences64(logits["aligned"], logits["base"]).items():
            add(f"positions/{key}", value)
    return {key: np.array(v) for key, v in rows.items()}


def logits_pair_reference(
    logits_a: torch.Tensor, logits_b: torch.Tensor, targets: torch.Tensor, k: int
) -> dict[str, np.ndarray]:
    """Every array the pair head writes, in float64 the obvious way, from `[n, V]` logits of both
    models (`store` names: `aligned/rank`, `positions/js`, ...): the pair head's test oracle."""
    rows: dict[str, list[object]] = {}  # name -> per-position values (arrays or numbers)
    for i, t in enumerate(targets.tolist()):
        la, lb = logits_a[i].double(), logits_b[i].double()
        for name, x, other in (("aligned", la, lb), ("base", lb, la)):
            logp = torch.log_softmax(x, -1)
            top = torch.sort(x, descending=True, stable=True).indices[:k]
            other_top = torch.sort(other, descending=True, stable=True).indices[:k]
            key = "base" if name == "aligned" else "aligned"
            values = {
                "top_ids": top.numpy(),
                "top_logprobs": logp[top].numpy(),
                "logprob": logp[t].item(),
                "rank": int((x > x[t]).sum()) + 1,
                "ties": int((x == x[t]).sum()) - 1,
                "entropy": float(-(logp.exp() * logp).nan_to_num(nan=0.0).sum()),
                f"logprobs_at_{key}_top": logp[other_top].numpy(),
            }
            if name == "aligned":
                values["rank_of_base_top1"] = int((x > x[other_top[0]]).sum()) + 1
            for stat, v in values.items():
                rows.setdefault(f"{name}/{stat}", []).append(v)
        for key, v in divergences64(la, lb).items():
            rows.setdefault(f"positions/{key}", []).append(v)
    return {k: np.array(v) for k, v in rows.items()}
