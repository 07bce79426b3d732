"""One-GPU check (the `device` machine): scoring throughput, bare-forward throughput, MFU.

Builds a random-weight model with the Llama-2-7B configuration in bf16 directly on the GPU (no
download), makes batches of just-eval-like sequences (context 64 + answer 320 tokens by default),
and reports, side by side in one run:
- tdsdist's scoring throughput (`Scorer.score`: body forward + chunked scoring head, k=20);
- a bare teacher-forced forward on the same batches (`tools.common.bare_forward`: the model's
  body, then the output projection of the answer positions only, no statistics);
- model FLOP utilisation of both against a bf16 matrix-multiply peak measured here
  (FLOPs per token: 2 x parameters + 4 x layers x hidden x context length for attention).

Needs torch and transformers only (no deepspeed). Under 8 minutes on an H100; from the repository
root:

    python -m tools.gpu.check --out docs/gpu/gpu_check.json
    python -m tools.gpu.check --pair --out docs/gpu/gpu_check_pair.json   # the pair head
    python -m tools.gpu.check --tiny --device cpu      # a smoke run of the same code on CPU

With `--pair`, tdsdist's side is `PairScorer.score` (both bodies and the pair head: both models'
statistics and the exact divergences; the one random model serves as both) and the bare side is
two bare forwards on the same batches; MFU counts both models' work.
"""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path

import torch

from tdsdist.engine.scorer import AnswerPair, ContextAnswer, PairScorer, Scorer
from tools.common import arg_parser, bare_forward, print_report, random_llama, sync


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 20) -> float:
    """Measured dense bf16 matmul FLOP/s (the MFU denominator)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="small model: a CPU smoke run")
    parser.add_argument("--sequences", type=int, default=64)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--answer", type=int, default=320)
    parser.add_argument("--max-tokens-per-batch", type=int, default=16384)
    parser.add_argument("--logits-chunk-mib", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pair", action="store_true", help="the pair head vs two bare forwards")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16
    start = time.perf_counter()
    model = random_llama("tiny" if args.tiny else "llama2-7b", 32000, dtype, device)
    config = model.config
    build_seconds = time.perf_counter() - start
    gen = torch.Generator().manual_seed(0)
    seqs = [
        ContextAnswer(
            torch.randint(3, config.vocab_size, (args.context,), generator=gen).tolist(),
            torch.randint(3, config.vocab_size, (args.answer,), generator=gen).tolist(),
        )
        for _ in range(args.sequences)
    ]
    scorer = Scorer.for_model(
        model, config.vocab_size, 20, args.logits_chunk_mib << 20, args.max_tokens_per_batch, device
    )
    runner, budget = scorer.runner, args.max_tokens_per_batch
    models = 2 if args.pair else 1
    if args.pair:
        pair = PairScorer(runner, runner, 20, args.logits_chunk_mib << 20, budget)
        answers = [AnswerPair(s.context, s.context, s.answer) for s in seqs]
        variants = {"tdsdist": lambda n: pair.score(answers[:n])}
    else:
        variants = {"tdsdist": lambda n: scorer.score(seqs[:n])}
    variants["bare"] = lambda n: [bare_forward(runner, seqs[:n], budget) for _ in range(models)]
    for run in variants.values():  # warm-up (kernels, allocator)
        run(4)
    times: dict[str, list[float]] = {"tdsdist": [], "bare": []}
    for r in range(args.repeats):
        for name in ("tdsdist", "bare") if r % 2 == 0 else ("bare", "tdsdist"):
            sync(device)
            t0 = time.perf_counter()
            variants[name](len(seqs))
            sync(device)
            times[name].append(time.perf_counter() - t0)
    peak = matmul_peak(device, dtype, 256 if args.tiny else 8192)
    # Body matmul parameters: all but the embedding lookup and the LM head (counted apart, for
    # the answer positions only, as that is all either path projects).
    body_params = (
        sum(p.numel() for p in model.parameters()) - 2 * config.vocab_size * config.hidden_size
    )
    fed_tokens = sum(len(s.context) + len(s.answer) - 1 for s in seqs)
    positions = sum(len(s.answer) for s in seqs)
    length = args.context + args.answer
    attention = (
        4 * config.num_hidden_layers * config.hidden_size * length / 2
    )  # causal: mean context L/2
    flops_per_token = 2 * body_params + attention
    head_flops = 2 * config.vocab_size * config.hidden_size * positions
    work = models * (flops_per_token * fed_tokens + head_flops)
    report = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor(),
        "torch": torch.__version__,
        "model": "Llama-2-7B config, random weights, bf16" if not args.tiny else "tiny Llama, bf16",
        "pair": args.pair,
        "build_seconds": build_seconds,
        "sequences": args.sequences,
        "tokens_per_sequence": length,
        "answer_positions": positions,
        "matmul_peak_tflops": peak / 1e12,
    }
    for name, ts in times.items():
        med = statistics.median(ts)
        report[name] = {
            "median_seconds": med,
            "positions_per_second": positions / med,
            "tokens_per_second": fed_tokens / med,
            "mfu": work / med / peak,
        }
    report["tdsdist_over_bare"] = (
        report["tdsdist"]["positions_per_second"] / report["bare"]["positions_per_second"]
    )
    if device.type == "cuda":
        report["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    print_report(report, args.out)


if __name__ == "__main__":
    main()
