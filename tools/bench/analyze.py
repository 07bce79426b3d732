"""Analysis throughput on a synthetic store: positions per second of `summarize`.

Builds (once, reused if present) a store of `--positions` answer positions with realistic
distributions (base ranks mostly 1, a heavy tail; KL mostly small), writing only the arrays the
analysis reads, then times `tdsdist.analysis.summary.summarize` over it, each repeat in a fresh process. With
`--before DIR` (an earlier commit's package) both codes run on the same store, alternately.
The store is of today's format (4: a shard per array and unit, AlignTDS's metrics stored per
position, as `score` stores them); `--format2` also builds the same data in format 2 (the metrics then computed from the
top-k tables, as for stores of earlier releases) and times today's code on it in the same rounds.

    python -m tools.bench.analyze --positions 10000000 --repeats 3
    git archive 11192af tdsdist | tar -x -C /tmp/tdsdist-before
    python -m tools.bench.analyze --positions 10000000 --repeats 3 --before /tmp/tdsdist-before --format2
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
from tdsdist_testkit import default_corpus, train_tiny_tokenizer

from tdsdist.analysis.published import stored_arrays
from tdsdist.store import FORMAT_VERSION, Store, create
from tools.common import arg_parser, child_json


def top_k_arrays(rng: np.random.Generator, n: int, k: int, vocab: int) -> dict[str, np.ndarray]:
    """Both models' top-k lists, mostly shared as real pairs' are: the base list is the aligned
    one with its first two swapped at a fifth of the positions and about 30% of its ids replaced
    (ids unique within a row: a stride of 97 over a vocabulary of 2,000)."""
    start = rng.integers(0, vocab, n)[:, None]
    aligned = ((start + 97 * np.arange(k)) % vocab).astype(np.int32)  # [n, k]
    base = np.where(rng.random((n, k)) < 0.3, (aligned + vocab // 2) % vocab, aligned)
    swap = rng.random(n) < 0.2
    base[swap, :2] = base[swap, 1::-1]
    logprobs = {}
    for model in ("aligned", "base"):
        steps = rng.exponential(0.6, (n, k)) + 1e-3
        logprobs[model] = (-np.cumsum(steps, axis=1)).astype(np.float32)
    return {
        "aligned/top_ids": aligned,
        "base/top_ids": base.astype(np.int32),
        "aligned/top_logprobs": logprobs["aligned"],
        "base/top_logprobs": logprobs["base"],
    }


def build(
    path: Path,
    positions: int,
    mean_length: int,
    vocab: int,
    seed: int,
    format_version: int = FORMAT_VERSION,
) -> None:
    rng = np.random.default_rng(seed)
    n_examples = positions // mean_length
    lengths = np.full(n_examples, mean_length, dtype=np.int32)
    lengths[: positions - lengths.sum()] += 1
    tokenizer = train_tiny_tokenizer(default_corpus(), vocab)
    k = 20
    store = create(
        path,
        ids=[str(i) for i in range(n_examples)],
        lengths=lengths,
        token_ids=rng.integers(0, vocab, positions, dtype=np.int32),
        flags={},
        unit_size=64,
        top_k=k,
        meta={"fingerprint": {"aligned": "synthetic", "base": "synthetic"}, "vocab_size": vocab},
        tokenizer=tokenizer,
        overwrite=True,
        format_version=format_version,
    )
    for unit in store.units():
        n = unit.positions
        rank = np.where(rng.random(n) < 0.8, 1, rng.geometric(0.05, n) + 1).astype(np.int32)
        arrays = {
            "base/rank": rank,
            "aligned/rank": np.where(rng.random(n) < 0.9, 1, 2).astype(np.int32),
            "base/logprob": np.log(rng.beta(2, 1, n)).astype(np.float32),
            "positions/kl": rng.exponential(0.2, n).astype(np.float32),
            "positions/kl_aligned_base": rng.exponential(0.3, n).astype(np.float32),
            "positions/js": rng.exponential(0.05, n).astype(np.float32),
            "positions/kl_base_aligned": rng.exponential(0.3, n).astype(np.float32),
            "positions/tv": rng.beta(1, 4, n).astype(np.float32),
            "aligned/entropy": rng.exponential(0.5, n).astype(np.float32),
            "base/entropy": rng.exponential(1.5, n).astype(np.float32),
            **top_k_arrays(rng, n, k, vocab),
        }
        if format_version >= 3:  # as `score` writes them
            arrays.update(stored_arrays(arrays))
        store.write_rows(unit, arrays)
        store.mark_committed(unit)


CHILD = """
import json, sys, time
if sys.argv[3]:
    sys.path.insert(0, sys.argv[3])  # before the working directory: that package, not this one
