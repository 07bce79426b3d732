"""Work units: the one rule for cutting examples into units, and for sharing them among array tasks.

A unit is `unit_size` consecutive examples (the last one may be shorter). It is the unit of
resumption (committed or not), of writing (its rows start on a chunk boundary of the store) and
of distributed work (claimed whole by one data-parallel group). `score`, `generate` and the store
all cut by `unit_ranges`, so a unit index means the same examples everywhere.
"""

from __future__ import annotations


def unit_ranges(examples: int, unit_size: int) -> list[range]:
    """Example indices of each unit, in data order."""
    return [range(i, min(i + unit_size, examples)) for i in range(0, examples, unit_size)]


def in_task_share(unit: int, task_index: int, task_count: int) -> bool:
    """Whether array task `task_index` of `task_count` owns unit `unit`: units are dealt out
    round-robin, so every task gets early and late (long and short) units alike."""
    return unit % task_count == task_index
