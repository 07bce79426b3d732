"""Bytes each rank puts into the collectives per scored position at tp=2, counted at the calls.

Two gloo processes hold the two halves of a vocabulary (default 32000, Llama-2's) of random
projections; `torch.distributed.all_reduce` and `all_gather` are wrapped to add up the bytes of
the tensor each rank contributes. Measured for the pair head (`pair_head.pair_positions`: both
models, exact divergences) and for 0.1.0's two one-model passes (`head.score_positions`, the base
at the aligned top-k), on the same rows. AutoTP's own LM head would all-reduce `V` logits per
position instead (`V x 4` bytes: 128 KB at Llama-2's vocabulary).

    python -m tools.bench.tp_traffic [--vocab 32000 --positions 256 --top-k 20]
"""

from __future__ import annotations

import tempfile

from tools.common import arg_parser


def _rank(rank: int, init: str, args, results) -> None:
    import torch
    import torch.distributed as dist

    from tdsdist.engine.head import VocabShard, score_positions, vocab_slice
    from tdsdist.engine.pair_head import pair_positions

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    torch.set_num_threads(1)
    sent = {"bytes": 0}
    real_all_reduce, real_all_gather = dist.all_reduce, dist.all_gather

    def all_reduce(t, *a, **k):
        sent["bytes"] += t.numel() * t.element_size()
        return real_all_reduce(t, *a, **k)

    def all_gather(out, t, *a, **k):
        sent["bytes"] += t.numel() * t.element_size()
        return real_all_gather(out, t, *a, **k)

    dist.all_reduce, dist.all_gather = all_reduce, all_gather
    gen = torch.Generator().manual_seed(0)
    n, v, h, k = args.positions, args.vocab, 64, args.top_k
    hidden = [torch.randn(n, h, generator=gen) for _ in range(2)]
    weights = [torch.randn(v, h, generator=gen) / h**0.5 for _ in range(2)]
    targets = torch.randint(0, v, (n,), generator=gen)
    start, end = vocab_slice(v, rank, 2)
    shard = VocabShard(start, dist.group.WORLD, v)
    w = [x[start:end] for x in weights]
    pair_positions(*hidden, (w[0], None, None), (w[1], None, None), targets, k, 64 << 20, shard)
    pair_bytes, sent["bytes"] = sent["bytes"], 0
    aligned = score_positions(hidden[0], w[0], None, targets, k, 64 << 20, shard=shard)
    score_positions(hidden[1], w[1], None, targets, k, 64 << 20, aligned.top_ids, shard)
    if rank == 0:
        results.update(pair=pair_bytes / n, two_passes=sent["bytes"] / n)
    dist.destroy_process_group()


def main(argv=None) -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--positions", type=int, default=256)
    parser.add_argument("--top-k", type=int, default=20)
    args = parser.parse_args(argv)

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp, mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_rank, args=(f"file://{tmp}/rdzv", args, results), nprocs=2)
        got = dict(results)
    print(
        f"tp=2, vocabulary {args.vocab}, k={args.top_k}, {args.positions} positions; bytes each rank contributes per position"
    )
    print("| head | bytes / position / rank |")
    print("|---|---:|")
    print(f"| pair head (both models, exact divergences) | {got['pair']:.0f} |")
    print(f"| 0.1.0: aligned pass + base pass at the aligned top-k | {got['two_passes']:.0f} |")
    print(f"| AutoTP's LM head (all-reduce of the logits), one model | {args.vocab * 4} |")


if __name__ == "__main__":
    main()