from tdsdist.analysis.summary import summarize
from tdsdist.store import Store
import resource
wall, cpu = [], []
for _ in range(int(sys.argv[2])):
    start, start_cpu = time.perf_counter(), time.process_time()
    summary = summarize(Store(sys.argv[1], mode="r"))
    wall.append(time.perf_counter() - start)
    cpu.append(time.process_time() - start_cpu)
import tdsdist
print(json.dumps({"positions": summary["positions"], "published": summary.get("published") is not None,
                  "wall": wall, "cpu": cpu, "package": tdsdist.__file__,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_child(store: Path, repeats: int, source: Path | None) -> dict:
    """`summarize` timed in a fresh interpreter (wall and CPU seconds of all its threads, peak
    RSS); `source`: a folder holding another `tdsdist` package (an earlier commit's, for a
    before/after comparison on the same store)."""
    cmd = [sys.executable, "-c", CHILD, str(store), str(repeats), str(source or "")]
    return child_json(cmd)


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--positions", type=int, default=10_000_000)
    parser.add_argument("--store", type=Path, default=Path("/tmp/tdsdist-bench-analyze.zarr"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument(
        "--before",
        type=Path,
        default=None,
        help="Folder holding an earlier tdsdist package (`git archive <commit> tdsdist | tar -x"
        " -C DIR`): timed on the same store, alternating with the current code.",
    )
    parser.add_argument("--format2", action="store_true", help="Also time a format-2 store.")
    args = parser.parse_args()
    format2 = args.store.with_name(args.store.stem + "-format2.zarr")
    for path, version in [(args.store, FORMAT_VERSION)] + ([(format2, 2)] if args.format2 else []):
        if args.rebuild or not path.exists() or Store(path, mode="r").format_version != version:
            start = time.perf_counter()
            build(path, args.positions, mean_length=300, vocab=2000, seed=0, format_version=version)
            print(f"built {path} (format {version}) in {time.perf_counter() - start:.1f} s")
    store = Store(args.store, mode="r")
    runs: dict[str, list[dict]] = {"before": [], "after": [], "after, format-2 store": []}
    for _ in range(args.repeats):  # alternated: a busy machine slows both alike
        if args.before is not None:
            runs["before"].append(run_child(args.store, 1, args.before))
        runs["after"].append(run_child(args.store, 1, None))
        if args.format2:
            runs["after, format-2 store"].append(run_child(format2, 1, None))
    print(
        "| code | positions | repeats | median wall s | positions / s (wall) | median CPU s | positions / CPU s | peak RSS (MiB) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, results in runs.items():
        if not results:
            continue
        n = results[0]["positions"]
        assert n == store.meta["positions"]
        wall = statistics.median([r["wall"][0] for r in results])
        cpu = statistics.median([r["cpu"][0] for r in results])
        peak = max(r["peak_mib"] for r in results)
        label = f"{name} ({'with' if results[0]['published'] else 'without'} published metrics)"
        assert (name == "before") == (str(args.before) in results[0]["package"]), results[0]
        if name == "after":
            label += ", stored" if store.has_published else ""
        elif name != "before":
            label += ", computed from the top-k tables"
        print(
            f"| {label} | {n:,} | {len(results)} | {wall:.2f} | {n / wall:,.0f} | {cpu:.2f} | {n / cpu:,.0f} | {peak:.0f} |"
        )


if __name__ == "__main__":
    main()
