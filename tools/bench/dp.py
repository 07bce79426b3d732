"""Data-parallel scaling: `launch/torchrun.sh` with dp=1 against dp=2, one torch thread per rank.

Each run scores the same examples into a fresh store (SmolLM2-135M-Instruct as both models, chat
vs plain contexts, like the demo) and reports the job's own `score_seconds` (model loading
excluded) and positions per second. Runs alternate dp=1 / dp=2 so machine noise hits both.

    python -m tools.bench.dp --examples 16 --max-output-tokens 64 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tdsdist.engine.smollm2 import prepare_smollm2
from tdsdist.jobs.demo import demo_data_path
from tools.common import ROOT, arg_parser


def run(nproc: int, store: Path, args: argparse.Namespace, model: str) -> dict:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "NPROC": str(nproc)}
    cmd = [
        "bash",
        str(ROOT / "launch" / "torchrun.sh"),
        "--aligned",
        model,
        "--base",
        model,
        "--data",
        str(demo_data_path()),
        "--store",
        str(store),
        "--aligned-template",
        "chat",
        "--limit",
        str(args.examples),
        "--max-output-tokens",
        str(args.max_output_tokens),
        "--unit-size",
        str(args.unit_size),
        "--device",
        "cpu",
        "--overwrite",
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["timing"]


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--max-output-tokens", type=int, default=64)
    parser.add_argument("--unit-size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model = str(prepare_smollm2())
    results: dict[int, list[dict]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for nproc in (1, 2) if r % 2 == 0 else (2, 1):
                results[nproc].append(run(nproc, Path(tmp) / f"dp{nproc}.zarr", args, model))
    positions = results[1][0]["positions"]
    print(
        f"{args.examples} examples, {positions} answer positions, both models, {args.repeats} repeats\n"
    )
    print("| ranks (dp) | median score_seconds | positions / s | speed-up |")
    print("|---:|---:|---:|---:|")
    base = statistics.median(t["score_seconds"] for t in results[1])
    for nproc, timings in results.items():
        med = statistics.median(t["score_seconds"] for t in timings)
        print(f"| {nproc} | {med:.2f} | {positions / med:,.0f} | {base / med:.2f}x |")


if __name__ == "__main__":
    main()
