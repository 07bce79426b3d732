"""Export throughput: rows per second of `tdsdist export` (`analysis.export.export_parquet`).

Builds (once, reused if present) the synthetic store of `tools.bench.analyze` (format 3: the
published metrics stored per position, as `score` writes them), then exports it to Parquet in a
fresh process per repeat, and reports the median wall time, rows per second, peak RSS and the
file's size per row.

    python -m tools.bench.export --positions 2000000 --repeats 3
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from tdsdist.store import FORMAT_VERSION, Store
from tools.bench.analyze import build
from tools.common import arg_parser, child_json

CHILD = """
import json, os, resource, sys, time
from tdsdist.analysis.export import export_parquet
from tdsdist.store import Store
start = time.perf_counter()
result = export_parquet(Store(sys.argv[1], mode="r"), sys.argv[2])
wall = time.perf_counter() - start
print(json.dumps({"rows": result["rows"], "wall": wall, "bytes": os.path.getsize(sys.argv[2]),
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--positions", type=int, default=2_000_000)
    parser.add_argument("--store", type=Path, default=Path("/tmp/tdsdist-bench-export.zarr"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/tdsdist-bench-export.parquet"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not args.store.exists() or Store(args.store, mode="r").format_version != FORMAT_VERSION:
        start = time.perf_counter()
        build(args.store, args.positions, mean_length=300, vocab=2000, seed=0)
        print(f"built {args.store} in {time.perf_counter() - start:.1f} s")
    runs = []
    for _ in range(args.repeats):
        cmd = [sys.executable, "-c", CHILD, str(args.store), str(args.out)]
        runs.append(child_json(cmd))
    rows = runs[0]["rows"]
    wall = statistics.median(r["wall"] for r in runs)
    print("| rows | repeats | median wall s | rows / s | peak RSS (MiB) | file bytes per row |")
    print("|---:|---:|---:|---:|---:|---:|")
    peak = max(r["peak_mib"] for r in runs)
    print(
        f"| {rows:,} | {len(runs)} | {wall:.2f} | {rows / wall:,.0f} | {peak:.0f} | {runs[0]['bytes'] / rows:.1f} |"
    )


if __name__ == "__main__":
    main()
