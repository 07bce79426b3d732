"""Reading (and writing a unit's rows into) an existing store: class `Store`.

What the store holds is described in the package docstring; which per-position arrays it has is
the schema's answer for its format (`Store.columns`), so readers ask the store for a column, not
for a format.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections.abc import Iterable, Mapping
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import zarr

from tdsdist.errors import TdsError
from tdsdist.store.checks import DamagedChunk, check_chunks_present, check_metadata
from tdsdist.store.schema import PAIR_ARRAYS, PUBLISHED_ARRAYS, Column, columns_of, paths
from tdsdist.store.units import UnitRows, unit_ranges

warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy.*")
warnings.filterwarnings("ignore", category=UserWarning, module="zarr.core.dtype.*")


def _all_fill(values: np.ndarray, fill: Any) -> bool:
    """Whether every row equals the array's fill value (NaN counts as equal to a NaN fill)."""
    if np.issubdtype(np.asarray(fill).dtype, np.floating) and np.isnan(fill):
        return bool(np.isnan(values).all())
    return bool((values == fill).all())


def _whole_shard(arr: zarr.Array[Any], values: np.ndarray, shard: int) -> np.ndarray:
    """`values` `[positions, ...]` followed by the array's fill up to `[shard, ...]` (one more
    copy of one array's rows of the unit, freed after its write)."""
    out = np.full((shard,) + values.shape[1:], arr.fill_value, arr.dtype)
    out[: values.shape[0]] = values
    return out


