"""Teacher-forced scoring of one model: batches under a token budget, one forward per batch.

Alignment of logits and targets for a sequence with context `c` (length C) and answer `a` (N):

    input:    c_0 ... c_{C-1}  a_0  a_1 ... a_{N-2}      (a_{N-1} is never fed: nothing follows it)
    position: 0   ... C-1      C    C+1 ... C+N-2
    predicts: c_1 ... a_0      a_1  a_2 ... a_{N-1}

so answer token `a_j` is scored from the hidden state at position `C - 1 + j`. Only those rows go
through the output projection (see `head.py`). The model itself is behind a `ModelRunner`
(`runner.py`), the seam that `generate`'s decoder shares and tensor parallelism plugs into.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tdsdist.engine.head import HeadOutput, score_positions
from tdsdist.engine.runner import ModelRunner


@dataclass(frozen=True)
class ContextAnswer:
    """A context and the answer that follows it (token ids)."""

    context: list[int]
    answer: list[int]


#: What one more forward costs, in padded tokens' worth of compute: the weights are read and the
#: kernels launched once per forward, so a batch is split only where that saves more padding.
FORWARD_COST_TOKENS = 256


def token_budget_batches(
    lengths: Sequence[int], max_tokens: int, forward_cost: int = FORWARD_COST_TOKENS
) -> list[list[int]]:
    """Indices grouped into batches, longest first, so that `batch x longest <= max_tokens`.

    Sorted by length, every batch is a run of neighbours; the cut points minimise the padded
    tokens fed (`batch x longest`, summed) plus `forward_cost` per batch (dynamic programming,
    O(n x largest batch)). Filling each batch to the budget instead wastes a third of the compute
    on padding for a few hundred just-eval answers. Longest first makes an out-of-memory show on
    the first batch rather than after an hour. A sequence longer than the budget gets a batch of
    its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    ordered = [lengths[i] for i in order]  # non-increasing: a run's first is its longest
    n = len(order)
    best = [0] + [float("inf")] * n  # best[j]: least cost of batching ordered[:j]
    start = [0] * (n + 1)  # start[j]: where the last batch of that best split begins
    for i in range(n):
        size_cap = max(1, max_tokens // max(ordered[i], 1))
        for j in range(i + 1, min(n, i + size_cap) + 1):
            cost = best[i] + (j - i) * ordered[i] + forward_cost
            if cost < best[j]:
                best[j], start[j] = cost, i
    batches: list[list[int]] = []
    j = n
    while j > 0:
        batches.append(order[start[j] : j])
        j = start[j]
    return batches[::-1]


class Scorer:
    """Scores answer positions under one model (a `ModelRunner`). Results come back on the CPU
    as numpy arrays."""

    def __init__(
        self, runner: ModelRunner, top_k: int, chunk_bytes: int, max_tokens_per_batch: int
    ) -> None:
        runner.check_top_k(top_k)
        self.runner = runner
        self.top_k = top_k
        self.chunk_bytes = chunk_bytes
        self.max_tokens_per_batch = max_tokens_per_batch

    @classmethod
    def for_model(
        cls,
        model: torch.nn.Module,
        vocab_size: int,
        top_k: int,
        chunk_bytes: int,
        max_tokens_per_batch: int,
        device: torch.device,
    ) -> Scorer:
        """A scorer over a whole model on this process (what scripts and tests want)."""
        return cls(ModelRunner(model, vocab_size, device), top_k, chunk_bytes, max_tokens_per_batch)

    @property
    def device(self) -> torch.device:
        return self.runner.device

    @torch.inference_mode()
    def score(
        self,
        sequences: Sequence[ContextAnswer],
        support: list[np.ndarray] | None = None,  # per sequence [N_i, k] ids, or None
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, np.ndarray]:
        """Per-position statistics of all sequences, concatenated in the given order.

        Keys: top_ids [P, k] int32, top_logprobs [P, k], logprob [P], rank [P] int32, entropy [P],
        and support_logprobs [P, k] when `support` is given.
        """
        fed = [len(s.context) + len(s.answer) - 1 for s in sequences]
        prefix = self.runner.prefix
        if prefix:  # every context must start with the cached prefix and extend past it
            assert all(s.context[: len(prefix)] == prefix for s in sequences)
            assert all(len(s.context) > len(prefix) for s in sequences)
        results: list[HeadOutput | None] = [None] * len(sequences)
        for batch in token_budget_batches(fed, self.max_tokens_per_batch):
            outs = self._score_batch([sequences[i] for i in batch], batch, fed, support)
            for i, out in zip(batch, outs):
                results[i] = out
            if progress is not None:
                progress(sum(len(sequences[i].answer) for i in batch))
        assert all(r is not None for r in results), "a sequence was not scored"
        return HeadOutput.cat(results).numpy()

    def _score_batch(self, seqs, batch, fed, support) -> list[HeadOutput]:
        runner, device = self.runner, self.runner.device
        skip = len(runner.prefix)  # tokens already in the cache
        width = max(fed[i] for i in batch) - skip
        ids = torch.zeros(len(seqs), width, dtype=torch.long)  # [B, T] right-padded suffixes
        rows, targets = [], []
        for b, (s, i) in enumerate(zip(seqs, batch)):
            tokens = (s.context + s.answer)[skip : fed[i]]
            ids[b, : len(tokens)] = torch.tensor(tokens)
            start = b * width + len(s.context) - 1 - skip
            rows.append(torch.arange(start, start + len(s.answer)))
            targets.extend(s.answer)
        cache = runner.prefix_cache()
        positions = None
        if cache is not None:
            positions = (skip + torch.arange(width, device=device)).expand(len(seqs), width)
        hidden = runner.hidden_states(
            ids.to(device), cache=cache, position_ids=positions, right_padded=True
        )  # [B, T, H]
        flat_rows = torch.cat(rows).to(device)
        answer_hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, flat_rows)  # [N, H]
        del hidden
        sup = None
        if support is not None:
            sup = torch.from_numpy(np.concatenate([support[i] for i in batch])).long().to(device)
        out = score_positions(
            answer_hidden,
            runner.weight,
            runner.bias,
            torch.tensor(targets, device=device),
            self.top_k,
            self.chunk_bytes,
            sup,
            runner.shard,
            runner.softcap,
        )
        return out.to_cpu().split([len(s.answer) for s in seqs])
