"""What storing AlignTDS's metrics costs the scoring job: CPU microseconds per position of
`topk_metrics.stored_arrays`, which `score` runs on each unit's arrays (store format 3) before
writing them, against the job's own time per position (its `timing` in a store, when given).

    python -m tools.bench.published_cost --positions 200000 --repeats 5 [--store demo.zarr]
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from tdsdist.store import Store
from tdsdist.topk_metrics import stored_arrays
from tools.bench.analyze import top_k_arrays
from tools.common import arg_parser


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--positions", type=int, default=200_000)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--store", type=Path, default=None, help="A scored store: its time per position."
    )
    args = parser.parse_args()
    arrays = top_k_arrays(np.random.default_rng(0), args.positions, args.top_k, 32_000)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        stored_arrays(arrays)
        times.append(time.perf_counter() - start)
    per = statistics.median(times) / args.positions * 1e6
    print(
        f"stored_arrays: {per:.2f} us per position (k={args.top_k}, {args.positions:,} positions, median of {args.repeats})"
    )
    if args.store is not None:
        store = Store(args.store, mode="r")
        timing = store.root.attrs.get("timing", {})
        seconds = timing.get("score_seconds") or timing.get("seconds")
        if seconds:
            job = seconds / store.meta["positions"] * 1e6
            print(
                f"the store's scoring: {job:.1f} us per position; the metrics add {per / job:.2%}"
            )
        else:
            print(f"{args.store}: no scoring time recorded ({sorted(timing)})")


if __name__ == "__main__":
    main()
