"""Teacher-forced scoring of one model: batches under a token budget, one forward per batch.

Alignment of logits and targets for a sequence with context `c` (length C) and answer `a` (N):

    input:    c_0 ... c_{C-1}  a_0  a_1 ... a_{N-2}      (a_{N-1} is never fed: nothing follows it)
    position: 0   ... C-1      C    C+1 ... C+N-2
    predicts: c_1 ... a_0      a_1  a_2 ... a_{N-1}

so answer token `a_j` is scored from the hidden state at position `C - 1 + j`. Only those rows go
through the output projection (see `head.py`). `hidden_states` is the one place where "run the model
body" happens: a tensor-parallel engine overrides it (and passes its vocabulary shard).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tdsdist.engine.attention import RIGHT_PADDED, use_causal_attention
from tdsdist.engine.head import HeadOutput, VocabShard, score_positions
from tdsdist.engine.models import logit_softcap, output_projection
from tdsdist.engine.prefix_cache import cache_bytes, compute_prefix_cache


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
    """Scores answer positions under one model. Results come back on the CPU as numpy arrays."""

    def __init__(
        self,
        model: torch.nn.Module,
        vocab_size: int,
        top_k: int,
        chunk_bytes: int,
        max_tokens_per_batch: int,
        device: torch.device,
        shard: VocabShard = VocabShard(),
        projection: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    ) -> None:
        """`projection`: this rank's (weight, bias) rows of the output projection when the
        vocabulary is split across ranks; by default the model's own, padding rows trimmed."""
        self.model = model
        self.top_k = top_k
        self.chunk_bytes = chunk_bytes
        self.max_tokens_per_batch = max_tokens_per_batch
        self.device = device
        self.shard = shard
        if projection is None:
            weight, bias = output_projection(model)
            # Rows past the tokenizer's vocabulary are padding, no tokens at all.
            projection = (weight[:vocab_size], None if bias is None else bias[:vocab_size])
        self.weight, self.bias = projection
        self.softcap = logit_softcap(model)
        # sdpa models: causal kernels for our right-padded forwards (see `attention.py`)
        self.forward_kwargs = {RIGHT_PADDED: True} if use_causal_attention(model) else {}
        self.set_prefix([])
        # transformers >= 5.24 calls the argument `cache` (`past_key_values` is deprecated).
        forward_params = inspect.signature(model.base_model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in forward_params else "past_key_values"

    def hidden_states(
        self,
        input_ids: torch.Tensor,  # [B, T] right-padded
        cache: Any = None,  # the prefix's P keys and values per layer
        position_ids: torch.Tensor | None = None,  # [B, T]
    ) -> torch.Tensor:
        """Final hidden states `[B, T, H]` (after the final norm): the model minus its LM head.

        The one place where the model body runs; a tensor-parallel engine overrides it. No
        padding mask: right padding puts every pad after its row's real tokens, where the causal
        mask already hides it (see `attention.py`).
        """
        kwargs: dict[str, Any] = {"use_cache": cache is not None, **self.forward_kwargs}
        if cache is not None:
            kwargs.update({self._cache_kwarg: cache, "position_ids": position_ids})
        out = self.model.base_model(input_ids=input_ids, **kwargs)
        return out.last_hidden_state

    def set_prefix(self, prefix: list[int]) -> None:
        """Tokens that open every context of the run: computed once, reused by every batch."""
        if list(prefix) != getattr(self, "prefix", None):
            self.prefix = list(prefix)
            self._prefix_cache = None

    def prefix_cache(self) -> Any:
        """The prefix's keys and values (computed on first use), or None without a prefix.

        One object for every batch: its layers broadcast the stored copy into each batch's keys
        (see `prefix_cache.py`).
        """
        if self.prefix and self._prefix_cache is None:
            self._prefix_cache = compute_prefix_cache(self.model, self.prefix, self._cache_kwarg)
        return self._prefix_cache if self.prefix else None

    def prefix_cache_bytes(self) -> int:
        """Memory of the stored prefix keys and values (0 without a prefix)."""
        cache = self.prefix_cache()
        return 0 if cache is None else cache_bytes(cache)

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
        if self.prefix:  # every context must start with the cached prefix and extend past it
            assert all(s.context[: len(self.prefix)] == self.prefix for s in sequences)
            assert all(len(s.context) > len(self.prefix) for s in sequences)
        results: list[HeadOutput | None] = [None] * len(sequences)
        for batch in token_budget_batches(fed, self.max_tokens_per_batch):
            outs = self._score_batch([sequences[i] for i in batch], batch, fed, support)
            for i, out in zip(batch, outs):
                results[i] = out
            if progress is not None:
                progress(sum(len(sequences[i].answer) for i in batch))
        assert all(r is not None for r in results), "a sequence was not scored"
        return _concat(results, support is not None)

    def _score_batch(self, seqs, batch, fed, support) -> list[HeadOutput]:
        skip = len(self.prefix)  # tokens already in the cache
        width = max(fed[i] for i in batch) - skip
        ids = torch.zeros(len(seqs), width, dtype=torch.long)  # [B, T] right-padded suffixes
        rows, targets = [], []
        for b, (s, i) in enumerate(zip(seqs, batch)):
            tokens = (s.context + s.answer)[skip : fed[i]]
            ids[b, : len(tokens)] = torch.tensor(tokens)
            start = b * width + len(s.context) - 1 - skip
            rows.append(torch.arange(start, start + len(s.answer)))
            targets.extend(s.answer)
        cache = self.prefix_cache()
        positions = None
        if cache is not None:
            positions = (skip + torch.arange(width, device=self.device)).expand(len(seqs), width)
        hidden = self.hidden_states(ids.to(self.device), cache, positions)
        flat_rows = torch.cat(rows).to(self.device)
        answer_hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, flat_rows)  # [N, H]
        del hidden
        sup = None
        if support is not None:
            sup = (
                torch.from_numpy(np.concatenate([support[i] for i in batch])).long().to(self.device)
            )
        out = score_positions(
            answer_hidden,
            self.weight,
            self.bias,
            torch.tensor(targets, device=self.device),
            self.top_k,
            self.chunk_bytes,
            sup,
            self.shard,
            self.softcap,
        )
        cpu = HeadOutput(**{k: None if v is None else v.cpu() for k, v in vars(out).items()})
        return _split(cpu, [len(s.answer) for s in seqs])


def _split(out: HeadOutput, sizes: list[int]) -> list[HeadOutput]:
    parts = {k: (None if v is None else v.split(sizes)) for k, v in vars(out).items()}
    return [
        HeadOutput(**{k: None if v is None else v[j] for k, v in parts.items()})
        for j in range(len(sizes))
    ]


def _concat(results: list[HeadOutput], with_support: bool) -> dict[str, np.ndarray]:
    out = {
        "top_ids": torch.cat([r.top_ids for r in results]).to(torch.int32).numpy(),
        "top_logprobs": torch.cat([r.top_logprobs for r in results]).float().numpy(),
        "logprob": torch.cat([r.logprob for r in results]).float().numpy(),
        "rank": torch.cat([r.rank for r in results]).to(torch.int32).numpy(),
        "entropy": torch.cat([r.entropy for r in results]).float().numpy(),
    }
    if with_support:
        out["support_logprobs"] = torch.cat([r.support_logprobs for r in results]).float().numpy()
    return out
