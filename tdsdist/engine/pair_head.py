"""The pair head: both models' distributions at the same answer rows, and the exact divergences.

The one-model head (`head.py`) sees one distribution at a time, so the divergence it can give is
the top-k KL lower bound of `metrics.topk_kl`. Here both models' final hidden states of the same
rows come in together, chunk by chunk; both chunks of logits are projected, and per position:

- each model's statistics as in `head.py` (top-k, the answer token's log-probability and rank,
  entropy), plus its tie count `#{v != target : logit_v == logit_target}` (ranks stay
  `1 + #strictly greater`; with ties an analysis can give a tie-aware category);
- the base log-probabilities at the aligned top-k ids and the aligned ones at the base top-k ids,
  and the aligned rank of the base model's top-1 token;
- over the full vocabulary, with `lp`, `lq` the aligned and base log-softmax and `p`, `q` their
  probabilities, `m = (p + q) / 2`:

      KL(aligned || base) = sum_v p (lp - lq)        KL(base || aligned) = sum_v q (lq - lp)
      JS = 1/2 sum_v p (lp - log m) + 1/2 sum_v q (lq - log m)   (natural log, <= log 2)
      TV = 1/2 sum_v |p - q|

  accumulated in float32 from the log-softmax values (never from probabilities subtracted and
  then logged), `0 log 0 = 0`. A token with probability under one model and a -inf logit under
  the other makes the KL that divides by it `+inf`, never NaN; JS and TV stay finite.

Vocabularies that differ by appended tokens (`inputs.tokenizer.VocabularyUnion`): the aligned
projection has V_a rows, the base one V_b < V_a; the base logits are padded with -inf to the
union's width, so the base gives the appended ids probability 0. Ranks, top-k and divergences are
then over the union; the base top-k never holds an appended id (k <= V_b), JS, TV and
KL(base || aligned) stay finite, and KL(aligned || base) is +inf wherever an appended id has a
finite aligned logit (a positive probability, even one that float32 rounds to 0).

Under tensor parallelism each rank holds the same vocabulary slice of both models: each sum is
over the rank's slice, and one all-reduce of a few floats per position finishes them (the pattern
of the normaliser), so traffic stays O(k x tp) per position, never O(V). Memory: the chunk's
rows are chosen so that the six float32 `[rows, V_local]` buffers (both logits, both
probabilities, two scratch) fit in what two one-model heads' buffers take for the same budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from tdsdist.engine.head import Projection, VocabShard, all_reduce, gather_top, logits_at
from tdsdist.engine.rows import RowTensors
from tdsdist.store.schema import MODELS, Column, column

#: float32 buffers of one chunk: both logits (then log-softmax), both probabilities, two scratch.
BUFFERS = 6


@dataclass
class PairOutput(RowTensors):
    """Per-position statistics of both models at N rows (split, joined and converted by
    `RowTensors`). Field names are the store's array names with the group as prefix
    (`aligned_rank` is `aligned/rank`, `kl_aligned_base` is `positions/kl_aligned_base`)."""

    aligned_top_ids: torch.Tensor  # [N, k]
    aligned_top_logprobs: torch.Tensor  # [N, k]
    aligned_logprob: torch.Tensor  # [N]
    aligned_rank: torch.Tensor  # [N]
    aligned_entropy: torch.Tensor  # [N]
    aligned_ties: torch.Tensor  # [N]
    aligned_logprobs_at_base_top: torch.Tensor  # [N, k]
    aligned_rank_of_base_top1: torch.Tensor  # [N]
    base_top_ids: torch.Tensor  # [N, k]
    base_top_logprobs: torch.Tensor  # [N, k]
    base_logprob: torch.Tensor  # [N]
    base_rank: torch.Tensor  # [N]
    base_entropy: torch.Tensor  # [N]
    base_ties: torch.Tensor  # [N]
    base_logprobs_at_aligned_top: torch.Tensor  # [N, k]
    kl_aligned_base: torch.Tensor  # [N]
    kl_base_aligned: torch.Tensor  # [N]
    js: torch.Tensor  # [N]
    tv: torch.Tensor  # [N]

    @classmethod
    def store_name(cls, field: str) -> str:
        """`aligned_rank` -> `aligned/rank`, `js` -> `positions/js`."""
        group, _, stat = field.partition("_")
        return f"{group}/{stat}" if group in MODELS else f"positions/{field}"

    @classmethod
    def column_of(cls, field: str) -> Column:
        return column(cls.store_name(field))

    def arrays(self) -> dict[str, np.ndarray]:
        """Store array name -> numpy array in the store's dtype (ids and counts int32)."""
        return {self.store_name(k): v for k, v in self.by_field().items()}


