"""Pair scoring (both models, exact divergences) against the two bare forwards on the same batches.

SmolLM2-135M-Instruct as the demo's context-shift pair (chat template vs `plain`), the first N
just-eval answers, whole. Interleaved rounds of:

    (a) pair    `PairScorer.score`: both bodies, the pair head (both models' statistics, exact
                KL both ways, JS, TV, ties)
    (b) bare    on the same batches: each body plus the projection of the answer rows, nothing else
    (c) 0.1.0   two `Scorer` passes, the base at the aligned top-k (top-k KL only), as tdsdist 0.1.0

Prints medians (ms per answer position) and the throughput ratios (b)/(a) and (c)/(a).

    python -m tools.bench.pair --examples 8 --repeats 3 [--out pair.json]
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from tools.common import add_data_argument, arg_parser, just_eval_data, print_report


def main(argv=None) -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--examples", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens-per-batch", type=int, default=8192)
    parser.add_argument("--out", type=Path, default=None)
    add_data_argument(parser)
    args = parser.parse_args(argv)

    import torch

    from tdsdist.engine.models import load_model
    from tdsdist.engine.runner import ModelRunner
    from tdsdist.engine.scorer import (
        AnswerPair,
        PairScorer,
        Scorer,
        answer_hidden_states,
        token_budget_batches,
    )
    from tdsdist.engine.smollm2 import prepare_smollm2
    from tdsdist.inputs.data import load_examples
    from tdsdist.inputs.plan import tokenize_context
    from tdsdist.inputs.templates import PLAIN_TEMPLATE, aligned_context_fn
    from tdsdist.inputs.tokenizer import load_tokenizer

    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    folder = str(prepare_smollm2())
    tok = load_tokenizer(folder)
    chat = aligned_context_fn("chat", tok)
    answers = [
        AnswerPair(
            tokenize_context(tok, chat(ex), False),
            tokenize_context(tok, PLAIN_TEMPLATE.format(q=ex.instruction), True),
            tok(ex.answer, add_special_tokens=False)["input_ids"],
        )
        for ex in load_examples(just_eval_data(args.data), limit=args.examples)
    ]
    positions = sum(len(a.answer) for a in answers)
    runners = [ModelRunner(load_model(folder, "float32", cpu), len(tok), cpu) for _ in range(2)]
    budget, chunk = args.max_tokens_per_batch, 64 << 20
    pair = PairScorer(*runners, 20, chunk, budget)
    scorers = [Scorer(r, 20, chunk, budget) for r in runners]
    fed = [len(a.answer) - 1 + max(len(a.aligned_context), len(a.base_context)) for a in answers]
    batches = token_budget_batches(fed, budget)

    def run_pair() -> None:
        pair.score(answers)

    def run_bare() -> None:
        with torch.inference_mode():
            for batch in batches:
                for name, runner in zip(("aligned", "base"), runners):
                    hidden = answer_hidden_states(runner, [answers[i].under(name) for i in batch])
                    runner.logits(hidden)

    def run_010() -> None:
        a = scorers[0].score([x.under("aligned") for x in answers])
        splits, start = [], 0
        for x in answers:
            splits.append(a["top_ids"][start : start + len(x.answer)])
            start += len(x.answer)
        scorers[1].score([x.under("base") for x in answers], splits)

    variants = {"pair": run_pair, "bare": run_bare, "0.1.0": run_010}
    run_bare()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(1e3 * (time.perf_counter() - start) / positions)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"{args.examples} whole answers, {positions} positions, {len(batches)} batches, {args.repeats} rounds, {args.threads} threads"
    )
    print("| variant | ms / position (median) | rounds |")
    print("|---|---:|---|")
    for k, v in times.items():
        print(f"| {k} | {med[k]:.2f} | {', '.join(f'{x:.2f}' for x in v)} |")
    print(f"pair throughput / two bare forwards = {med['bare'] / med['pair']:.3f}")
    print(f"pair throughput / 0.1.0's two passes = {med['0.1.0'] / med['pair']:.3f}")
    report = {"examples": args.examples, "positions": positions, "ms_per_position": times}
    report["ratios"] = {
        "bare_over_pair": med["bare"] / med["pair"],
        "v010_over_pair": med["0.1.0"] / med["pair"],
    }
    print_report(report, args.out)


if __name__ == "__main__":
    main()
