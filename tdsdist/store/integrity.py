"""Integrity of a store: which committed units hold a chunk that fails its checksum.

`tdsdist verify STORE` lists them; `--repair` marks them pending (`Store.mark_pending`), and the
same `score` command then re-scores just those (`Store.write_rows` replaces a unit's chunks).
The `contexts/` group (what the models saw) is checked too; it is written once, when the store is
made, so a damaged array there is reported, not repaired (the scores do not depend on it).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import zarr

from tdsdist.errors import TdsError
from tdsdist.store.checks import DamagedChunk
from tdsdist.store.contexts import GROUP, StoredContexts
from tdsdist.store.reader import Store


def unchecked_note(store: Store) -> str | None:
    """What `verify` cannot check in `store`: format 1 (tdsdist 0.1.0) was written without
    checksums. (Here, not in `jobs.legacy`: `verify` loads no model and no tokenizer.)"""
    if store.has_pair:
        return None
    return (
        f"{store.path}: format 1 (tdsdist 0.1.0) has no checksums: checking the example"
        " layout and that every committed chunk file is present"
    )


AHEAD = 4  # arrays of a unit read at once by a `RowReader`


class RowReader(Protocol):
    """Reads rows of per-position arrays as `Store.read` does, with its errors (a damaged chunk
    is its `DamagedChunk`): `tdsdist.analysis.chunks.BlockReader`, which decodes the chunks
    itself, several arrays at once in threads."""

    def prefetch(self, names: list[str], rows: slice) -> None: ...

    def read(self, name: str, rows: slice) -> np.ndarray: ...


def damaged_units(store: Store, reader: RowReader | None = None) -> dict[int, list[str]]:
    """Committed units with a chunk that fails its checksum -> the arrays affected. Reads
    every committed unit's rows of every per-position array (a unit's rows are whole chunks
    of its own, so a unit is read exactly), through `reader` where given (`AHEAD` arrays at
    once), else through `Store.read`."""
    damaged: dict[int, list[str]] = {}
    done = store.committed()
    names = store.array_names()
    for unit in store.units():
        if not done[unit.index] or unit.positions == 0:
            continue
        rows = slice(unit.start, unit.start + unit.positions)
        for i, name in enumerate(names):
            if reader is not None:  # a few arrays ahead: memory of a few, not of the unit
                reader.prefetch(names[i : i + AHEAD], rows)
            try:
                reader.read(name, rows) if reader is not None else store.read(name, rows)
            except DamagedChunk:
                damaged.setdefault(unit.index, []).append(name)
    return damaged


def damaged_contexts(store: Store) -> list[str]:
    """The arrays of the `contexts/` group that fail their checksum (none for a store without
    the group). Each array is read whole: the group is small beside the per-position arrays."""
    contexts = StoredContexts(store)
    if not contexts.recorded or not isinstance(contexts.group, zarr.Group):
        return []
    damaged = []
    for name in sorted(_array_paths(contexts.group)):
        try:
            contexts._read(name)
        except TdsError:
            damaged.append(f"{GROUP}/{name}")
    return damaged


def _array_paths(group: zarr.Group, prefix: str = "") -> list[str]:
    paths = []
    for name, member in group.members():
        if isinstance(member, zarr.Group):
            paths += _array_paths(member, f"{prefix}{name}/")
        else:
            paths.append(f"{prefix}{name}")
    return paths