def _sum(t: torch.Tensor) -> torch.Tensor:
    """Row sums of terms whose 0 x inf products (a zero probability times an infinite log
    ratio) are NaN and mean 0; +-inf terms are kept."""
    return t.nan_to_num_(nan=0.0, posinf=float("inf"), neginf=float("-inf")).sum(-1)


def _normalise(
    logits: torch.Tensor, probs: torch.Tensor, shard: VocabShard
) -> tuple[torch.Tensor, torch.Tensor]:
    """In place: `logits` becomes the log-softmax, `probs` its exp. Returns (lse [N], row max)."""
    row_max = all_reduce(logits.amax(-1), dist.ReduceOp.MAX, shard)  # [N]
    z = logits.sub_(row_max.unsqueeze(-1))
    total = all_reduce(torch.exp(z, out=probs).sum(-1), dist.ReduceOp.SUM, shard)  # [N]
    log_total = total.log()
    z.sub_(log_total.unsqueeze(-1))
    probs.div_(total.unsqueeze(-1))
    return row_max + log_total, row_max


def pair_rows(
    hidden_a: torch.Tensor,  # [n, H_a] aligned model's final hidden states
    hidden_b: torch.Tensor,  # [n, H_b] base model's, same rows
    projection_a: Projection,  # or a (weight, bias, softcap) tuple
    projection_b: Projection,
    targets: torch.Tensor,  # [n] global ids of the answer tokens
    k: int,
    shard: VocabShard = VocabShard(),
    buffers: list[torch.Tensor] | None = None,  # BUFFERS x [>= n, V_local] float32
    known_logits: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
) -> PairOutput:
    """Everything in the module docstring, for one chunk of rows. `known_logits`: either model's
    raw logits of these rows `[n, V_local]` if the caller projected them already (the lockstep
    decoder chooses its token from them): copied, not projected again."""
    n = hidden_a.shape[0]
    v_local, v_base = projection_a[0].shape[0], projection_b[0].shape[0]
    if buffers is None:
        buffers = [hidden_a.new_empty(n, v_local, dtype=torch.float32) for _ in range(BUFFERS)]
    la, lb, p, q, t1, t2 = (b[:n] for b in buffers)
    if known_logits[0] is not None:
        la.copy_(known_logits[0])
    else:
        Projection(*projection_a).logits(hidden_a, la)
    # The base's rows fill the first V_b columns (a strided view: BLAS writes it in place).
    if known_logits[1] is not None:
        lb[:, :v_base].copy_(known_logits[1])
    else:
        Projection(*projection_b).logits(hidden_b, lb[:, :v_base])
    if v_base < v_local:  # appended aligned tokens: probability 0 under the base
        lb[:, v_base:].fill_(float("-inf"))
        # exp(lp) > 0 for a finite lp, however float32 rounds it: KL(aligned || base) is +inf.
        appended_finite = la[:, v_base:].amax(-1) > float("-inf")  # [n]

    # On raw logits: the answer token, the counts, the top-k lists and the logits at them.
    target_a = logits_at(la, targets.unsqueeze(-1), shard)  # [n, 1]
    target_b = logits_at(lb, targets.unsqueeze(-1), shard)
    top_a_values, top_a_ids = gather_top(*_local_top(la, k, shard), k, shard)
    top_b_values, top_b_ids = gather_top(*_local_top(lb, k, shard), k, shard)
    a_at_b_top = logits_at(la, top_b_ids, shard)  # [n, k]
    b_at_a_top = logits_at(lb, top_a_ids, shard)
    # Counts as 0/1 floats in a scratch buffer (exact below 2^24 tokens per row).
    counts = torch.stack(
        [
            torch.gt(la, target_a, out=t1).sum(-1),
            torch.eq(la, target_a, out=t1).sum(-1),
            torch.gt(lb, target_b, out=t1).sum(-1),
            torch.eq(lb, target_b, out=t1).sum(-1),
            torch.gt(la, a_at_b_top[:, :1], out=t1).sum(-1),
        ],
        dim=-1,
    )  # [n, 5]
    counts = all_reduce(counts, dist.ReduceOp.SUM, shard).long()

    lse_a, _ = _normalise(la, p, shard)  # la: lp, p: exp(lp)
    lse_b, _ = _normalise(lb, q, shard)  # lb: lq, q: exp(lq)
    # A masked (-inf) logit is the only way to an infinite log-probability: one min per model
    # (isinf().any() costs 15 times as much).
    finite = bool(la.amin() > float("-inf")) and bool(lb.amin() > float("-inf"))
    sums = (_finite_sums if finite else _masked_sums)(la, lb, p, q, t1, t2)
    total = all_reduce(torch.stack(sums, dim=-1), dist.ReduceOp.SUM, shard)  # [n, 7]
    kl_ab, kl_ba, tv2, h_a, h_b, js_a, js_b = total.unbind(-1)
    if v_base < v_local:
        kl_ab = kl_ab.masked_fill(appended_finite, float("inf"))
    zero = torch.zeros((), device=total.device)
    lse_a1, lse_b1 = lse_a.unsqueeze(-1), lse_b.unsqueeze(-1)
    return PairOutput(
        aligned_top_ids=top_a_ids,
        aligned_top_logprobs=top_a_values - lse_a1,
        aligned_logprob=(target_a - lse_a1).squeeze(-1),
        aligned_rank=counts[:, 0] + 1,
        aligned_entropy=h_a.clamp_min(0),
        aligned_ties=counts[:, 1] - 1,
        aligned_logprobs_at_base_top=a_at_b_top - lse_a1,
        aligned_rank_of_base_top1=counts[:, 4] + 1,
        base_top_ids=top_b_ids,
        base_top_logprobs=top_b_values - lse_b1,
        base_logprob=(target_b - lse_b1).squeeze(-1),
        base_rank=counts[:, 2] + 1,
        base_entropy=h_b.clamp_min(0),
        base_ties=counts[:, 3] - 1,
        base_logprobs_at_aligned_top=b_at_a_top - lse_b1,
        # Each is >= 0 exactly; float rounding can leave -1e-9 where the distributions agree.
        kl_aligned_base=torch.maximum(kl_ab, zero),
        kl_base_aligned=torch.maximum(kl_ba, zero),
        js=(0.5 * (js_a + js_b)).clamp(0.0, float(np.log(2))),
        tv=(0.5 * tv2).clamp(0.0, 1.0),
    )


