"""Making a store: its skeleton (every array, the answers' tokens, the tokenizer, the metadata)
written into a temporary folder and moved into place, so nothing is ever half-made.

The per-position arrays are the schema's (`schema.per_position_arrays`); each unit's rows sit where
`units.layout` puts them (a unit per shard in format 4). Units' scores are written later, by
`Store.write_rows`, one writer per unit.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import zarr

from tdsdist.files import publish, staged_folder
from tdsdist.safe_replace import check_replaceable_store
from tdsdist.store.reader import Store
from tdsdist.store.schema import (
    CHECKSUM,
    CHUNK_POSITIONS,
    COMPRESSOR,
    FORMAT_VERSION,
    per_position_arrays,
)
from tdsdist.store.units import layout, shard_positions


class GroupWriter(Protocol):
    """What `create` needs of optional per-example contents (`contexts.ExampleContexts`):
    they write themselves into the new root, so this module need not know them."""

    def write(self, root: zarr.Group) -> None: ...


class StoreExists(Exception):
    """Raised by `create` when the store appeared meanwhile (another task made it): resume it."""


def _array(
    group: zarr.Group,
    name: str,
    shape: tuple[int, ...],
    dtype: Any,
    chunk: int,
    fill: float | int = 0,
    dims: tuple[str, ...] | None = None,
    checksum: bool = False,
    shard: int | None = None,
) -> zarr.Array[Any]:
    """A compressed array chunked along its first axis; `dims` names the axes (for xarray).
    With `shard`, the chunks are the inner chunks of shards of `shard` rows (format 4); the
    shard index ends in a crc32c checksum too (the sharding codec's default index codecs)."""
    chunks = (chunk,) + shape[1:]
    compressors: Any = [COMPRESSOR, CHECKSUM] if checksum else COMPRESSOR
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
    tokenizer: Any,
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
        # Every array carries a checksum: a flipped byte in an offset must not move an answer.
        per_example = {
            "offset": offsets,
            "length": lengths,
            "unit": (np.arange(n) // unit_size).astype(np.int32),
            **flags,
        }
        for name, values in per_example.items():
            dtype = "int32" if name == "length" else values.dtype
            _array(ex, name, (n,), dtype, max(n, 1), dims=("example",), checksum=True)[:] = values
        n_units = len(unit_starts) - 1
        units = root.create_group("units")
        _array(units, "committed", (n_units,), "uint8", 1, dims=("unit",), checksum=True)
        for group_name, columns in per_position_arrays(format_version, nudged).items():
            group = root.create_group(group_name)
            for c in columns:
                shape = (total, top_k) if c.per_candidate else (total,)
                _array(
                    group, c.name, shape, c.dtype, chunk, c.fill, c.dims, checksum=True, shard=shard
                )
        answers = _scatter(token_ids, offsets, lengths, total, -1, np.int32)
        _array_of(root, "positions/token_id")[:] = answers
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


def _array_of(root: zarr.Group, name: str) -> zarr.Array[Any]:
    member = root[name]
    assert isinstance(member, zarr.Array), name  # made just above
    return member


def _scatter(
    values: np.ndarray,  # [sum(lengths)]
    offsets: np.ndarray,  # [E]
    lengths: np.ndarray,  # [E]
    total: int,
    fill: int,
    dtype: Any,
) -> np.ndarray:  # [total]
    """Each example's values at its rows of the position axis, `fill` elsewhere."""
    out = np.full(total, fill, dtype=dtype)
    for off, ln, start in zip(offsets, lengths, np.concatenate([[0], np.cumsum(lengths)[:-1]])):
        out[off : off + ln] = values[start : start + ln]
    return out


def _save_tokenizer(group: zarr.Group, tokenizer: Any) -> None:
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
