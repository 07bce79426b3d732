"""The scoring head: from final hidden states to per-position TDS statistics, without `[T, V]`.

Only answer positions reach the output projection, a chunk of rows at a time, so memory is bounded
by `chunk_rows x V` floats whatever the batch. Per position it returns:

- the top-k token ids and log-probabilities (top-k on raw logits; `logprob = logit - lse`);
- the answer token's log-probability and its rank, `rank = 1 + #{v : logit_v > logit_target}`
  (strictly greater: ties share the best rank; a -inf target ranks after every finite logit);
- the entropy `H = lse - sum_v p_v logit_v` (nats);
- optionally the log-probabilities at given ids (the base model at the aligned top-k, for KL).

The normaliser `lse` is computed in float32 from logits in the model's dtype (the distribution the
model itself defines). The vocabulary may be split across tensor-parallel ranks: each rank holds the
rows `[vocab_start, vocab_start + V_local)` of the projection and the reductions below are
all-reduces and all-gathers over `group`, with traffic O(k x tp) per position, never O(V).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from tdsdist.engine.rows import RowTensors
from tdsdist.store.schema import BASE_ARRAYS, MODEL_ARRAYS, Column


@dataclass
class HeadOutput(RowTensors):
    """Per-position statistics of N rows (split, joined and converted by `RowTensors`).

    The field names are the store's per-model array names (`store.schema.MODEL_ARRAYS`), except
    `support_logprobs`, which the scoring job stores as `base/logprobs_at_aligned_top`.
    """

    top_ids: torch.Tensor  # [N, k] int64, best first
    top_logprobs: torch.Tensor  # [N, k] float32
    logprob: torch.Tensor  # [N] float32, of the target token
    rank: torch.Tensor  # [N] int64, 1-based
    entropy: torch.Tensor  # [N] float32
    support_logprobs: torch.Tensor | None = None  # [N, k] float32, at the given support ids

    @classmethod
    def column_of(cls, field: str) -> Column:
        if field == "support_logprobs":
            return BASE_ARRAYS[0]
        return {c.name: c for c in MODEL_ARRAYS}[field]

    def numpy(self) -> dict[str, np.ndarray]:
        """Field name -> numpy array in the store's dtype (ids and ranks int32, the rest float32)."""
        return self.by_field()


@dataclass(frozen=True)
class VocabShard:
    """This rank's slice of the vocabulary; `group` is None when one process holds it all."""

    start: int = 0
    group: dist.ProcessGroup | None = None
    vocab_size: int = 0
    """The whole vocabulary (all ranks' rows); 0: this rank's rows are all of it."""

    @property
    def world(self) -> int:
        return 1 if self.group is None else dist.get_world_size(self.group)

    def slices(self) -> list[tuple[int, int]]:
        """`[start, end)` of every rank's rows, in rank order."""
        return [vocab_slice(self.vocab_size, r, self.world) for r in range(self.world)]

    def chunk_rows(self, local_rows: int, chunk_bytes: int) -> int:
        """Rows per chunk, the same on every rank: the reductions are collective, so the chunks
        must pair up even when tp does not divide the vocabulary (151 and 150 rows of 301)."""
        return chunk_rows(self.vocab_size or local_rows, chunk_bytes)


def vocab_slice(vocab_size: int, tp_rank: int, tp_size: int) -> tuple[int, int]:
    """`[start, end)` of this rank's rows: contiguous, sizes differing by at most one, covering
    exactly `[0, vocab_size)` (the tokenizer's vocabulary: padding rows belong to no rank).

    Balanced rather than `ceil(V / tp)` blocks so that no rank is left with a sliver (or nothing)
    and the per-rank head cost is as even as the vocabulary allows.
    """
    if tp_size < 1 or not 0 <= tp_rank < tp_size:
        raise ValueError(f"tensor-parallel rank {tp_rank} is not in [0, {tp_size})")
    if vocab_size < tp_size:
        raise ValueError(f"cannot split a vocabulary of {vocab_size} across {tp_size} ranks")
    base, extra = divmod(vocab_size, tp_size)
    start = tp_rank * base + min(tp_rank, extra)
    return start, start + base + (1 if tp_rank < extra else 0)


def all_reduce(t: torch.Tensor, op: dist.ReduceOp.RedOpType, shard: VocabShard) -> torch.Tensor:
    if shard.group is not None:
        dist.all_reduce(t, op=op, group=shard.group)
    return t


def gather_top(
    values: torch.Tensor, ids: torch.Tensor, k: int, shard: VocabShard
) -> tuple[torch.Tensor, torch.Tensor]:
    """Global top-k from each rank's local top-k: gather (value, global id) pairs, select again."""
    if shard.group is None:
        return values, ids
    world = shard.world
    all_values = [torch.empty_like(values) for _ in range(world)]
    all_ids = [torch.empty_like(ids) for _ in range(world)]
    dist.all_gather(all_values, values.contiguous(), group=shard.group)
    dist.all_gather(all_ids, ids.contiguous(), group=shard.group)
    cat_values = torch.cat(all_values, dim=-1)  # [N, k * tp]
    cat_ids = torch.cat(all_ids, dim=-1)
    best, where = cat_values.topk(k, dim=-1)
    return best, cat_ids.gather(-1, where)