def _finite_sums(
    la: torch.Tensor,
    lb: torch.Tensor,
    p: torch.Tensor,
    q: torch.Tensor,
    t1: torch.Tensor,
    t2: torch.Tensor,
) -> list[torch.Tensor]:
    """The seven per-row sums when every log-probability is finite (no masked logit in the
    chunk, the usual case): no 0 x inf can arise, so no term needs guarding.
    `la`, `lb`: log-softmax; `p`, `q`: their exp; `t1`, `t2`: scratch."""

    def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # [n, V] x [n, V] -> [n]
        return torch.mul(a, b, out=t2).sum(-1)  # (measured faster than a batched BLAS dot)

    torch.sub(la, lb, out=t1)  # lp - lq
    sums = [dot(p, t1), -dot(q, t1)]  # KL(aligned || base), KL(base || aligned)
    sums.append(torch.sub(p, q, out=t2).abs_().sum(-1))  # 2 TV
    sums += [-dot(p, la), -dot(q, lb)]  # both entropies
    torch.add(p, q, out=t1).mul_(0.5).log_()  # log m
    sums.append(torch.sub(la, t1, out=t2).mul_(p).sum(-1))  # sum p (lp - log m)
    sums.append(torch.sub(lb, t1, out=t2).mul_(q).sum(-1))  # sum q (lq - log m)
    return sums


