"""The Zarr v3 store: ragged per-position arrays, one writer per work unit, resumable.

Layout (P = positions, including the alignment gaps between units; k = top-k):

    zarr.json                      attrs: tdsdist (fingerprint, config, layout), timing
    examples/id                    [E] str
    examples/offset, length        [E] int64 / int32: rows of the example in the position arrays
    examples/unit                  [E] int32
    examples/answer_truncated      [E] bool   (also aligned_/base_context_truncated)
    examples/aligned_context_length, base_context_length   [E] int32
    units/committed                [U] uint8, chunk 1: each unit owns its flag
    positions/token_id             [P] int32  the answer tokens (written at creation)
    positions/kl                   [P] float32  top-k KL (a lower bound of kl_aligned_base)
    positions/{kl_aligned_base, kl_base_aligned, js, tv}   [P] float32  (format 2)
    positions/nudged               [P] int8  1: the aligned model chose the token (`nudge` only)
    aligned/{top_ids [P,k] int32, top_logprobs [P,k] f32, logprob, rank, entropy [P]}
    aligned/{ties [P] int32, logprobs_at_base_top [P,k] f32, rank_of_base_top1 [P] int32}  (2)
    base/{the same five, plus logprobs_at_aligned_top [P,k] f32; ties [P] int32 (2)}
    published/{jaccard, ndcg, kl_partial, weighted_sum, top_prob [P] f32; top_rank,
               aligned_top1_base_rank [P] int32; top1_differs [P] int8}   (format 3)
    tokenizer/<file name>          [bytes] uint8: the tokenizer files, so analysis needs no model
    contexts/...                   optional: the instruction and both contexts' ids per example
                                   (`store_contexts.py`; absent in older stores: "not recorded")

Formats 1-3: each unit's rows start on a chunk boundary and span whole chunks (4,096 positions),
one file per array and chunk, so two writers never touch the same file. Format 4: one file per
array and unit (Zarr v3's sharding codec). The store's shard length `S` is fixed at creation from
the plan: the largest unit's positions rounded up to the inner chunk (4,096 positions), at least
one chunk (`shard_positions`). Unit `u` owns rows `[u * S, (u + 1) * S)`, exactly one shard of
every per-position array, and nothing else: data-parallel ranks, array tasks and resumed runs
never write the same file (zarr-python warns that concurrent partial writes into one shard are
read-modify-write races that lose data). A unit's shard is written in one write of the whole
shard region (`Store.write_rows` pads the rows to `S` with the fill value), so zarr never merges
into an old shard; the rows past the unit's positions are fill, and an inner chunk that holds
only fill is not stored (an unscored unit, a short unit's tail and the padding cost no bytes).
From format 2 on every chunk of a per-position array (format 4: every inner chunk, and each
shard's index) ends in a crc32c checksum, so a damaged chunk is one error naming the array and
the unit. Everything that is known before scoring (ids, offsets, tokens) is written once, by the
creator. A unit's flag is set only after its data is written, so a crash leaves it pending and a
re-run rewrites it.

What a unit size costs in format 4 (per-position arrays: 29; `units/committed`: one file per
unit; about 50 further files of examples, tokenizer and metadata): files = 30 x units + a
constant (1M answers at unit size 256: about 117,000 files; format 3 needs a file per 4,096
positions whatever the unit size: about 2.2M). The largest file is the shard of a `[P, k]`
float32 array (about 70 B per position at k=20): 5.3 MB measured for a unit of 256 answers of
300 tokens (`tools/bench/scale.py`), four times that at 1,024. A kill loses the units being scored
(each rank's current unit): at most `unit_size` answers per rank. While scoring, a unit's rows
are held on the host until its shard is written (about 400 B per position, the same in format 3:
`score` writes a unit once, at its end): 31 MB at 256 x 300, 123 MB at 1,024 x 300; the
accelerator's memory is bounded by the batch and the head's chunk, not by the unit. Since the
shard length is the largest unit's, the logical position axis is `units x S`: 13% over the
positions measured for units of 256 answers of varied lengths (the padding costs no bytes, but
readers' masks cover every row).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from tdsdist.errors import TdsError
from tdsdist.files import publish, staged_folder
from tdsdist.safe_replace import check_replaceable_store
from tdsdist.store.checks import DamagedChunk, check_chunks_present, check_metadata
from tdsdist.store.units import unit_ranges


class GroupWriter(Protocol):
    """What `create` needs of optional per-example contents (`store_contexts.ExampleContexts`):
    they write themselves into the new root, so this module need not know them."""

    def write(self, root: zarr.Group) -> None: ...


#: 1: tdsdist 0.1.0 (one head per model, top-k KL only). 2: the pair head's arrays (exact
#: divergences, ties, both top-k cross log-probabilities) and a crc32c checksum on every chunk of
#: the per-position arrays. Stores of format 1 keep opening; their missing arrays read as absent.
#: 3: AlignTDS's top-k metrics per position (`published/...`), computed when a unit is scored
#: (`analysis/published.py`) so that the analysis reads 8 small arrays instead of four [P, k]
#: tables; in stores of format 1 and 2 the analysis computes them from those tables.
#: 4: one shard per per-position array and unit (see above); inner chunks and every array as in 3.
#: Stores of formats 1-3 keep opening and resume in their own format.
FORMAT_VERSION = 4
CHUNK_POSITIONS = 4096
#: About what one answer position takes on disk in format 3 (both models' statistics, top-k ids
#: and log-probabilities, divergences; compressed): what a disk-full message says a run needs.
BYTES_PER_POSITION = 400
#: A new store's own files before any position (metadata, empty arrays, tokenizer files): about
#: 1 MB on a file system of 4 KB blocks (measured on the tests' tiny store), one block a file.
NEW_STORE_BYTES = 1_000_000
MODELS = ("aligned", "base")


@dataclass(frozen=True)
class Column:
    """One per-position array: `[P]`, or `[P, k]` when `per_candidate`."""

    name: str
    dtype: str
    fill: float | int
    per_candidate: bool = False


#: The schema of the per-position arrays: the one list every reader and writer uses.
#: Per model (`aligned/...`, `base/...`): what the scoring head returns for each position.
MODEL_ARRAYS = (
    Column("top_ids", "int32", -1, per_candidate=True),
    Column("top_logprobs", "float32", float("nan"), per_candidate=True),
    Column("logprob", "float32", float("nan")),
    Column("rank", "int32", 0),
    Column("entropy", "float32", float("nan")),
)
MODEL_STATS = tuple(c.name for c in MODEL_ARRAYS)
#: The base model only: its log-probabilities at the aligned model's top-k ids.
BASE_ARRAYS = (Column("logprobs_at_aligned_top", "float32", float("nan"), per_candidate=True),)
#: Both models together (`positions/...`); `token_id` is written at creation.
POSITION_ARRAYS = (Column("token_id", "int32", -1), Column("kl", "float32", float("nan")))
#: Exact divergences between the two next-token distributions at each position (format 2).
DIVERGENCES = ("kl_aligned_base", "kl_base_aligned", "js", "tv")
#: The pair head's arrays (format 2), by group: exact divergences over the full vocabulary, tie
#: counts, the aligned log-probabilities at the base top-k and the aligned rank of the base top 1.
PAIR_ARRAYS = {
    "positions": tuple(Column(name, "float32", float("nan")) for name in DIVERGENCES),
    "aligned": (
        Column("ties", "int32", -1),
        Column("logprobs_at_base_top", "float32", float("nan"), per_candidate=True),
        Column("rank_of_base_top1", "int32", 0),
    ),
    "base": (Column("ties", "int32", -1),),
}
#: AlignTDS's top-k metrics as published and tdsdist's top-1 ones (format 3; their formulas in
#: `analysis/published.py`, whose `METRICS` lists them with the aligned rank of the base top 1).
PUBLISHED_ARRAYS = (
    *(
        Column(name, "float32", float("nan"))
        for name in ("jaccard", "ndcg", "kl_partial", "weighted_sum", "top_prob")
    ),
    Column("top_rank", "int32", -1),
    Column("aligned_top1_base_rank", "int32", -1),
    Column("top1_differs", "int8", -1),
)
#: Nudged decoding only (`tdsdist nudge`): 1 where the aligned model chose the position's token,
#: 0 where the base model did. Absent from every other store (`Store.nudged`).
NUDGED = Column("nudged", "int8", -1)
COMPRESSOR = BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")
#: After compression: a damaged chunk fails its checksum on read instead of decoding to numbers.
CHECKSUM = Crc32cCodec()

warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy.*")
warnings.filterwarnings("ignore", category=UserWarning, module="zarr.core.dtype.*")


class StoreExists(Exception):
    """Raised by `create` when the store appeared meanwhile (another task made it): resume it."""


@dataclass(frozen=True)
class UnitRows:
    """Where a unit's rows live: `[start, start + positions)` of the position arrays."""

    index: int
    examples: range
    start: int
    positions: int


