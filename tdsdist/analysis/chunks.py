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

Format 4 keeps each unit's rows of an array in one shard file (`store.py`): the same inner chunks,
then the shard index at the end (`[chunks, 2]` little-endian uint64 offset and length, all ones
for a chunk never written, then a crc32c checksum). The reader reads a shard's index once per
read (one small `pread` from the end of the file, checked), then each inner chunk it needs
(one `pread` each, checked and decoded as above), from a file opened once per read.
"""

from __future__ import annotations

import enum
import functools
import json
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

import google_crc32c
import numpy as np
from numcodecs import Blosc

from tdsdist.store import Store
from tdsdist.threads import pool as pool  # re-exported: the analysis's threads

_BLOSC = Blosc()
_NEVER_WRITTEN = 2**64 - 1  # the shard index's offset and length of an inner chunk not stored


class _Unreadable(enum.Enum):
    """A sentinel type of one value (an enum, so that `is` narrows it away for mypy)."""

    UNREADABLE = 0


# The fast path cannot vouch for these bytes: zarr decides.
_UNREADABLE: Final = _Unreadable.UNREADABLE
#: A chunk's stored bytes, None (never written: the fill value) or `_UNREADABLE`.
_Encoded = bytes | None | _Unreadable


class _Layout:
    """What the fast path needs of one array (from its zarr.json), or None if it does not apply."""

    def __init__(
        self,
        folder: Path,
        meta: dict[str, Any],
        codecs: list[dict[str, Any]],
        chunk: int,
        shard: int | None,
    ) -> None:
        self.folder = folder
        self.shape = tuple(meta["shape"])
        self.chunk = chunk  # rows of a chunk (format 4: of an inner chunk)
        self.shard = shard  # rows of a shard file (format 4), or None: one file per chunk
        self.per_shard = 1 if shard is None else shard // chunk
        self.dtype = np.dtype(meta["data_type"]).newbyteorder("<")
        self.fill = meta["fill_value"]
        self.checksum = codecs[-1]["name"] == "crc32c"
        self.suffix = "/0" * (len(self.shape) - 1)  # [P, k]: one chunk along k

    @classmethod
    def of(cls, folder: Path) -> _Layout | None:
        try:
            meta = json.loads((folder / "zarr.json").read_text())
        except (OSError, ValueError):
            return None
        codecs = meta.get("codecs", [])
        grid = meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape", [])
        shard = None
        if [c.get("name") for c in codecs] == ["sharding_indexed"]:
            config = codecs[0].get("configuration", {})
            index = config.get("index_codecs", [])
            inner = list(config.get("chunk_shape", []))
            if not (
                [c.get("name") for c in index] == ["bytes", "crc32c"]
                and index[0].get("configuration", {}).get("endian", "little") == "little"
                and config.get("index_location", "end") == "end"
                and len(inner) == len(grid) >= 1
                and inner[1:] == list(grid[1:])
                and grid[0] % inner[0] == 0
            ):
                return None
            shard, grid, codecs = int(grid[0]), inner, config.get("codecs", [])
        names = [c.get("name") for c in codecs]
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
        return cls(folder, meta, codecs, int(grid[0]), shard) if simple else None


@functools.cache
def metrics_pool() -> ThreadPoolExecutor:
    """One thread for whole blocks' published metrics and sums, in the order submitted (one
    thread: a block's sums are added after the previous block's, as in one loop): it waits on
    `pool`'s tasks, which never wait on anything, so the two cannot deadlock."""
    return ThreadPoolExecutor(1)


