"""Rows of a store's per-position arrays read straight from their chunk files, for the analysis.

Why: zarr 3's read path costs about half a millisecond per chunk whatever its size (the asyncio
pipeline, one chunk at a time), which is most of `analyze`'s time: a 4,096-row chunk of an int32
array decodes in a twentieth of that. tdsdist writes every per-position array in one layout (a
regular grid along the position axis only, `/`-separated default chunk keys, little-endian bytes,
Blosc, and in format 2 a crc32c checksum at the end of each chunk: `store._array`), so for
exactly that layout the chunk files are read and decoded here with the same codecs zarr uses
(numcodecs' Blosc, google_crc32c). Any other layout, and any chunk that does not decode or fails
its checksum, goes through `Store.read`, which returns zarr's answer or raises its
`DamagedChunk` error: never silent numbers.
"""

from __future__ import annotations

import functools
import json
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import google_crc32c
import numpy as np
from numcodecs import Blosc

from tdsdist.store import Store
from tdsdist.threads import pool  # noqa: F401  (re-exported: the analysis's threads)

_BLOSC = Blosc()


class _Layout:
    """What the fast path needs of one array (from its zarr.json), or None if it does not apply."""

    def __init__(self, folder: Path, meta: dict) -> None:
        self.folder = folder
        self.shape = tuple(meta["shape"])
        self.chunk = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
        self.dtype = np.dtype(meta["data_type"]).newbyteorder("<")
        self.fill = meta["fill_value"]
        names = [c["name"] for c in meta["codecs"]]
        self.checksum = names[-1] == "crc32c"
        self.suffix = "/0" * (len(self.shape) - 1)  # [P, k]: one chunk along k

    @classmethod
    def of(cls, folder: Path) -> _Layout | None:
        try:
            meta = json.loads((folder / "zarr.json").read_text())
        except (OSError, ValueError):
            return None
        codecs = meta.get("codecs", [])
        names = [c.get("name") for c in codecs]
        grid = meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape", [])
        keys = meta.get("chunk_key_encoding", {})
        simple = (
            names in (["bytes", "blosc"], ["bytes", "blosc", "crc32c"])
            and codecs[0].get("configuration", {}).get("endian", "little") == "little"
            and keys.get("name") == "default"
            and keys.get("configuration", {}).get("separator", "/") == "/"
            and list(grid[1:]) == list(meta["shape"][1:])
            and meta.get("data_type")
            in ("int8", "int32", "int64", "float32", "float64", "uint8", "bool")
            and not meta.get("storage_transformers")
        )
        return cls(folder, meta) if simple else None


@functools.cache
def metrics_pool() -> ThreadPoolExecutor:
    """One thread for whole blocks' published metrics: it waits on `pool`'s tasks, which never
    wait on anything, so the two cannot deadlock."""
    return ThreadPoolExecutor(1)


class BlockReader:
    """`read(name, rows)`: the same array as `store.read(name, rows)`, faster where it can;
    `prefetch(names, rows)` starts reading several arrays at once (each in its own thread)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.layouts: dict[str, _Layout | None] = {}
        self.pending: dict[tuple[str, int, int], Future] = {}

    def prefetch(self, names: list[str], rows: slice) -> None:
        for name in names:
            key = (name, rows.start, rows.stop)
            if key not in self.pending:
                self.pending[key] = pool().submit(self._read, name, rows)

    def forget(self) -> None:
        """Drop the prefetched reads not taken (a block the filters left empty)."""
        for future in self.pending.values():
            future.cancel()
        self.pending.clear()

    def read(self, name: str, rows: slice) -> np.ndarray:
        """The rows (a prefetched read is handed over once: its memory goes with it)."""
        future = self.pending.pop((name, rows.start, rows.stop), None)
        return future.result() if future is not None else self._read(name, rows)

    def _read(self, name: str, rows: slice) -> np.ndarray:
        if name not in self.layouts:
            self.layouts[name] = _Layout.of(self.store.path / name)
        layout = self.layouts[name]
        if layout is None:
            return self.store.read(name, rows)
        lo, hi, _ = rows.indices(layout.shape[0])
        out = np.empty((max(hi - lo, 0),) + layout.shape[1:], layout.dtype)
        chunk = layout.chunk
        for c in range(lo // chunk, -(-hi // chunk)):
            a, b = max(c * chunk, lo), min((c + 1) * chunk, hi, layout.shape[0])
            whole = a == c * chunk and b - a == chunk
            target = out[a - lo : b - lo] if whole else None  # decoded in place: no copy
            values = self._chunk(layout, c, target)
            if values is None:  # damaged or unusual: zarr decides (and names the unit)
                out[a - lo : b - lo] = self.store.read(name, slice(a, b))
            elif not whole:
                out[a - lo : b - lo] = values[a - c * chunk : b - c * chunk]
        return out

    @staticmethod
    def _chunk(layout: _Layout, c: int, target: np.ndarray | None) -> np.ndarray | None:
        """Chunk `c` decoded (`[chunk, ...]`, into `target` when given), the fill value where it
        was never written, or None where the fast path cannot vouch for it."""
        rows = (layout.chunk,) + layout.shape[1:]
        if target is None:
            target = np.empty(rows, layout.dtype)
        try:
            data = (layout.folder / "c" / f"{c}{layout.suffix}").read_bytes()
        except OSError:  # absent: never written, or lost from a committed unit (`Store.read`)
            return None
        if layout.checksum:
            stored = data[-4:]
            data = data[:-4]
            if np.uint32(google_crc32c.value(data)).tobytes() != stored:
                return None
        try:
            _BLOSC.decode(data, out=target)
        except Exception:  # not a Blosc frame of this size: let zarr report it
            return None
        return target


def committed_blocks(store: Store, block_rows: int):
    """(row slice, valid mask, position-in-answer, answer length, example index) per block of
    committed rows."""
    done = store.committed()
    starts = np.asarray(store.meta["unit_starts"])
    offsets, lengths = store.offsets, store.lengths
    total = int(starts[-1])
    for lo in range(0, total, block_rows):
        hi = min(lo + block_rows, total)
        first = int(np.searchsorted(offsets, lo, side="left"))
        last = int(np.searchsorted(offsets, hi, side="left"))
        t = np.full(hi - lo, -1, np.int64)
        length = np.zeros(hi - lo, np.int64)
        example = np.zeros(hi - lo, np.int64)
        for_examples = range(max(first - 1, 0), last)
        for e in for_examples:  # examples overlapping the block (a loop per example, not per row)
            if not done[e // store.meta["unit_size"]]:
                continue
            a, b = max(int(offsets[e]), lo), min(int(offsets[e] + lengths[e]), hi)
            if a < b:
                t[a - lo : b - lo] = np.arange(a - int(offsets[e]), b - int(offsets[e]))
                length[a - lo : b - lo] = lengths[e]
                example[a - lo : b - lo] = e
        valid = t >= 0
        if valid.any():
            yield slice(lo, hi), valid, t[valid], length[valid], example[valid]