def shard_positions(lengths: np.ndarray, unit_size: int, chunk: int) -> int:
    """Format 4's shard length: the largest unit's positions rounded up to `chunk` (at least one
    chunk), so that each unit fits one shard and every shard has the same shape (Zarr's grid)."""
    starts = np.arange(0, len(lengths), unit_size)
    per_unit = np.add.reduceat(np.asarray(lengths, np.int64), starts) if len(starts) else [0]
    return max(-(-int(max(per_unit)) // chunk), 1) * chunk


def layout(
    lengths: np.ndarray, unit_size: int, chunk: int, shard: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Example offsets and unit starts, each unit starting on a multiple of `chunk` (formats
    1-3), or unit `u` at `u * shard` (format 4: one shard per unit).

    Returns `(offsets [E], unit_starts [U + 1])`; the last entry is the padded total length.
    """
    n_units = (len(lengths) + unit_size - 1) // unit_size
    offsets = np.zeros(len(lengths), dtype=np.int64)
    unit_starts = np.zeros(n_units + 1, dtype=np.int64)
    for u in range(n_units):
        lo, hi = u * unit_size, min((u + 1) * unit_size, len(lengths))
        within = np.concatenate([[0], np.cumsum(lengths[lo:hi])])
        offsets[lo:hi] = unit_starts[u] + within[:-1]
        if shard is not None:
            unit_starts[u + 1] = (u + 1) * shard
        else:
            unit_starts[u + 1] = unit_starts[u] + -(-int(within[-1]) // chunk) * chunk
    return offsets, unit_starts


def _array(
    group: zarr.Group,
    name: str,
    shape: tuple[int, ...],
    dtype: Any,
    chunk: int,
    fill=0,
    dims=None,
    checksum: bool = False,
    shard: int | None = None,
):
    """A compressed array chunked along its first axis; `dims` names the axes (for xarray).
    With `shard`, the chunks are the inner chunks of shards of `shard` rows (format 4); the
    shard index ends in a crc32c checksum too (the sharding codec's default index codecs)."""
    chunks = (chunk,) + shape[1:]
    compressors = [COMPRESSOR, CHECKSUM] if checksum else COMPRESSOR
    if dims is None:
        dims = ("position", "k")[: len(shape)]
    return group.create_array(
        name,
        shape=shape,
        chunks=chunks,
        shards=None if shard is None else (shard,) + shape[1:],
        dtype=dtype,
        fill_value=fill,
        compressors=compressors,
        dimension_names=dims,
    )


def per_position_arrays(format_version: int, nudged: bool = False) -> dict[str, tuple[Column, ...]]:
    """Every per-position array of a store of this format (and of a nudged store), by group."""
    groups = {
        "positions": POSITION_ARRAYS,
        "aligned": MODEL_ARRAYS,
        "base": MODEL_ARRAYS + BASE_ARRAYS,
    }
    if format_version >= 2:
        groups = {g: columns + PAIR_ARRAYS[g] for g, columns in groups.items()}
    if format_version >= 3:
        groups["published"] = PUBLISHED_ARRAYS
    if nudged:
        groups["positions"] = groups["positions"] + (NUDGED,)
    return groups


def create(
    path: Path,
    *,
    ids: list[str],
    lengths: np.ndarray,  # [E] answer positions per example
    token_ids: np.ndarray,  # [sum(lengths)] answers, concatenated in example order
    flags: dict[str, np.ndarray],  # per-example bool / int arrays
    unit_size: int,
    top_k: int,
    meta: dict[str, Any],
    tokenizer,
    overwrite: bool,
    chunk: int = CHUNK_POSITIONS,
    contexts: GroupWriter | None = None,
    format_version: int = FORMAT_VERSION,
    nudged: bool = False,
) -> Store:
    """Write the store's skeleton into a temporary folder, then move it into place.

    Nothing is half-written: an error or a kill before the final rename leaves `path` as it was.
    `contexts` (what each model saw) is optional: stores without it keep working.
    `format_version` 2 or 3 makes the layout of an earlier release (tests and benchmarks of the
    readers' older-store paths). `nudged`: the store of `tdsdist nudge` (`positions/nudged`).
    """
    if format_version not in (2, 3, FORMAT_VERSION):
        raise ValueError(f"cannot create stores of format {format_version}")
    path = Path(path)
    shard = shard_positions(lengths, unit_size, chunk) if format_version >= 4 else None
    if overwrite:
        check_replaceable_store(path)  # never delete what is not a store
    with staged_folder(path) as tmp:
        root = zarr.open_group(tmp, mode="w")
        offsets, unit_starts = layout(lengths, unit_size, chunk, shard)
        total = int(unit_starts[-1])
        n = len(ids)
        ex = root.create_group("examples")
        ex.create_array(
            "id",
            shape=(n,),
            chunks=(max(n, 1),),
            dtype=str,
            dimension_names=("example",),
            compressors=[COMPRESSOR, CHECKSUM],
        )[:] = np.array(ids)
        example = ("example",)
        # Every array carries a checksum: a flipped byte in an offset must not move an answer.
        sums = {"dims": example, "checksum": True}
        _array(ex, "offset", (n,), "int64", max(n, 1), **sums)[:] = offsets
        _array(ex, "length", (n,), "int32", max(n, 1), **sums)[:] = lengths
        _array(ex, "unit", (n,), "int32", max(n, 1), **sums)[:] = np.arange(n) // unit_size
        for name, values in flags.items():
            _array(ex, name, (n,), values.dtype, max(n, 1), **sums)[:] = values
        n_units = len(unit_starts) - 1
        units = root.create_group("units")
        _array(units, "committed", (n_units,), "uint8", 1, dims=("unit",), checksum=True)
        for group_name, columns in per_position_arrays(format_version, nudged).items():
            group = root.create_group(group_name)
            for c in columns:
                shape = (total, top_k) if c.per_candidate else (total,)
                _array(group, c.name, shape, c.dtype, chunk, c.fill, checksum=True, shard=shard)
        root["positions/token_id"][:] = _scatter(token_ids, offsets, lengths, total, -1, np.int32)
        _save_tokenizer(root.create_group("tokenizer"), tokenizer)
        if contexts is not None:
            contexts.write(root)
        root.attrs["tdsdist"] = {
            **meta,
            "format_version": format_version,
            "unit_size": unit_size,
            "top_k": top_k,
            "chunk_positions": chunk,
            **({} if shard is None else {"shard_positions": shard}),
            "examples": n,
            "units": n_units,
            "positions": int(lengths.sum()),
            "unit_starts": unit_starts.tolist(),
            **({"nudged": True} if nudged else {}),
        }
        if not publish(tmp, path, replace=overwrite):  # another array task made it: resume it
            raise StoreExists(path)
    return Store(path)


def _all_fill(values: np.ndarray, fill) -> bool:
    """Whether every row equals the array's fill value (NaN counts as equal to a NaN fill)."""
    if np.issubdtype(np.asarray(fill).dtype, np.floating) and np.isnan(fill):
        return bool(np.isnan(values).all())
    return bool((values == fill).all())


def _whole_shard(arr: zarr.Array, values: np.ndarray, shard: int) -> np.ndarray:
    """`values` `[positions, ...]` followed by the array's fill up to `[shard, ...]` (one more
    copy of one array's rows of the unit, freed after its write)."""
    out = np.full((shard,) + values.shape[1:], arr.fill_value, arr.dtype)
    out[: values.shape[0]] = values
    return out


def _scatter(values, offsets, lengths, total, fill, dtype):
    out = np.full(total, fill, dtype=dtype)
    for off, ln, start in zip(offsets, lengths, np.concatenate([[0], np.cumsum(lengths)[:-1]])):
        out[off : off + ln] = values[start : start + ln]
    return out


def _save_tokenizer(group: zarr.Group, tokenizer) -> None:
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        for name in sorted(os.listdir(folder)):
            data = np.frombuffer(Path(folder, name).read_bytes(), dtype=np.uint8)
            arr = group.create_array(
                name,
                shape=data.shape,
                chunks=(max(len(data), 1),),
                dtype="uint8",
                compressors=[COMPRESSOR, CHECKSUM],
            )
            arr[:] = data


class Store:
    """Read and write access to a tdsdist store (one per process; cheap to open)."""

    def __init__(self, path: Path | str, mode: str = "r+") -> None:
        self.path = Path(path)
        if not (self.path / "zarr.json").exists():
            raise TdsError(f"{self.path}: not a tdsdist store (no zarr.json)")
        check_metadata(self.path)
        self.root = zarr.open_group(self.path, mode=mode)
        self._arrays: dict[str, zarr.Array] = {}
        if "tdsdist" not in self.root.attrs:
            raise TdsError(f"{self.path}: not a tdsdist store (no tdsdist attributes)")

    @cached_property
    def meta(self) -> dict[str, Any]:
        return dict(self.root.attrs["tdsdist"])

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
            return self.root[name][:] if index is None else self.root[name][index]
        except ValueError as e:
            if "checksum" not in str(e) and "decompress" not in str(e).lower():
                raise
            raise TdsError(
                f"{self.path}: {name}: damaged (checksum mismatch); it is written once with the"
                f" store: restore the store from a copy (`tdsdist verify {self.path}` lists the"
                " damage)"
            ) from None

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
            fill = self.root[name].fill_value if shard is not None else None
            everything = shard is None or _all_fill(values, fill)
            with zarr.config.set({"array.write_empty_chunks": everything}):
                arr = self.root[name]
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
        self.root["units/committed"][unit.index] = 1

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
        """Whether the store holds the pair head's arrays (format 2): exact divergences, ties."""
        return self.format_version >= 2

    @property
    def has_published(self) -> bool:
        """Whether AlignTDS's top-k metrics were stored when scoring (format 3)."""
        return self.format_version >= 3

    @property
    def nudged(self) -> bool:
        """Whether the store was written by `tdsdist nudge` (it has `positions/nudged`)."""
        return bool(self.meta.get("nudged", False))

    def array_names(self) -> list[str]:
        """`group/name` of every per-position array this store's format has."""
        return [
            f"{g}/{c.name}"
            for g, cs in per_position_arrays(self.format_version, self.nudged).items()
            for c in cs
        ]

    def read(self, name: str, rows: slice | None = None) -> np.ndarray:
        """Rows of a per-position (or example) array; a damaged chunk is a `DamagedChunk` error
        naming the array and the unit, never silent numbers."""
        if name not in self._arrays:
            self._arrays[name] = self.root[name]
        arr = self._arrays[name]
        if name in self._position_arrays:
            check_chunks_present(self, name, rows)  # zarr would read a lost chunk as its fill
        try:
            return arr[:] if rows is None else arr[rows]
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
        self.root["units/committed"][unit_index] = 0
        self.__dict__.pop("committed_when_opened", None)

    def example_unit_committed(self, index: int) -> bool:
        return bool(self._table("units/committed", index // self.meta["unit_size"]))

    def tokenizer(self):
        """The tokenizer saved at creation, loaded without any model or network."""
        from transformers import AutoTokenizer

        group = self.root["tokenizer"]
        with tempfile.TemporaryDirectory() as folder:
            for name, arr in group.arrays():
                Path(folder, name).write_bytes(arr[:].tobytes())
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
