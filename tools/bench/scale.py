"""A store at scale, format 3 against format 4: files, bytes, and the commands' throughput.

Builds (each time) a synthetic store of `--positions` answer positions in store format 3 (one file
per array and 4,096-position chunk) and in format 4 (one shard per array and work unit), with
every per-position array of the format filled as `score` fills it (answer lengths drawn around
`--mean-length`, units of `--unit-size` answers, top-`--top-k` lists), written through the store
writer (`Store.write_rows`, then `mark_committed`), not by scoring. Then, on each store, in the
same run, alternating formats:

- files and bytes (apparent: the sum of file sizes; allocated: what `du` counts), per position;
- `open`: `Store(path)` with its metadata, examples and committed flags (what every command does);
- `analyze` (`summarize`), `export` (`export_parquet` to a scratch file) and `verify`
  (`damaged_units` with tdsdist's chunk and shard reader, as `tdsdist verify`): positions per
  second, wall clock, each in a fresh process (with `--zarr-analyze` and `--zarr-verify`,
  `analyze` and `verify` reading through zarr too, without tdsdist's reader);
- `status` with `--status-units` units (a second pair of small stores: one example per unit).

It then projects a run of `--project-answers` answers of `--project-length` positions at this unit
size (files, bytes, `analyze` time), and the time to create its files on a file system that takes
`--create-ms` per file create (Lustre-like metadata cost). Prints markdown.

    python -m tools.bench.scale                       # 10M positions (the goal's size)
    python -m tools.bench.scale --positions 2000000   # what fits a busy 2-core machine
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from tdsdist_testkit import default_corpus, train_tiny_tokenizer

from tdsdist.analysis.published import stored_arrays
from tdsdist.store import Store, create
from tools.bench.analyze import top_k_arrays
from tools.common import arg_parser, child_json

POOL = 4  # distinct units of random rows, cycled: generating 10M x 400 B of numbers dominates


def lengths_of(rng: np.random.Generator, positions: int, mean: int) -> np.ndarray:
    """Answer lengths around `mean` (a gamma spread, 1 to 4 x mean) summing to `positions`."""
    lengths = np.clip(rng.gamma(4.0, mean / 4.0, positions // mean + 1), 1, 4 * mean)
    lengths = lengths.astype(np.int32)
    cut = int(np.searchsorted(np.cumsum(lengths), positions))
    lengths = lengths[: cut + 1]
    lengths[-1] -= int(lengths.sum()) - positions
    return lengths[lengths > 0]


def unit_rows(rng: np.random.Generator, n: int, k: int, vocab: int) -> dict[str, np.ndarray]:
    """Every per-position array of format 3 and 4 for `n` rows, distributed as a real pair's."""
    rank = np.where(rng.random(n) < 0.8, 1, rng.geometric(0.05, n) + 1).astype(np.int32)
    top = top_k_arrays(rng, n, k, vocab)
    exp = lambda scale: rng.exponential(scale, n).astype(np.float32)  # noqa: E731
    arrays = {
        "positions/token_id": top["aligned/top_ids"][:, 0].copy(),
        "base/rank": rank,
        "aligned/rank": np.where(rng.random(n) < 0.9, 1, 2).astype(np.int32),
        "base/logprob": np.log(rng.beta(2, 1, n)).astype(np.float32),
        "aligned/logprob": np.log(rng.beta(5, 1, n)).astype(np.float32),
        "positions/kl": exp(0.2),
        "positions/kl_aligned_base": exp(0.3),
        "positions/kl_base_aligned": exp(0.3),
        "positions/js": exp(0.05),
        "positions/tv": rng.beta(1, 4, n).astype(np.float32),
        "aligned/entropy": exp(0.5),
        "base/entropy": exp(1.5),
        "aligned/ties": (rng.random(n) < 0.01).astype(np.int32),
        "base/ties": (rng.random(n) < 0.01).astype(np.int32),
        "aligned/rank_of_base_top1": np.where(rng.random(n) < 0.8, 1, 2).astype(np.int32),
        "base/logprobs_at_aligned_top": top["aligned/top_logprobs"] - exp(0.5)[:, None],
        "aligned/logprobs_at_base_top": top["base/top_logprobs"] - exp(0.5)[:, None],
        **top,
    }
    arrays.update(stored_arrays(arrays))
    return arrays


