"""Nudged decoding (`tdsdist nudge`) against aligned-only `generate --store`, tokens per second.

Both record while decoding: `generate --store` the aligned model's statistics (one model, one
head), `nudge` the pair head's (two bodies, both heads, the exact divergences, and the rule) into
a complete store. Seconds are the jobs' own (`generate_seconds`, `nudge_seconds`: decoding,
saving the parts and assembling the answers file and the store; model loading excluded); tokens
are the answer tokens written. Medians over interleaved repeats after one discarded warm-up of
each, side by side in one run. Goal (issue 22): nudge at least 0.45x of generate (two forwards
per token). Models: `tiny` (the tests' random-weight pair, 301 tokens) and `smollm2`
(SmolLM2-135M-Instruct as both models, `tdsdist demo`'s pair: chat template against `plain`).

    python -m tools.bench.nudge --models tiny smollm2 --examples 8 --max-new-tokens 32 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from tdsdist.config import GenerateConfig, NudgeConfig
from tdsdist.jobs.generate import run_generate
from tdsdist.jobs.nudge import run_nudge
from tdsdist.store import Store
from tools.common import JUST_EVAL_FIRST20, arg_parser


def _pair(name: str, tmp: Path) -> tuple[str, str]:
    if name == "tiny":
        from tdsdist_testkit import save_tiny_pair

        aligned, base = save_tiny_pair(tmp / "tiny", vocab_size=301, seed=0)
        return str(aligned), str(base)
    from tdsdist.engine.smollm2 import prepare_smollm2

    model = str(prepare_smollm2())
    return model, model


def once(
    kind: str, pair: tuple[str, str], tmp: Path, args: argparse.Namespace
) -> tuple[float, int, float]:
    """(seconds, answer tokens, nudged fraction) of one run."""
    out, store = tmp / f"{kind}.json", tmp / f"{kind}.zarr"
    common = dict(
        data=str(JUST_EVAL_FIRST20),
        out=str(out),
        store=str(store),
        limit=args.examples,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.examples,
        device="cpu",
        overwrite=True,
        aligned_template="chat",
    )
    if kind == "generate":
        result = run_generate(GenerateConfig(aligned=pair[0], **common), log=lambda m: None)
        return result["generate_seconds"], int(Store(store, mode="r").lengths.sum()), 1.0
    cfg = NudgeConfig(aligned=pair[0], base=pair[1], nudge_threshold=args.threshold, **common)
    result = run_nudge(cfg, log=lambda m: None)
    return result["nudge_seconds"], result["tokens"], result["nudged_fraction"]


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--models", nargs="+", choices=("tiny", "smollm2"), default=["tiny"])
    parser.add_argument("--examples", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threshold", type=float, default=0.4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"{args.examples} prompts (one batch), up to {args.max_new_tokens} new tokens, greedy,"
        f" nudge threshold {args.threshold}, {args.repeats} repeats, {args.threads} torch"
        " thread(s), CPU\n"
    )
    print("| model | generate tok/s | nudge tok/s | nudge / generate | nudged fraction |")
    print("|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        for name in args.models:
            pair = _pair(name, tmp)
            runs: dict[str, list[tuple[float, int, float]]] = {"generate": [], "nudge": []}
            for kind in runs:  # warm-up, discarded
                once(kind, pair, tmp, args)
            for r in range(args.repeats):
                for kind in ("generate", "nudge") if r % 2 == 0 else ("nudge", "generate"):
                    runs[kind].append(once(kind, pair, tmp, args))
            rate = {k: statistics.median(t / s for s, t, _ in v) for k, v in runs.items()}
            fraction = statistics.median(f for _, _, f in runs["nudge"])
            print(
                f"| {name} | {rate['generate']:.1f} | {rate['nudge']:.1f} |"
                f" {rate['nudge'] / rate['generate']:.2f}x | {fraction:.1%} |"
            )


if __name__ == "__main__":
    main()
