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
from typing import TYPE_CHECKING

import numpy as np
import torch

from tdsdist.engine.head import HeadOutput
from tdsdist.engine.pair_head import pair_positions
from tdsdist.engine.runner import ModelRunner
from tdsdist.errors import TdsError

if TYPE_CHECKING:
    from transformers import PreTrainedModel


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
        model: PreTrainedModel,
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
        scored = [r for r in results if r is not None]
        assert len(scored) == len(results), "a sequence was not scored"
        return HeadOutput.cat(scored).numpy()

    def _score_batch(
        self,
        seqs: Sequence[ContextAnswer],
        batch: list[int],
        fed: list[int],
        support: list[np.ndarray] | None,
    ) -> list[HeadOutput]:
        runner, device = self.runner, self.runner.device
        answer_hidden = answer_hidden_states(runner, seqs)  # [N, H]
        targets = torch.tensor([t for s in seqs for t in s.answer], device=device)
        sup = None
        if support is not None:
            sup = torch.from_numpy(np.concatenate([support[i] for i in batch])).long().to(device)
        out = runner.projection().score(answer_hidden, targets, self.top_k, self.chunk_bytes, sup)
        return out.to_cpu().split([len(s.answer) for s in seqs])


def answer_hidden_states(runner: ModelRunner, seqs: Sequence[ContextAnswer]) -> torch.Tensor:
    """`[N, H]` final hidden states of the answer rows of one batch (N = its answer tokens, in
    order), in the projection's dtype: one right-padded forward after the runner's cached
    prefix (see the diagram above)."""
    device = runner.device
    skip = len(runner.prefix)  # tokens already in the cache
    fed = [len(s.context) + len(s.answer) - 1 for s in seqs]
    width = max(fed) - skip
    ids = torch.zeros(len(seqs), width, dtype=torch.long)  # [B, T] right-padded suffixes
    rows = []
    for b, (s, n) in enumerate(zip(seqs, fed)):
        tokens = (s.context + s.answer)[skip:n]
        ids[b, : len(tokens)] = torch.tensor(tokens)
        start = b * width + len(s.context) - 1 - skip
        rows.append(torch.arange(start, start + len(s.answer)))
    cache = runner.prefix_cache()
    positions = None
    if cache is not None:
        positions = (skip + torch.arange(width, device=device)).expand(len(seqs), width)
    hidden = runner.hidden_states(
        ids.to(device), cache=cache, position_ids=positions, right_padded=True
    )  # [B, T, H]
    flat_rows = torch.cat(rows).to(device)
    return runner.head_input(hidden.reshape(-1, hidden.shape[-1]).index_select(0, flat_rows))


@dataclass(frozen=True)
class AnswerPair:
    """One answer under both models' contexts (the same answer ids follow each context)."""

    aligned_context: list[int]
    base_context: list[int]
    answer: list[int]

    def under(self, model: str) -> ContextAnswer:
        context = self.aligned_context if model == "aligned" else self.base_context
        return ContextAnswer(context, self.answer)


class PairScorer:
    """Scores answers under both models at once: per batch, each model's body runs over the same
    answers (each under its own context), then the pair head (`pair_head.py`) takes both sets of
    hidden states of the same rows and gives both models' statistics and the exact divergences.

    Batches are cut on the longer of the two fed lengths, so one batch is one set of answers for
    both bodies; both runners hold the same vocabulary slice (the same tensor-parallel layout),
    or, on one process, the base holds the first V_b rows of the aligned model's V_a (a
    vocabulary that appends tokens: scored over the union, see `pair_head.py`).
    """

    def __init__(
        self,
        aligned: ModelRunner,
        base: ModelRunner,
        top_k: int,
        chunk_bytes: int,
        max_tokens_per_batch: int,
    ) -> None:
        for runner in (aligned, base):
            runner.check_top_k(top_k)
        proj_a, proj_b = aligned.projection(), base.projection()
        rows_a, rows_b = proj_a.rows, proj_b.rows
        # A base vocabulary that the aligned one extends by appended tokens is padded to the
        # union in the pair head (one process only: `jobs.prepare.check_union_layout`).
        appended = rows_b < rows_a and proj_a.shard.group is None and proj_b.shard.group is None
        if (rows_a != rows_b and not appended) or proj_a.shard.start != proj_b.shard.start:
            raise ValueError("the two models must hold the same vocabulary slice")
        if appended and rows_a < aligned.vocab_size:  # the appended tokens need their rows
            raise TdsError(
                f"the aligned model has {rows_a} output rows, fewer than its tokenizer's"
                f" {aligned.vocab_size} tokens: resize its embeddings to the tokenizer"
            )
        self.aligned, self.base = aligned, base
        self.top_k, self.chunk_bytes = top_k, chunk_bytes
        self.max_tokens_per_batch = max_tokens_per_batch

    @property
    def device(self) -> torch.device:
        return self.base.device

    @torch.inference_mode()
    def score(
        self, answers: Sequence[AnswerPair], progress: Callable[[int], None] | None = None
    ) -> dict[str, np.ndarray]:
        """Store array name (`aligned/rank`, `positions/js`, ...) -> per-position values of all
        answers, concatenated in the given order. `progress` counts positions of both passes.

        Each array is allocated once, at its final size, when the first batch comes back, and
        every batch's rows are copied into their place as the batch finishes: the host holds the
        answers' arrays once plus one batch, never a list of pieces and their concatenation."""
        fed = [
            len(a.answer) - 1 + max(len(a.aligned_context), len(a.base_context)) for a in answers
        ]
        starts = np.cumsum([0] + [len(a.answer) for a in answers])  # [n + 1] row offsets
        arrays: dict[str, np.ndarray] = {}
        scored = 0
        for batch in token_budget_batches(fed, self.max_tokens_per_batch):
            pairs = [answers[i] for i in batch]
            hidden = {
                name: answer_hidden_states(runner, [p.under(name) for p in pairs])
                for name, runner in (("aligned", self.aligned), ("base", self.base))
            }  # each [N, H]
            targets = torch.tensor([t for p in pairs for t in p.answer], device=self.device)
            base = self.base.projection()
            out = pair_positions(
                hidden["aligned"],
                hidden["base"],
                self.aligned.projection(),
                base,
                targets,
                self.top_k,
                self.chunk_bytes,
                base.shard,
            )
            part = out.to_cpu().arrays()  # the batch's rows, in batch order
            del out, hidden
            if not arrays:  # shapes and dtypes as the head gives them
                arrays = {
                    k: np.empty((starts[-1],) + v.shape[1:], v.dtype) for k, v in part.items()
                }
            rows = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in batch])  # [N]
            for name, values in part.items():
                arrays[name][rows] = values
            scored += len(batch)
            if progress is not None:
                progress(2 * sum(len(p.answer) for p in pairs))
        assert scored == len(answers) and arrays, "an answer was not scored"
        return arrays