def project(
    hidden: torch.Tensor,  # [N, H] model dtype
    weight: torch.Tensor,  # [V_local, H]
    bias: torch.Tensor | None,
    softcap: float | None,
    out: torch.Tensor | None,  # [N, V_local] float32 buffer to fill, or None for a new one
) -> torch.Tensor:
    """Logits in float32, written into a reused buffer where one is given.

    A fresh `[rows, V]` tensor per chunk is not free on CPU: above glibc's mmap threshold every
    allocation is a new mapping whose pages fault in on first touch (about as costly as the
    arithmetic), and below it freed chunks fragment the heap (RSS ballooned to 7.7 GB at 32 MiB
    chunks). Two buffers per call, reused for every chunk, avoid both (`python -m tools.profile.head`).
    """
    if out is None:
        logits = F.linear(hidden, weight, bias).float()
    elif hidden.dtype == torch.float32 and weight.dtype == torch.float32:
        logits = torch.mm(hidden, weight.t(), out=out)
        if bias is not None:
            logits.add_(bias)
    else:
        logits = out.copy_(F.linear(hidden, weight, bias))
    if softcap is not None:
        logits.div_(softcap).tanh_().mul_(softcap)
    return logits


def score_rows(
    hidden: torch.Tensor,  # [N, H] model dtype
    weight: torch.Tensor,  # [V_local, H] (vocabulary padding already trimmed)
    bias: torch.Tensor | None,  # [V_local]
    targets: torch.Tensor,  # [N] global token ids
    k: int,
    support: torch.Tensor | None = None,  # [N, k] global ids
    shard: VocabShard = VocabShard(),
    softcap: float | None = None,
    buffers: tuple[torch.Tensor, torch.Tensor] | None = None,  # two [>= N, V_local] float32
) -> HeadOutput:
    """Statistics for one chunk of rows: project to logits, then `logit_statistics`."""
    n = hidden.shape[0]
    logits = project(hidden, weight, bias, softcap, None if buffers is None else buffers[0][:n])
    return logit_statistics(
        logits, targets, k, support, shard, None if buffers is None else buffers[1][:n]
    )


def logits_at(
    logits: torch.Tensor,  # [N, V_local]
    ids: torch.Tensor,  # [N, m] global token ids
    shard: VocabShard = VocabShard(),
) -> torch.Tensor:
    """`[N, m]` logits at global ids: each id is owned by exactly one rank, the others
    contribute -inf to a max-reduce (m floats per row on the wire)."""
    local = ids - shard.start
    owned = (local >= 0) & (local < logits.shape[1])
    gathered = logits.gather(-1, local.clamp(0, logits.shape[1] - 1))
    values = torch.where(owned, gathered, torch.tensor(float("-inf"), device=logits.device))
    return all_reduce(values, dist.ReduceOp.MAX, shard)


def logit_statistics(
    logits: torch.Tensor,  # [N, V_local] float32; overwritten (used as scratch)
    targets: torch.Tensor,  # [N] global token ids
    k: int,
    support: torch.Tensor | None = None,  # [N, k] global ids
    shard: VocabShard = VocabShard(),
    scratch: torch.Tensor | None = None,  # [N, V_local] float32, overwritten
) -> HeadOutput:
    """See the module docstring for the definitions."""
    v_local = logits.shape[1]
    if scratch is None:
        scratch = torch.empty_like(logits)
    target_logit = logits_at(logits, targets.unsqueeze(-1), shard).squeeze(-1)  # [N]
    # Count as 0/1 floats in the scratch buffer (exact below 2^24 tokens per row): a bool
    # tensor and an int64 sum cost ten times more.
    greater = torch.gt(logits, target_logit.unsqueeze(-1), out=scratch).sum(-1)  # [N] float32
    rank = all_reduce(greater, dist.ReduceOp.SUM, shard).long() + 1

    top_values, top_local = logits.topk(min(k, v_local), dim=-1)
    top_values, top_ids = gather_top(top_values, top_local + shard.start, k, shard)

    support_logit = None if support is None else logits_at(logits, support, shard)

    # Normaliser and entropy in place: z = logits - max, e = exp(z) (scratch), then z * e.
    row_max = all_reduce(logits.amax(-1), dist.ReduceOp.MAX, shard)  # [N]
    z = logits.sub_(row_max.unsqueeze(-1))
    e = torch.exp(z, out=scratch)
    s0 = e.sum(-1)
    s1 = z.mul_(e).nan_to_num_(nan=0.0).sum(-1)  # 0 * -inf -> 0
    sums = all_reduce(torch.stack([s0, s1], dim=-1), dist.ReduceOp.SUM, shard)  # [N, 2]
    lse = row_max + sums[:, 0].log()  # [N]
    entropy = sums[:, 0].log() - sums[:, 1] / sums[:, 0]
    return HeadOutput(
        top_ids=top_ids,
        top_logprobs=top_values - lse.unsqueeze(-1),
        logprob=target_logit - lse,
        rank=rank,
        entropy=entropy,
        support_logprobs=None if support_logit is None else support_logit - lse.unsqueeze(-1),
    )


