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
    rows: dict[str, list] = {"top_ids": [], "top_logprobs": [], "logprob": [], "rank": []}
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