class Store:
    """Read and write access to a tdsdist store (one per process; cheap to open)."""

    def __init__(self, path: Path | str, mode: Literal["r", "r+"] = "r+") -> None:
        self.path = Path(path)
        if not (self.path / "zarr.json").exists():
            raise TdsError(f"{self.path}: not a tdsdist store (no zarr.json)")
        check_metadata(self.path)
        self.root = zarr.open_group(self.path, mode=mode)
        self._arrays: dict[str, zarr.Array[Any]] = {}
        if "tdsdist" not in self.root.attrs:
            raise TdsError(f"{self.path}: not a tdsdist store (no tdsdist attributes)")

    @cached_property
    def meta(self) -> dict[str, Any]:
        return dict(cast(Mapping[str, Any], self.root.attrs["tdsdist"]))

    @property
    def top_k(self) -> int:
        return int(self.meta["top_k"])

    @cached_property
    def ids(self) -> list[str]:
        return [str(x) for x in self._table("examples/id")]

    @cached_property
    def offsets(self) -> np.ndarray:
        return self._table("examples/offset")

    @cached_property
    def lengths(self) -> np.ndarray:
        return self._table("examples/length")

    def _table(self, name: str, index: int | None = None) -> np.ndarray:
        """A small array read whole (or one entry); a checksum that fails is one line naming it."""
        try:
            arr = self.array(name)
            return np.asarray(arr[:] if index is None else arr[index])
        except ValueError as e:
            if "checksum" not in str(e) and "decompress" not in str(e).lower():
                raise
            raise TdsError(
                f"{self.path}: {name}: damaged (checksum mismatch); it is written once with the"
                f" store: restore the store from a copy (`tdsdist verify {self.path}` lists the"
                " damage)"
            ) from None

    def array(self, name: str) -> zarr.Array[Any]:
        """The zarr array `name` (`group/name`), lazy."""
        member = self.root[name]
        if not isinstance(member, zarr.Array):
            raise TdsError(f"{self.path}: {name}: a group where an array belongs")
        return member

    def units(self) -> list[UnitRows]:
        starts = self.meta["unit_starts"]
        ranges = unit_ranges(self.meta["examples"], self.meta["unit_size"])
        return [
            UnitRows(u, r, starts[u], int(self.lengths[r.start : r.stop].sum()))
            for u, r in enumerate(ranges)
        ]

    def committed(self) -> np.ndarray:
        return self._table("units/committed").astype(bool)

    def write_rows(self, unit: UnitRows, arrays: dict[str, np.ndarray]) -> None:
        """Write a unit's rows (`"aligned/rank"` -> `[positions, ...]`); not yet committed.

        The unit's old chunks (format 4: its shard) of each array are removed first: a write
        that covers part of a chunk makes zarr read the chunk back, and a chunk torn by a crash
        (or damaged on disk) would fail its checksum there instead of being replaced. In format
        4 each array's shard is written whole, in one write (`_whole_shard`): zarr encodes it
        from these rows alone, without reading anything back."""
        lo, hi = unit.start, unit.start + unit.positions
        shard = self.meta.get("shard_positions")
        for name, values in arrays.items():
            if values.shape[0] != unit.positions:
                raise ValueError(f"{name}: {values.shape[0]} rows for a unit of {unit.positions}")
            self._remove_chunks(name, unit)
            # Every chunk of a committed unit is on disk, even one that equals the fill value
            # (never in practice): a missing chunk file is then always damage (`Store.read`).
            # Format 4: the shard file is always on disk (a unit of nothing but fill writes
            # every inner chunk); inside it an inner chunk of fill (the padding) is not stored,
            # which the shard's checksummed index records. (An array takes the setting when
            # opened: it is opened inside the `with`.)
            fill = self.array(name).fill_value if shard is not None else None
            everything = shard is None or _all_fill(values, fill)
            with zarr.config.set({"array.write_empty_chunks": everything}):
                arr = self.array(name)
                if shard is None:
                    arr[lo:hi] = values
                else:
                    arr[lo : lo + shard] = _whole_shard(arr, values, shard)

    def _remove_chunks(self, name: str, unit: UnitRows) -> None:
        chunk = self.meta.get("shard_positions", self.meta["chunk_positions"])  # rows per file
        first, stop = unit.start // chunk, self.meta["unit_starts"][unit.index + 1] // chunk
        for c in range(first, stop):  # a unit's chunks are its own (see the module docstring)
            folder = self.path / name / "c" / str(c)
            if folder.is_dir():  # [P, k] arrays: one chunk along k, under c/<c>/0
                shutil.rmtree(folder, ignore_errors=True)
            else:
                folder.unlink(missing_ok=True)

    def mark_committed(self, unit: UnitRows) -> None:
        """Only after `write_rows` returned: a flag set means the unit's data is all on disk."""
        self.array("units/committed")[unit.index] = 1

    def example_index(self, example_id: str) -> int:
        try:
            return self.ids.index(str(example_id))
        except ValueError:
            raise TdsError(f"{self.path}: no example with id {example_id!r}") from None

    def rows(self, index: int) -> slice:
        off = int(self.offsets[index])
        return slice(off, off + int(self.lengths[index]))

    @property
    def format_version(self) -> int:
        return int(self.meta.get("format_version", 1))

    @property
    def has_pair(self) -> bool:
        """Whether the store holds the pair head's arrays (format 2 on): exact divergences, ties."""
        return all(name in self.columns for name in paths(PAIR_ARRAYS))

    @property
    def has_published(self) -> bool:
        """Whether AlignTDS's top-k metrics were stored when scoring (format 3 on)."""
        return all(name in self.columns for name in paths({"published": PUBLISHED_ARRAYS}))

    @property
    def nudged(self) -> bool:
        """Whether the store was written by `tdsdist nudge` (it has `positions/nudged`)."""
        return bool(self.meta.get("nudged", False))

    @cached_property
    def columns(self) -> dict[str, Column]:
        """`group/name` -> column: every per-position array this store holds (its format's, and
        `positions/nudged` in a nudged store). What readers ask instead of the format version."""
        return columns_of(self.format_version, self.nudged)

    def array_names(self) -> list[str]:
        """`group/name` of every per-position array this store holds."""
        return list(self.columns)

    def read(self, name: str, rows: slice | None = None) -> np.ndarray:
        """Rows of a per-position (or example) array; a damaged chunk is a `DamagedChunk` error
        naming the array and the unit, never silent numbers."""
        if name not in self._arrays:
            self._arrays[name] = self.array(name)
        arr = self._arrays[name]
        if name in self._position_arrays:
            check_chunks_present(self, name, rows)  # zarr would read a lost chunk as its fill
        try:
            return np.asarray(arr[:] if rows is None else arr[rows])
        except ValueError as e:
            if "checksum" not in str(e):
                raise
            raise DamagedChunk(
                f"{self.path}: {name}: damaged data in unit(s) {self._units_of(rows)} (checksum"
                f" mismatch); run `tdsdist verify {self.path} --repair`, then the same `score`"
                " command again to re-score them"
            ) from None

    def _units_of(self, rows: slice | None) -> str:
        starts = np.asarray(self.meta["unit_starts"])
        lo = 0 if rows is None or rows.start is None else rows.start
        hi = int(starts[-1]) if rows is None or rows.stop is None else rows.stop
        first = int(np.searchsorted(starts, lo, side="right")) - 1
        last = int(np.searchsorted(starts, max(hi - 1, lo), side="right")) - 1
        return str(first) if first == last else f"{first}-{last}"

    @cached_property
    def _position_arrays(self) -> frozenset[str]:
        return frozenset(self.array_names())

    @cached_property
    def committed_when_opened(self) -> np.ndarray:
        """`committed()` read once (the readers' view: a unit committed later is not read)."""
        return self.committed()

    def mark_pending(self, unit_index: int) -> None:
        """Clear a unit's committed flag, so that the same `score` command scores it again."""
        self.array("units/committed")[unit_index] = 0
        self.__dict__.pop("committed_when_opened", None)

    @cached_property
    def example_units(self) -> np.ndarray:
        """`[E]` the unit of each example: the stored `examples/unit` (every store tdsdist has
        written holds it); computed by the unit rule only for a store without it."""
        if "unit" in self.group("examples"):
            return np.asarray(self._table("examples/unit"), np.int64)
        return np.arange(self.meta["examples"], dtype=np.int64) // int(self.meta["unit_size"])

    def unit_of(self, index: int) -> int:
        """The unit that example `index` belongs to (the one home of that rule for readers)."""
        return int(self.example_units[index])

    def committed_examples(self) -> np.ndarray:
        """`[E]` bool: the example's unit is committed (read now, as `committed()`)."""
        committed: np.ndarray = self.committed()[self.example_units]
        return committed

    def example_unit_committed(self, index: int) -> bool:
        return bool(self._table("units/committed", self.unit_of(index)))

    def example(self, index: int, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """One example's rows of the per-position arrays `names` (default: every column this
        store holds), `group/name` -> `[n]` or `[n, k]`: what the API, `show` and the report read.
        An example whose unit is pending is one error line (its rows hold no scores yet)."""
        if not self.example_unit_committed(index):
            raise TdsError(
                f"{self.path}: example {self.ids[index]!r} is not scored yet (its unit is pending)"
            )
        return self.read_columns(self.columns if names is None else names, self.rows(index))

    def read_columns(self, names: Iterable[str], rows: slice) -> dict[str, np.ndarray]:
        """`group/name` -> those rows of each per-position array (one example, or a run of them)."""
        return {name: self.read(name, rows) for name in names}

    def group(self, name: str) -> zarr.Group:
        """The zarr group `name` (`examples`, `contexts`, ...)."""
        member = self.root[name]
        if not isinstance(member, zarr.Group):
            raise TdsError(f"{self.path}: {name}: an array where a group belongs")
        return member

    def tokenizer(self) -> Any:
        """The tokenizer saved at creation, loaded without any model or network."""
        from transformers import AutoTokenizer

        with tempfile.TemporaryDirectory() as folder:
            for name, arr in self.group("tokenizer").arrays():
                Path(folder, name).write_bytes(np.asarray(arr[:]).tobytes())
            return AutoTokenizer.from_pretrained(folder)

    def set_timing(self, timing: dict[str, float | int]) -> None:
        self.root.attrs["timing"] = timing

    def set_task_timing(self, task_index: int, timing: dict[str, float | int]) -> None:
        """Array tasks each keep their own group: concurrent writes to the root would race."""
        self.root.require_group("tasks").require_group(str(task_index)).attrs["timing"] = timing

    def valid_rows(self) -> np.ndarray:
        """Boolean mask `[P]` of rows that belong to an example of a committed unit."""
        total = self.meta["unit_starts"][-1]
        mask = np.zeros(total, dtype=bool)
        done = self.committed()
        for unit in self.units():
            if done[unit.index]:
                mask[unit.start : unit.start + unit.positions] = True
        return mask
