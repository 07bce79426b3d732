"""What a large work unit costs in host memory while scoring: peak RSS of `score` by unit size.

Runs the real scoring job (`python -m tdsdist.score`, the tiny random pair of the tests, CPU,
one thread) on the same `--examples` answers (the demo records repeated under new ids, answers
cut at `--max-output-tokens`) with each `--unit-sizes` value, each in a fresh process, and
reports the peak resident set size. The accelerator's memory is bounded by the batch
(`--max-tokens-per-batch`) and the head's chunk whatever the unit; on the host a unit's rows are
held once, at its final size, until its shards are written (about 570 B per position at k=20,
uncompressed), so the peak grows with the unit by that and the writer's buffers, no more. Prints
markdown: the peak, its growth over the smallest unit, and that growth per position of the
largest unit.

    python -m tools.bench.unit_memory
    python -m tools.bench.unit_memory --examples 1024 --unit-sizes 16 256 1024
"""

from __future__ import annotations

import itertools
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tools.common import arg_parser

CHILD = """
import json, resource, runpy, sys
if sys.argv[1]:
    sys.path.insert(0, sys.argv[1])  # before the working directory: that package, not this one
sys.argv = ["tdsdist.score", *sys.argv[2:]]
try:
    runpy.run_module("tdsdist.score", run_name="__main__")
except SystemExit as e:
    assert not e.code, e.code
print(json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--examples", type=int, default=1024)
    parser.add_argument("--max-output-tokens", type=int, default=120)
    parser.add_argument("--unit-sizes", type=int, nargs="+", default=[16, 256, 1024])
    parser.add_argument("--max-tokens-per-batch", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--before",
        type=Path,
        default=None,
        help="Folder holding an earlier tdsdist package (`git archive 4256e60 tdsdist | tar -x"
        " -C DIR`: format 3): the same runs with it, alternating.",
    )
    args = parser.parse_args()
    from tdsdist_testkit import save_tiny_pair

    from tdsdist.jobs.demo import demo_data_path
    from tdsdist.store import Store

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        aligned, base = save_tiny_pair(root / "models", vocab_size=301, seed=0)
        records = json.loads(demo_data_path().read_text())
        data = [dict(records[i % len(records)], id=str(i)) for i in range(args.examples)]
        (root / "data.json").write_text(json.dumps(data))
        peaks: dict[tuple[str, int], list[float]] = {}
        positions = 0
        rows: dict[int, int] = {}
        formats: dict[str, int] = {}
        codes = {"this code": ""} | ({"before": str(args.before)} if args.before else {})
        for _, (code, source), unit in itertools.product(
            range(args.repeats), codes.items(), args.unit_sizes
        ):
            store = root / f"u{unit}.zarr"
            cmd = [
                sys.executable,
                "-c",
                CHILD,
                source,
                "--aligned",
                str(aligned),
                "--base",
                str(base),
                "--data",
                str(root / "data.json"),
                "--store",
                str(store),
                "--device",
                "cpu",
                "--unit-size",
                str(unit),
                "--max-output-tokens",
                str(args.max_output_tokens),
                "--max-tokens-per-batch",
                str(args.max_tokens_per_batch),
                "--overwrite",
            ]
            done = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
            )
            if done.returncode != 0:
                sys.exit(done.stderr[-3000:])
            peaks.setdefault((code, unit), []).append(
                json.loads(done.stdout.splitlines()[-1])["peak_mib"]
            )
            s = Store(store, mode="r")
            positions = int(s.meta["positions"])
            rows[unit] = max(u.positions for u in s.units())
            formats[code] = s.format_version
    smallest = min(args.unit_sizes)
    print(
        f"{args.examples} answers, {positions:,} positions, tiny pair, CPU, {args.repeats} repeats (medians)\n"
    )
    print(
        "| code (store format) | unit size | largest unit (positions) | peak RSS MiB | over the smallest unit MiB | bytes per position of the largest unit |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for code in codes:
        base_peak = statistics.median(peaks[(code, smallest)])
        for unit in args.unit_sizes:
            peak = statistics.median(peaks[(code, unit)])
            over = peak - base_peak
            print(
                f"| {code} ({formats[code]}) | {unit} | {rows[unit]:,} | {peak:.0f} | {over:.0f} | {over * 2**20 / rows[unit]:.0f} |"
            )


if __name__ == "__main__":
    main()
