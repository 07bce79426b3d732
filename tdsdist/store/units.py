"""Work units: the one rule for cutting examples into units, and for sharing them among array tasks.

A unit is `unit_size` consecutive examples (the last one may be shorter). It is the unit of
resumption (committed or not), of writing (its rows start on a chunk boundary of the store; in
format 4 they fill one shard: `layout`) and of distributed work (claimed whole by one
data-parallel group). `score`, `generate` and the store all cut by `unit_ranges`, so a unit index
means the same examples everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def unit_ranges(examples: int, unit_size: int) -> list[range]:
    """Example indices of each unit, in data order."""
    return [range(i, min(i + unit_size, examples)) for i in range(0, examples, unit_size)]


def in_task_share(unit: int, task_index: int, task_count: int) -> bool:
    """Whether array task `task_index` of `task_count` owns unit `unit`: units are dealt out
    round-robin, so every task gets early and late (long and short) units alike."""
    return unit % task_count == task_index


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
