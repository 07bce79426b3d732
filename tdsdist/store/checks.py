"""Checks of a store beyond the chunk checksums: lost chunk files, the example layout, and the
small arrays written once at creation.

Why: zarr reads a chunk file that is absent as the array's fill value, so a chunk deleted from a
committed unit would show as NaN (or as rank 0) and be counted around by the analysis; and in a
store made before every array carried a checksum, a flipped byte in `examples/offset` silently
moves an answer. A committed unit has every chunk of its rows on disk (`Store.write_rows` writes
even a chunk equal to the fill value), so a missing one is damage, found here by name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tdsdist.errors import TdsError


class Store(Protocol):
    """What these checks read of `store.Store` (which imports this module, so not imported)."""

    path: Path
    root: Any

    @property
    def meta(self) -> dict[str, Any]: ...
    @property
    def lengths(self) -> np.ndarray: ...
    @property
    def committed_when_opened(self) -> np.ndarray: ...


class DamagedChunk(TdsError):
    """A chunk of a per-position array failed its checksum or is missing from a committed unit
    (a damaged disk, a truncated or partial copy)."""


def chunk_file(store: Store, name: str, c: int) -> Path:
    """The file of chunk `c` of a per-position array (`[P, k]` arrays: one chunk along k)."""
    folder = store.path / name / "c" / str(c)
    return folder / "0" if store.root[name].ndim == 2 else folder


def _committed_ranges(store: Store, lo: int, hi: int) -> Iterator[tuple[int, int, int]]:
    """(unit, first row, stop row) of the committed units' rows inside `[lo, hi)`."""
    done = store.committed_when_opened
    starts = store.meta["unit_starts"]
    first = max(int(np.searchsorted(starts, lo, side="right")) - 1, 0)
    last = int(np.searchsorted(starts, max(hi - 1, lo), side="right")) - 1
    for u in range(first, min(last, len(done) - 1) + 1):
        if not done[u]:
            continue
        unit_lo = starts[u]
        unit_hi = unit_lo + int(store.lengths[_examples(store, u)].sum())
        a, b = max(lo, unit_lo), min(hi, unit_hi)
        if a < b:
            yield u, a, b


def _examples(store: Store, u: int) -> slice:
    size = store.meta["unit_size"]
    return slice(u * size, min((u + 1) * size, store.meta["examples"]))


def missing_chunks(store: Store, name: str, rows: slice | None = None) -> dict[int, list[int]]:
    """Committed units -> chunk indices of `name` whose file is absent, within `rows` (format
    4: shard files, one per unit; inside a shard the checksummed index says which inner chunks
    hold data, and the padding's are never stored)."""
    chunk = store.meta.get("shard_positions", store.meta["chunk_positions"])  # rows per file
    total = int(store.meta["unit_starts"][-1])
    lo = 0 if rows is None or rows.start is None else rows.start
    hi = total if rows is None or rows.stop is None else min(rows.stop, total)
    missing: dict[int, list[int]] = {}
    if not (store.path / name / "c").is_dir():
        return missing  # never written (a synthetic store leaves arrays out): reads as its fill
    for u, a, b in _committed_ranges(store, lo, hi):
        for c in range(a // chunk, (b - 1) // chunk + 1):
            if not chunk_file(store, name, c).exists():
                missing.setdefault(u, []).append(c)
    return missing


def check_chunks_present(store: Store, name: str, rows: slice | None) -> None:
    """Raise `DamagedChunk` naming the array and the unit when a committed chunk file is gone."""
    missing = missing_chunks(store, name, rows)
    if missing:
        u, chunks = next(iter(missing.items()))
        raise DamagedChunk(
            f"{store.path}: {name}: chunk file c/{chunks[0]} of committed unit {u} is missing;"
            f" run `tdsdist verify {store.path} --repair`, then the same `score` command again"
            " to re-score it"
        )


def layout_problems(store: Store) -> list[str]:
    """What is wrong with the example arrays (every store, with or without their checksums):
    offsets that do not follow the lengths unit by unit, a unit column that disagrees, totals
    that disagree with the store's metadata. Each problem is one line."""
    try:
        offsets = np.asarray(store.root["examples/offset"][:], dtype=np.int64)
        lengths = np.asarray(store.root["examples/length"][:], dtype=np.int64)
        unit_col = store.root["examples/unit"][:] if "unit" in store.root["examples"] else None
    except (ValueError, OSError):  # a checksum that fails: named by `damaged_tables`
        return []
    meta = store.meta
    n, size, starts = meta["examples"], meta["unit_size"], meta["unit_starts"]
    problems = []
    if len(offsets) != n or len(lengths) != n:
        return [f"examples/offset, examples/length: {len(offsets)}, {len(lengths)} rows for {n}"]
    if (lengths < 0).any():
        problems.append(f"examples/length: negative at example {int(np.argmax(lengths < 0))}")
    if int(lengths.sum()) != meta["positions"]:
        problems.append(
            f"examples/length: sums to {int(lengths.sum())}, the store has {meta['positions']}"
        )
    for u in range(len(starts) - 1):
        ex = _examples(store, u)
        want = starts[u] + np.concatenate([[0], np.cumsum(lengths[ex])[:-1]])
        bad = np.flatnonzero(offsets[ex] != want)
        if bad.size:
            e = ex.start + int(bad[0])
            problems.append(
                f"examples/offset: example {e} (unit {u}) starts at {int(offsets[e])}, its"
                f" lengths place it at {int(want[bad[0]])}"
            )
        elif ex.stop > ex.start and offsets[ex.stop - 1] + lengths[ex.stop - 1] > starts[u + 1]:
            problems.append(f"examples/length: unit {u} runs past its rows")
    if unit_col is not None:
        bad = np.flatnonzero(np.asarray(unit_col) != np.arange(n) // size)
        if bad.size:
            problems.append(f"examples/unit: wrong at example {int(bad[0])}")
    return problems


def damaged_tables(store: Store) -> list[str]:
    """The arrays written once at creation (`examples/*`, `units/committed`, `tokenizer/*`)
    that fail their checksum or do not decode; read whole (they are small)."""
    damaged = []
    for group in ("examples", "units", "tokenizer"):
        if group not in store.root:
            continue
        for name, arr in store.root[group].arrays():
            try:
                arr[:]
            except Exception:  # a checksum mismatch or an undecodable chunk: damage either way
                damaged.append(f"{group}/{name}")
    return damaged


def check_metadata(path: Path) -> None:
    """Every `zarr.json` of the store (groups and arrays; chunk folders are not listed) parses:
    a truncated one is one line naming it, not a traceback from zarr's JSON reader."""
    for folder, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d != "c" and not d.startswith("."))
        if "zarr.json" not in files:
            continue
        meta = Path(folder) / "zarr.json"
        try:
            parsed = json.loads(meta.read_bytes())
        except ValueError:
            parsed = None
        except OSError as e:
            raise TdsError(
                f"{meta}: cannot be read ({e.strerror}); check its permissions"
            ) from None
        if not isinstance(parsed, dict) or "node_type" not in parsed:
            raise TdsError(
                f"{meta}: damaged store metadata (not a complete zarr.json, e.g. truncated);"
                " restore this file or the whole store from a copy"
            )
