"""The one claim loop every job runs over its pending units (`score`, `generate`, and what comes
next): group leaders claim units one at a time (`dist.WorkClaims`), the whole tensor-parallel
group works each one together (`dist.claimed_indices`), and the leader commits it.

Kept as one function so that a change to how units are claimed is made here once, for every job:
plain processes on one store (array tasks, a job submitted twice) share no process group, so a
job also passes `guard`, a per-unit claim by file (`parallel/file_claims.py`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TypeVar

import torch.distributed as dist

from tdsdist.parallel.dist import Dist, StopFlag, WorkClaims, claimed_indices
from tdsdist.progress import Progress

U = TypeVar("U")
R = TypeVar("R")

#: Seconds between looks at the units another process holds (`claim_loop`'s `wait`).
WAIT_S = 0.5


@dataclass(frozen=True)
class LoopResult:
    seconds: float
    """Wall time of the loop on this rank (from the first claim to the last commit)."""
    done: int
    """Work done by the whole job (the sum of `size` over committed units, every rank's)."""
    stopped: bool
    """Whether SIGTERM stopped the loop before every unit was claimed."""


def claim_loop(
    d: Dist,
    pending: Sequence[U],
    unit_fn: Callable[[U, Callable[[int], None]], R],
    commit_fn: Callable[[U, R], None],
    *,
    size: Callable[[U], int],
    label: tuple[str, str] = ("working", "units"),
    guard: Callable[[U], AbstractContextManager[bool]] | None = None,
    wait: Callable[[U], bool] | None = None,
) -> LoopResult:
    """Run `unit_fn(unit, advance)` on every rank of the group for each claimed unit, then
    `commit_fn(unit, result)` on the group's leader only; returns once no unit is left (or
    SIGTERM asked to stop) and, when distributed, every rank is done.

    `size(unit)`: the unit's work in the progress bar's unit (`label`: what, and its unit);
    `advance(n)` lets `unit_fn` move the bar within a unit on rank 0; the job-wide count is
    reached after each commit. `guard(unit)`: a context that says whether this process holds
    the unit (another process may hold it, or have committed it); only for groups of one rank
    (tp 1), since every rank of a group must take the same units. `wait(unit)`: whether a unit
    is still unfinished; with `guard`, a plain process then returns only once none is (it waits
    for the units other processes hold, and takes over those whose claims went stale), so that
    whatever comes next (assembling every unit's result) finds them all."""
    claims, stop = WorkClaims(d, len(pending)), StopFlag()
    progress = Progress(sum(size(u) for u in pending), *label, d.is_main)
    start = time.perf_counter()
    for index in claimed_indices(d, claims, stop):
        unit = pending[index]
        with guard(unit) if guard is not None else nullcontext(True) as mine:
            if not mine:
                continue  # another process holds it, or has committed it meanwhile
            result = unit_fn(unit, progress.update)
            if d.is_leader:
                commit_fn(unit, result)
                progress.reach(claims.add_done(size(unit)))
    while wait is not None and guard is not None and not d.distributed and not stop.requested:
        left = [unit for unit in pending if wait(unit)]
        if not left:
            break
        for unit in left:
            with guard(unit) as mine:
                if mine:
                    commit_fn(unit, unit_fn(unit, progress.update))
                    progress.reach(claims.add_done(size(unit)))
        time.sleep(WAIT_S)
    progress.close()
    seconds = time.perf_counter() - start
    if d.distributed:
        dist.barrier()  # every leader's last commit is counted
        done = claims.add_done(0)
    else:
        done = claims.done_local
    return LoopResult(seconds, done, stop.requested)
