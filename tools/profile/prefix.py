"""Where a cached-prefix batch spends its time, next to the same batch without the prefix.

Random-weight model (a shape of `tools.common.SHAPES`), random token ids: one batch of `--batch`
sequences of `--suffix` tokens, scored (a) alone and (b) after a cached prefix of `--prefix`
tokens, each under `torch.profiler`; prints the operators (and on CUDA the kernels) that take the
most time in each. The difference between the two tables is what the prefix costs.

    python -m tools.profile.prefix --device cuda --shape llama2-7b --batch 10
    python -m tools.profile.prefix --shape tiny --batch 4 --prefix 300 --suffix 60   # CPU smoke
"""

from __future__ import annotations

import time

import torch
from torch.profiler import ProfilerActivity, profile

from tdsdist.engine.scorer import ContextAnswer, Scorer
from tools.common import SHAPES, arg_parser, random_llama, sync


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--prefix", type=int, default=1203)
    parser.add_argument("--suffix", type=int, default=360)
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    vocab = 49152
    model = random_llama(args.shape, vocab, dtype, device)
    gen = torch.Generator().manual_seed(0)
    prefix = torch.randint(3, vocab, (args.prefix,), generator=gen).tolist()

    def batch(with_prefix: bool) -> list[ContextAnswer]:
        out = []
        for i in range(args.batch):
            n = args.suffix - 3 * i  # slightly ragged, as real batches are
            ctx = torch.randint(3, vocab, (30,), generator=gen).tolist()
            ans = torch.randint(3, vocab, (n - 30,), generator=gen).tolist()
            out.append(ContextAnswer((prefix if with_prefix else []) + ctx, ans))
        return out

    big = 1 << 30  # one batch, whatever its size
    plain = Scorer.for_model(model, vocab, 20, 512 << 20, big, device)
    cached = Scorer.for_model(model, vocab, 20, 512 << 20, big, device)
    cached.runner.set_prefix(prefix)
    cases = {"plain": (plain, batch(False)), "cached prefix": (cached, batch(True))}
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for name, (scorer, seqs) in cases.items():
        scorer.score(seqs)  # warm-up (and the prefix's own forward)
        sync(device)
        walls = []
        for _ in range(3):
            start = time.perf_counter()
            scorer.score(seqs)
            sync(device)
            walls.append(time.perf_counter() - start)
        with profile(activities=activities) as prof:
            scorer.score(seqs)
            sync(device)
        print(f"\n=== {name}: {args.batch} sequences, wall {sorted(walls)[1]:.4f} s (median of 3)")
        print(
            prof.key_averages().table(sort_by=sort, row_limit=args.rows, max_name_column_width=70)
        )


if __name__ == "__main__":
    main()