class BlockReader:
    """`read(name, rows)`: the same array as `store.read(name, rows)`, faster where it can;
    `prefetch(names, rows)` starts reading several arrays at once (each in its own thread)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.layouts: dict[str, _Layout | None] = {}
        self.pending: dict[tuple[str, int, int], Future[np.ndarray]] = {}

    def prefetch(self, names: list[str], rows: slice) -> None:
        for name in names:
            key = (name, rows.start, rows.stop)
            if key not in self.pending:
                self.pending[key] = pool().submit(self._read, name, rows)

    def forget(self, rows: slice | None = None) -> None:
        """Drop the prefetched reads of `rows` not taken (a block the filters left empty), or
        all of them: not those of another block, which the metrics thread may be reading."""
        for key in list(self.pending):  # a snapshot: the metrics thread takes its own keys
            if rows is None or key[1:] == (rows.start, rows.stop):
                future = self.pending.pop(key, None)
                if future is not None:
                    future.cancel()

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
        shards: dict[int, _Shard | _Unreadable] = {}  # format 4: the shard files this read opened
        try:
            for c in range(lo // chunk, -(-hi // chunk)):
                a, b = max(c * chunk, lo), min((c + 1) * chunk, hi, layout.shape[0])
                whole = a == c * chunk and b - a == chunk
                target = out[a - lo : b - lo] if whole else None  # decoded in place: no copy
                values = self._chunk(layout, c, target, shards)
                if values is None:  # damaged or unusual: zarr decides (and names the unit)
                    out[a - lo : b - lo] = self.store.read(name, slice(a, b))
                elif not whole:
                    out[a - lo : b - lo] = values[a - c * chunk : b - c * chunk]
        finally:
            for shard in shards.values():
                if isinstance(shard, _Shard):
                    shard.close()
        return out

    @staticmethod
    def _encoded(layout: _Layout, c: int, shards: dict[int, _Shard | _Unreadable]) -> _Encoded:
        """Chunk `c`'s stored bytes, None where a shard's index says it was never written (the
        padding, a unit's fill), or `_UNREADABLE` (an absent chunk or shard file: `Store.read`
        tells a unit never scored from a committed one that lost it)."""
        if layout.shard is None:
            try:
                return (layout.folder / "c" / f"{c}{layout.suffix}").read_bytes()
            except OSError:  # absent: never written, or lost from a committed unit (`Store.read`)
                return _UNREADABLE
        s, i = divmod(c, layout.per_shard)
        if s not in shards:
            shards[s] = _Shard.open(layout.folder / "c" / f"{s}{layout.suffix}", layout.per_shard)
        shard = shards[s]
        return shard.chunk(i) if isinstance(shard, _Shard) else shard

    @classmethod
    def _chunk(
        cls,
        layout: _Layout,
        c: int,
        target: np.ndarray | None,
        shards: dict[int, _Shard | _Unreadable],
    ) -> np.ndarray | None:
        """Chunk `c` decoded (`[chunk, ...]`, into `target` when given), the fill value where it
        was never written, or None where the fast path cannot vouch for it."""
        rows = (layout.chunk,) + layout.shape[1:]
        if target is None:
            target = np.empty(rows, layout.dtype)
        data = cls._encoded(layout, c, shards)
        if data is None:
            target[...] = layout.fill
            return target
        if data is _UNREADABLE:
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


class _Shard:
    """One shard file opened for a read: its checked index, and its inner chunks by `pread`."""

    def __init__(self, fd: int, index: np.ndarray, end: int) -> None:
        self.fd = fd
        self.index = index  # [chunks per shard, 2] uint64: offset, length
        self.end = end  # where the index starts: no chunk reaches past it

    @classmethod
    def open(cls, path: Path, chunks: int) -> _Shard | _Unreadable:
        """The shard, or `_UNREADABLE` (no such file, a short file, an index that fails its
        checksum)."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return _UNREADABLE
        size = 16 * chunks + 4
        try:
            end = os.fstat(fd).st_size - size
            raw = os.pread(fd, size, end) if end >= 0 else b""
        except OSError:
            raw = b""
        if len(raw) != size or np.uint32(google_crc32c.value(raw[:-4])).tobytes() != raw[-4:]:
            os.close(fd)
            return _UNREADABLE
        return cls(fd, np.frombuffer(raw[:-4], "<u8").reshape(chunks, 2), end)

    def chunk(self, i: int) -> _Encoded:
        offset, length = (int(x) for x in self.index[i])
        if offset == _NEVER_WRITTEN and length == _NEVER_WRITTEN:
            return None
        if offset + length > self.end:
            return _UNREADABLE
        data = os.pread(self.fd, length, offset)
        return data if len(data) == length else _UNREADABLE

    def close(self) -> None:
        os.close(self.fd)


def committed_blocks(
    store: Store, block_rows: int
) -> Iterator[tuple[slice, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(row slice, valid mask, position-in-answer, answer length, example index) per block of
    committed rows. Vectorised over the examples of a block (a few thousand of them): a Python
    loop per example cost 10 ms per 256K-row block, more than some statistics."""
    done = store.committed_examples()  # [E]
    starts = np.asarray(store.meta["unit_starts"])
    offsets = np.asarray(store.offsets, np.int64)
    lengths = np.asarray(store.lengths, np.int64)
    total = int(starts[-1])
    for lo in range(0, total, block_rows):
        hi = min(lo + block_rows, total)
        first = int(np.searchsorted(offsets, lo, side="left"))
        last = int(np.searchsorted(offsets, hi, side="left"))
        e = np.arange(max(first - 1, 0), last)  # examples overlapping the block
        e = e[done[e]]
        a = np.maximum(offsets[e], lo)
        b = np.minimum(offsets[e] + lengths[e], hi)
        e, a, b = e[a < b], a[a < b], b[a < b]
        n = b - a  # [examples] rows of each in the block
        within = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)  # 0 .. n-1 each
        # Offsets ascend (`store.layout`), so the committed rows in block order are the
        # examples' rows one after the other: no scatter into the block and back.
        valid = np.zeros(hi - lo, bool)
        valid[np.repeat(a - lo, n) + within] = True
        if n.size:
            yield (
                slice(lo, hi),
                valid,
                np.repeat(a - offsets[e], n) + within,
                np.repeat(lengths[e], n),
                np.repeat(e, n),
            )