def build(
    path: Path, version: int, lengths: np.ndarray, unit_size: int, k: int, seed: int
) -> float:
    """The store, every unit written and committed; returns the seconds it took."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    vocab = 2000
    store = create(
        path,
        ids=[str(i) for i in range(len(lengths))],
        lengths=lengths,
        token_ids=rng.integers(0, vocab, int(lengths.sum()), dtype=np.int32),
        flags={},
        unit_size=unit_size,
        top_k=k,
        meta={"fingerprint": {"aligned": "synthetic", "base": "synthetic"}, "vocab_size": vocab},
        tokenizer=train_tiny_tokenizer(default_corpus(), vocab),
        overwrite=True,
        format_version=version,
    )
    units = store.units()
    largest = max(u.positions for u in units)
    pool = [unit_rows(np.random.default_rng(seed + i), largest, k, vocab) for i in range(POOL)]
    names = set(store.array_names()) - {"positions/token_id"}  # written at creation
    for unit in units:
        rows = pool[unit.index % POOL]
        store.write_rows(unit, {n: rows[n][: unit.positions] for n in names})
        store.mark_committed(unit)
    return time.perf_counter() - start


def data_files(path: Path, store: Store) -> int:
    """Files that grow with the run: the per-position arrays' chunks or shards and the units'
    committed flags (everything else is a constant: metadata, examples, tokenizer)."""
    names = [*store.array_names(), "units/committed"]
    return sum(files_and_bytes(path / name / "c")[0] for name in names)


def files_and_bytes(path: Path) -> tuple[int, int, int, int]:
    """(files, apparent bytes, allocated bytes, largest file) under `path`."""
    files = apparent = allocated = largest = 0
    for folder, _, names in os.walk(path):
        for name in names:
            st = os.stat(os.path.join(folder, name))
            files += 1
            apparent += st.st_size
            allocated += st.st_blocks * 512
            largest = max(largest, st.st_size)
    return files, apparent, allocated, largest


CHILD = """
import json, sys, time
start = time.perf_counter()
from tdsdist.store import Store
what, path, out = sys.argv[1], sys.argv[2], sys.argv[3]
imported = time.perf_counter()
store = Store(path, mode="r")
if what == "open":
    store.meta, store.ids, store.offsets, store.lengths, store.committed(), store.units()
elif what == "status":
    store.committed()
elif what in ("analyze", "analyze-zarr"):
    from tdsdist.analysis import chunks
    from tdsdist.analysis.summary import summarize
    if what == "analyze-zarr":  # every read through zarr, not tdsdist's chunk and shard reader
        chunks._Layout.of = classmethod(lambda cls, folder: None)
    summarize(store)
elif what == "export":
    from tdsdist.analysis.export import export_parquet
    export_parquet(store, out)
elif what in ("verify", "verify-zarr"):  # as `tdsdist verify`; or every read through zarr
    from tdsdist.analysis.chunks import BlockReader
    from tdsdist.store.integrity import damaged_units
    assert damaged_units(store, BlockReader(store) if what == "verify" else None) == {}
print(json.dumps({"seconds": time.perf_counter() - imported}))
"""


def timed(what: str, store: Path, scratch: Path) -> float:
    """Seconds of one command's work in a fresh process (imports not counted)."""
    return child_json([sys.executable, "-c", CHILD, what, str(store), str(scratch)])["seconds"]


