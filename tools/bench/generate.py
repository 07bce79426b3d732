"""Generate-and-record against generate-then-score (SmolLM2-135M-Instruct as aligned and base).

(a) `generate --store` records the answers (their ids); `score` then completes it (pair head).
(b) `generate` without a store; `score` then scores the answers file into a new store.
Seconds of generation and of scoring (model loading excluded), medians over interleaved repeats.

    python -m tools.bench.generate --examples 4 --max-new-tokens 48 --repeats 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from tdsdist.config import GenerateConfig, ScoreConfig
from tdsdist.engine.smollm2 import prepare_smollm2
from tdsdist.jobs.demo import demo_data_path
from tdsdist.jobs.generate import run_generate
from tdsdist.jobs.score import run_score
from tools.common import arg_parser


def once(record: bool, tmp: Path, args: argparse.Namespace, model: str) -> tuple[float, float]:
    out, store = tmp / f"answers-{record}.json", tmp / f"store-{record}.zarr"
    gen = GenerateConfig(
        aligned=model,
        data=str(demo_data_path()),
        out=str(out),
        limit=args.examples,
        max_new_tokens=args.max_new_tokens,
        store=str(store) if record else None,
        device="cpu",
        overwrite=True,
    )
    generate_seconds = run_generate(gen, log=lambda m: None)["generate_seconds"]  # loading excluded
    score = ScoreConfig(
        aligned=model,
        base=model,
        data=str(out),
        store=str(store),
        aligned_template="chat",
        device="cpu",
        overwrite=not record,
    )
    timing = run_score(score, log=lambda m: None)
    return generate_seconds, timing["score_seconds"]


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--examples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = str(prepare_smollm2())
    results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        once(False, Path(tmp), args, model)  # warm-up, discarded: first-call costs hit neither path
        for r in range(args.repeats):
            for record in (True, False) if r % 2 == 0 else (False, True):
                results[record].append(once(record, Path(tmp), args, model))
    print(
        f"{args.examples} prompts, up to {args.max_new_tokens} new tokens, {args.repeats} repeats\n"
    )
    print("| path | generate s | score s | total s |")
    print("|---|---:|---:|---:|")
    totals = {}
    for record, label in (
        (True, "generate --store, then base-only score"),
        (False, "generate, then full score"),
    ):
        g = statistics.median(x[0] for x in results[record])
        s = statistics.median(x[1] for x in results[record])
        totals[record] = g + s
        print(f"| {label} | {g:.2f} | {s:.2f} | {g + s:.2f} |")
    print(f"\ngenerate-and-record saves {1 - totals[True] / totals[False]:.0%} of the total")


if __name__ == "__main__":
    main()
