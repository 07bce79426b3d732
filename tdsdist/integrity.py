"""Integrity of a store: which committed units hold a chunk that fails its checksum.

`tdsdist verify STORE` lists them; `--repair` marks them pending (`Store.mark_pending`), and the
same `score` command then re-scores just those (`Store.write_rows` replaces a unit's chunks).
"""

from __future__ import annotations

from tdsdist.store import DamagedChunk, Store


def damaged_units(store: Store) -> dict[int, list[str]]:
    """Committed units with a chunk that fails its checksum -> the arrays affected. Reads
    every committed unit's rows of every per-position array (a unit's rows are whole chunks
    of its own, so a unit is read exactly)."""
    damaged: dict[int, list[str]] = {}
    done = store.committed()
    for unit in store.units():
        if not done[unit.index] or unit.positions == 0:
            continue
        rows = slice(unit.start, unit.start + unit.positions)
        for name in store.array_names():
            try:
                store.read(name, rows)
            except DamagedChunk:
                damaged.setdefault(unit.index, []).append(name)
    return damaged