MIN_CHUNK_ROWS = 32  # tiny chunks at huge vocabularies cost more in per-chunk overhead than memory


def chunk_rows(vocab: int, chunk_bytes: int) -> int:
    """Rows per chunk so that one float32 `[rows, V]` buffer stays within `chunk_bytes`."""
    return max(MIN_CHUNK_ROWS, chunk_bytes // (4 * vocab))


def score_positions(
    hidden: torch.Tensor,  # [N, H]
    weight: torch.Tensor,  # [V_local, H]
    bias: torch.Tensor | None,
    targets: torch.Tensor,  # [N]
    k: int,
    chunk_bytes: int,
    support: torch.Tensor | None = None,  # [N, k]
    shard: VocabShard = VocabShard(),
    softcap: float | None = None,
) -> HeadOutput:
    """`score_rows` over chunks of rows, so no more than one chunk of logits is alive at a time
    (two float32 buffers of one chunk: the logits and a scratch, reused for every chunk).

    Under tensor parallelism every rank takes the same chunks (`VocabShard.chunk_rows`).
    """
    rows = shard.chunk_rows(weight.shape[0], chunk_bytes)
    m = min(rows, hidden.shape[0])
    buffers = (
        torch.empty(m, weight.shape[0], dtype=torch.float32, device=hidden.device),
        torch.empty(m, weight.shape[0], dtype=torch.float32, device=hidden.device),
    )
    return HeadOutput.cat(
        [
            score_rows(
                hidden[i : i + rows],
                weight,
                bias,
                targets[i : i + rows],
                k,
                None if support is None else support[i : i + rows],
                shard,
                softcap,
                buffers,
            )
            for i in range(0, hidden.shape[0], rows)
        ]
    )


class Projection(NamedTuple):
    """What the scoring head needs of one model, handed over by `ModelRunner.projection()` (the
    one seam): this rank's rows of the output projection, its logit cap and its vocabulary
    slice. A tuple, so that `(weight, bias, softcap)` given by hand (tests, tools) still works."""

    weight: torch.Tensor  # [V_local, H] (vocabulary padding trimmed)
    bias: torch.Tensor | None  # [V_local]
    softcap: float | None = None
    shard: VocabShard = VocabShard()

    @property
    def rows(self) -> int:
        return self.weight.shape[0]

    def logits(self, hidden: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """`[N, H] -> [N, V_local]` float32 logits (`project`)."""
        return project(hidden, self.weight, self.bias, self.softcap, out)

    def score(
        self,
        hidden: torch.Tensor,  # [N, H]
        targets: torch.Tensor,  # [N]
        k: int,
        chunk_bytes: int,
        support: torch.Tensor | None = None,  # [N, k]
    ) -> HeadOutput:
        """`score_positions` of these rows under this projection."""
        weight, bias = self.weight, self.bias
        return score_positions(
            hidden, weight, bias, targets, k, chunk_bytes, support, self.shard, self.softcap
        )


def global_argmax(logits: torch.Tensor, shard: VocabShard = VocabShard()) -> torch.Tensor:
    """`[N, V_local] -> [N]` global ids of the largest logit, the lowest id among equal maxima
    (what `argmax` over the whole vocabulary gives), with O(tp) traffic per row."""
    values, ids = logits.max(-1)  # the first (lowest) local id among equal maxima
    if shard.group is None:
        return ids
    ids = ids + shard.start
    all_values = [torch.empty_like(values) for _ in range(shard.world)]
    all_ids = [torch.empty_like(ids) for _ in range(shard.world)]
    dist.all_gather(all_values, values.contiguous(), group=shard.group)
    dist.all_gather(all_ids, ids.contiguous(), group=shard.group)
    # Ranks hold ascending slices, so the first rank with the maximum holds the lowest id.
    best = torch.stack(all_values).argmax(0)  # [N]
    return torch.stack(all_ids).gather(0, best.unsqueeze(0)).squeeze(0)


def gather_vocabulary(logits: torch.Tensor, shard: VocabShard = VocabShard()) -> torch.Tensor:
    """`[N, V_local] -> [N, V]`: every rank's slice, in vocabulary order. O(V) per row: only
    sampling needs it (one row per sequence and decoding step), never scoring."""
    if shard.group is None:
        return logits
    sizes = [end - start for start, end in shard.slices()]
    padded = logits.new_full((logits.shape[0], max(sizes)), float("-inf"))  # equal shapes
    padded[:, : logits.shape[1]] = logits
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded, group=shard.group)
    return torch.cat([part[:, :n] for part, n in zip(parts, sizes)], dim=-1)