def status_store(path: Path, version: int, units: int) -> None:
    """`units` units of one 30-position answer each, all committed (metadata only: `status`
    reads `units/committed`, one file per unit in every format)."""
    rng = np.random.default_rng(0)
    store = create(
        path,
        ids=[str(i) for i in range(units)],
        lengths=np.full(units, 30, np.int32),
        token_ids=rng.integers(0, 300, 30 * units, dtype=np.int32),
        flags={},
        unit_size=1,
        top_k=5,
        meta={"fingerprint": {}},
        tokenizer=train_tiny_tokenizer(default_corpus(), 300),
        overwrite=True,
        format_version=version,
    )
    store.root["units/committed"][:] = 1  # the creator's shortcut: each flag is its own file


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--positions", type=int, default=10_000_000)
    parser.add_argument("--mean-length", type=int, default=300)
    parser.add_argument("--unit-size", type=int, default=256)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--status-units", type=int, default=10_000)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/tdsdist-bench-scale"))
    parser.add_argument("--project-answers", type=int, default=1_000_000)
    parser.add_argument("--project-length", type=int, default=300)
    parser.add_argument("--create-ms", type=float, default=1.0)
    parser.add_argument("--keep", action="store_true", help="Keep the stores afterwards.")
    parser.add_argument(
        "--zarr-analyze", action="store_true", help="Also time `analyze` reading through zarr."
    )
    parser.add_argument(
        "--zarr-verify", action="store_true", help="Also time `verify` reading through zarr."
    )
    args = parser.parse_args()
    shutil.rmtree(args.folder, ignore_errors=True)
    args.folder.mkdir(parents=True)
    scratch = args.folder / "export.parquet"
    lengths = lengths_of(np.random.default_rng(0), args.positions, args.mean_length)
    versions = (3, 4)
    stores = {v: args.folder / f"format{v}.zarr" for v in versions}
    rows: dict[int, dict] = {}
    for v in versions:
        seconds = build(stores[v], v, lengths, args.unit_size, args.top_k, seed=0)
        files, apparent, allocated, largest = files_and_bytes(stores[v])
        store = Store(stores[v], mode="r")
        tokenizer = files_and_bytes(stores[v] / "tokenizer")
        rows[v] = {
            "build_s": seconds,
            "files": files,
            "apparent": apparent - tokenizer[1],
            "allocated": allocated - tokenizer[2],
            "largest": largest,
            "units": len(store.units()),
            "logical": int(store.meta["unit_starts"][-1]),
            "data_files": data_files(stores[v], store),
        }
        print(f"built format {v} in {seconds:.1f} s: {files} files", file=sys.stderr)
    for v in versions:
        status_store(args.folder / f"status{v}.zarr", v, args.status_units)
    times: dict[tuple[int, str], list[float]] = {}
    commands = ("open", "analyze", "export", "verify")
    commands += ("analyze-zarr",) if args.zarr_analyze else ()
    commands += ("verify-zarr",) if args.zarr_verify else ()
    for _ in range(args.repeats):  # alternated: a busy machine slows both alike
        for what in commands + ("status",):
            for v in versions:
                path = args.folder / f"status{v}.zarr" if what == "status" else stores[v]
                times.setdefault((v, what), []).append(timed(what, path, scratch))
    median = {key: statistics.median(values) for key, values in times.items()}
    positions = int(lengths.sum())
    print(
        f"\n{positions:,} positions, {len(lengths):,} answers (mean {positions / len(lengths):.0f}"
        f" positions), units of {args.unit_size} answers, k={args.top_k}, {args.repeats} repeats"
        " (medians)\n"
    )
    print("| | format 3 | format 4 | 4 / 3 |\n|---|---:|---:|---:|")
    table = [
        ("units", lambda v: rows[v]["units"], "{:,}"),
        ("files", lambda v: rows[v]["files"], "{:,}"),
        (
            "data files per unit (arrays' chunks or shards, flags)",
            lambda v: rows[v]["data_files"] / rows[v]["units"],
            "{:.1f}",
        ),
        ("other files (a constant)", lambda v: rows[v]["files"] - rows[v]["data_files"], "{:,}"),
        ("largest file (MB)", lambda v: rows[v]["largest"] / 1e6, "{:.2f}"),
        (
            "bytes per position (apparent, no tokenizer)",
            lambda v: rows[v]["apparent"] / positions,
            "{:.1f}",
        ),
        (
            "bytes per position (allocated, no tokenizer)",
            lambda v: rows[v]["allocated"] / positions,
            "{:.1f}",
        ),
        ("logical rows / positions", lambda v: rows[v]["logical"] / positions, "{:.3f}"),
        ("build s (write_rows, not timed below)", lambda v: rows[v]["build_s"], "{:.1f}"),
        ("open s", lambda v: median[(v, "open")], "{:.3f}"),
        *[
            (
                f"{what} M positions/s",
                lambda v, w=what: positions / median[(v, w)] / 1e6,
                "{:.2f}",
            )
            for what in commands[1:]
        ],
        *[(f"{what} s", lambda v, w=what: median[(v, w)], "{:.2f}") for what in commands[1:]],
        (f"status s ({args.status_units:,} units)", lambda v: median[(v, "status")], "{:.2f}"),
    ]
    for label, value, fmt in table:
        a, b = value(3), value(4)
        print(
            f"| {label} | {fmt.format(a)} | {fmt.format(b)} | {b / a if a else float('nan'):.2f} |"
        )
    project(args, rows, median, positions)
    if not args.keep:
        shutil.rmtree(args.folder, ignore_errors=True)


def project(args, rows: dict[int, dict], median: dict, positions: int) -> None:
    """A run of `project_answers` x `project_length` at this unit size, from the measured figures:
    format 3: files per 4,096 positions of each array; format 4: files per unit."""
    total = args.project_answers * args.project_length
    units = -(-args.project_answers // args.unit_size)
    print(
        f"\nProjected: {args.project_answers:,} answers x {args.project_length} positions"
        f" = {total / 1e6:.0f}M positions, {units:,} units of {args.unit_size},"
        f" {args.create_ms:g} ms per file create\n"
    )
    print("| | format 3 | format 4 |\n|---|---:|---:|")
    projected = {}
    for v in (3, 4):
        constant = rows[v]["files"] - rows[v]["data_files"]
        if v == 3:  # chunk files grow with the (padded) positions, flags with the units
            chunks = (rows[v]["data_files"] - rows[v]["units"]) / rows[v]["logical"]
            files = constant + units + chunks * total * rows[v]["logical"] / positions
        else:  # shards and flags: a fixed number per unit
            files = constant + rows[v]["data_files"] / rows[v]["units"] * units
        projected[v] = {
            "files": files,
            "bytes": rows[v]["allocated"] / positions * total,
            "analyze": median[(v, "analyze")] / positions * total,
            "create": files * args.create_ms / 1000,
        }
    for label, key, fmt in (
        ("files", "files", "{:,.0f}"),
        ("GB (allocated)", "bytes", "{:.1f}"),
        ("analyze minutes", "analyze", "{:.1f}"),
        ("file creates, minutes of metadata", "create", "{:.1f}"),
    ):
        scale = {"bytes": 1e9, "analyze": 60, "create": 60}.get(key, 1)
        print(
            f"| {label} | "
            + " | ".join(fmt.format(projected[v][key] / scale) for v in (3, 4))
            + " |"
        )


if __name__ == "__main__":
    main()
