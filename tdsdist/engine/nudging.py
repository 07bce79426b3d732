"""Nudging (Fei et al. 2025): the base model writes, the aligned model steps in where needed.

A `TokenPolicy` for the lockstep decoder (`lockstep.py`): both models have the row's logits at
every step (their caches advance together on the chosen token), and the rule decides per row
which of them chooses the token:

- `threshold` (the paper's): the aligned model chooses where the base model's top-1 probability
  (raw distribution, before temperature / top-p) is below `gamma`. `gamma >= 1` always nudges
  (a top-1 probability that float32 rounds to 1.0 included): the aligned model's own answer;
  `gamma <= 0` never does: the base model's own answer under its context.
- `shifted`: the aligned model chooses where its top-1 token is outside the base top 3 (the
  tokens the Re-Align study calls shifted).

The chosen model then picks its token as `decoder.choose_tokens` does (greedy: the lowest id
among equal maxima; else temperature / top-p from the row's own seeded generator), so the limits
equal `generate` and the base model's own greedy decoding exactly. Under tensor parallelism each
rank holds a vocabulary slice; the rule needs the base row's max and normaliser (two all-reduces)
or the global top 3 (an all-gather of 3 pairs): O(tp) traffic per row, the same on every rank.
`last_nudged` holds the step's decision per row, in the order of the `requests` given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from tdsdist.engine.decoder import choose_tokens
from tdsdist.engine.head import all_reduce, gather_top, global_argmax
from tdsdist.engine.lockstep import LockstepRequest

RULES = ("threshold", "shifted")
SHIFTED_TOP = 3  # `shifted`: the aligned top-1 must be among the base model's top 3


def base_top1_probability(logits: torch.Tensor, shard: Any) -> torch.Tensor:
    """`[B, V_local] -> [B]` float32: the base model's largest next-token probability."""
    x = logits.float()
    row_max = all_reduce(x.amax(-1), dist.ReduceOp.MAX, shard)  # [B]
    total = all_reduce(torch.exp(x - row_max.unsqueeze(-1)).sum(-1), dist.ReduceOp.SUM, shard)
    probability: torch.Tensor = 1.0 / total  # exp(max - lse)
    return probability


def outside_base_top(aligned: torch.Tensor, base: torch.Tensor, shard: Any) -> torch.Tensor:
    """`[B]` bool: the aligned top-1 id is not among the base model's top `SHIFTED_TOP` ids."""
    top1 = global_argmax(aligned, shard)  # [B]
    k = min(SHIFTED_TOP, base.shape[-1])
    values, ids = base.float().topk(k, dim=-1)  # local top-k, then global
    _, ids = gather_top(values, ids + shard.start, k, shard)  # [B, k] global ids
    return ~(ids == top1.unsqueeze(-1)).any(-1)


class Nudging:
    """The nudging `TokenPolicy` (module docstring)."""

    def __init__(self, rule: str = "threshold", threshold: float = 0.3) -> None:
        if rule not in RULES:
            raise ValueError(f"nudge rule must be one of {', '.join(RULES)}, got {rule!r}")
        self.rule, self.threshold = rule, threshold
        self.last_nudged = torch.zeros(0, dtype=torch.bool)  # [B] of the last `choose`

    def nudge(self, logits: Callable[[str], torch.Tensor], shard: Any) -> torch.Tensor:
        """`[B]` bool on the CPU: where the aligned model chooses."""
        base = logits("base")  # [B, V_local]
        if self.rule == "shifted":
            return outside_base_top(logits("aligned"), base, shard).cpu()
        if self.threshold >= 1:
            return torch.ones(base.shape[0], dtype=torch.bool)
        if self.threshold <= 0:
            return torch.zeros(base.shape[0], dtype=torch.bool)
        return (base_top1_probability(base, shard) < self.threshold).cpu()

    def choose(
        self, logits: Callable[[str], torch.Tensor], requests: list[LockstepRequest], shard: Any
    ) -> torch.Tensor:  # [B] global ids
        nudged = self.nudge(logits, shard)  # the same on every rank of a group
        self.last_nudged = nudged
        device = logits("base").device
        out = torch.empty(len(requests), dtype=torch.long, device=device)
        for model, rows in (("aligned", nudged), ("base", ~nudged)):
            if not bool(rows.any()):
                continue  # the aligned head is not projected at a step nobody is nudged
            values = logits(model)  # [B, V_local]
            greedy = [i for i, r in enumerate(requests) if rows[i] and r.temperature == 0]
            if greedy:  # one argmax for every greedy row of this model
                index = torch.tensor(greedy, device=device)
                out[index] = global_argmax(values[index], shard)
            for i, r in enumerate(requests):
                if rows[i] and r.temperature != 0:
                    out[i] = choose_tokens(
                        values[i : i + 1], shard, r.temperature, r.top_p, r.generator
                    )[0]
        return out
