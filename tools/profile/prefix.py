"""Where a cached-prefix batch spends its time, next to the same batch without the prefix.

Random-weight model (shapes as in `bench_prefix.py`), random token ids: one batch of `--batch`
sequences of `--suffix` tokens, scored (a) alone and (b) after a cached prefix of `--prefix`
tokens, each under `torch.profiler`; prints the operators (and on CUDA the kernels) that take the
most time in each. The difference between the two tables is what the prefix costs.

    python tools/profile_prefix.py --device cuda --shape llama2-7b --batch 10
    python tools/profile_prefix.py --shape tiny --batch 4 --prefix 300 --suffix 60   # CPU smoke
"""

from __future__ import annotations

import argparse
import time

import torch
from bench_prefix import RANDOM_SHAPES as SHAPES  # tools/ is on the path when run as a script
from torch.profiler import ProfilerActivity, profile
from transformers import LlamaConfig, LlamaForCausalLM

from tdsdist.engine.scorer import ContextAnswer, Scorer


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(
            LlamaConfig(vocab_size=vocab, max_position_embeddings=4096, **SHAPES[args.shape])
        )
    model = model.to(dtype).eval()
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
    plain = Scorer(model, vocab, 20, 512 << 20, big, device)
    cached = Scorer(model, vocab, 20, 512 << 20, big, device)
    cached.set_prefix(prefix)
    cases = {"plain": (plain, batch(False)), "cached prefix": (cached, batch(True))}
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for name, (scorer, seqs) in cases.items():
        scorer.score(seqs)  # warm-up (and the prefix's own forward)
        if device.type == "cuda":
            torch.cuda.synchronize()
        walls = []
        for _ in range(3):
            start = time.perf_counter()
            scorer.score(seqs)
            if device.type == "cuda":
                torch.cuda.synchronize()
            walls.append(time.perf_counter() - start)
        with profile(activities=activities) as prof:
            scorer.score(seqs)
            if device.type == "cuda":
                torch.cuda.synchronize()
        print(f"\n=== {name}: {args.batch} sequences, wall {sorted(walls)[1]:.4f} s (median of 3)")
        print(
            prof.key_averages().table(sort_by=sort, row_limit=args.rows, max_name_column_width=70)
        )


if __name__ == "__main__":
    main()