def _masked_sums(
    la: torch.Tensor,
    lb: torch.Tensor,
    p: torch.Tensor,
    q: torch.Tensor,
    t1: torch.Tensor,
    t2: torch.Tensor,
) -> list[torch.Tensor]:
    """The same sums where some logit is -inf: each term's 0 x inf (a zero probability times an
    infinite log ratio) is set to 0, an infinite ratio under a positive probability kept."""
    torch.sub(la, lb, out=t1)  # lp - lq
    sums = [
        _sum(torch.mul(p, t1, out=t2)),  # KL(aligned || base)
        -_sum(torch.mul(q, t1, out=t2)),  # KL(base || aligned)
        _sum(torch.sub(p, q, out=t2).abs_()),  # 2 TV
        -_sum(torch.mul(p, la, out=t2)),  # aligned entropy
        -_sum(torch.mul(q, lb, out=t2)),  # base entropy
    ]
    torch.add(p, q, out=t1).mul_(0.5).log_()  # log m
    sums.append(_sum(torch.sub(la, t1, out=t2).mul_(p)))  # sum p (lp - log m)
    sums.append(_sum(torch.sub(lb, t1, out=t2).mul_(q)))  # sum q (lq - log m)
    return sums


def _local_top(
    logits: torch.Tensor, k: int, shard: VocabShard
) -> tuple[torch.Tensor, torch.Tensor]:
    values, local = logits.topk(min(k, logits.shape[1]), dim=-1)
    return values, local + shard.start


def pair_positions(
    hidden_a: torch.Tensor,  # [N, H_a]
    hidden_b: torch.Tensor,  # [N, H_b]
    projection_a: Projection,  # `ModelRunner.projection()`, or (weight, bias, softcap)
    projection_b: Projection,
    targets: torch.Tensor,  # [N]
    k: int,
    chunk_bytes: int,
    shard: VocabShard = VocabShard(),
    known_logits: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),  # [N, V_local]
) -> PairOutput:
    """`pair_rows` over chunks of rows with reused buffers; every rank takes the same chunks.

    Rows per chunk: what the one-model head takes for `chunk_bytes`, scaled so that the six
    buffers hold what two one-model heads' buffers hold (both models' chunks). Fewer rows would
    cost more than they save: the projection's GEMM is 25% slower per row at a third of the rows
    (SmolLM2 on CPU)."""
    v_local = projection_a[0].shape[0]
    rows = max(1, shard.chunk_rows(v_local, chunk_bytes) * 4 // BUFFERS)
    m = min(rows, hidden_a.shape[0])
    buffers = [
        torch.empty(m, v_local, dtype=torch.float32, device=hidden_a.device) for _ in range(BUFFERS)
    ]
    return PairOutput.cat(
        [
            pair_rows(
                hidden_a[i : i + rows],
                hidden_b[i : i + rows],
                projection_a,
                projection_b,
                targets[i : i + rows],
                k,
                shard,
                buffers,
                tuple(None if t is None else t[i : i + rows] for t in known_logits),  # type: ignore[arg-type]
            )
            for i in range(0, hidden_a.shape[0], rows)
        ]
    )
