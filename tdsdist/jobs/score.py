"""The scoring job: prepare, create or resume the store, score pending units, time it.

Under torchrun, rank 0 validates, plans and creates the store before any model loads (every
other rank then plans the same, deterministically); the group leaders claim units one at a time
(`parallel.dist.claimed_indices`), score them with their group and write them; a unit's committed
flag is set only after its data is on disk. `python -m tdsdist.score` (what torchrun launches)
and `tdsdist score` both end here.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch

from tdsdist.config import ScoreConfig
from tdsdist.engine.models import resolve_device
from tdsdist.engine.runner import ModelRunner
from tdsdist.errors import TdsError
from tdsdist.jobs.legacy import legacy_scoring
from tdsdist.jobs.prepare import Prepared, prepare
from tdsdist.jobs.resume import (
    adopt_head_dtype,
    adopt_recorded_answers,
    generated,
    open_or_create_store,
)
from tdsdist.jobs.scoring import PairScoring, Scoring
from tdsdist.parallel.claims import claim_loop
from tdsdist.parallel.dist import (
    Dist,
    broadcast_ints,
    checked_on_main,
    destroy,
    init_distributed,
    task_share,
)
from tdsdist.parallel.file_claims import claim_unit
from tdsdist.store import Store, UnitRows
from tdsdist.store.space import check_store_writable, no_space
from tdsdist.store.units import in_task_share

# Fault injection for tests of crash recovery: SIGKILL this process after writing the data of
# the N-th unit of this run (0-based) and before marking it committed: the worst moment to die.
FAULT_ENV = "TDSDIST_FAULT_KILL_BEFORE_COMMIT"
FAULT_RANK_ENV = "TDSDIST_FAULT_RANK"  # only this global rank dies (default: any that gets there)

Log = Callable[[str], None]


def load_runners(
    prep: Prepared,
    device: torch.device,
    d: Dist,
    preloaded: dict[str, ModelRunner],
    models: Sequence[str],
) -> dict[str, ModelRunner]:
    """The named models of the pair, as this rank runs them, with their shared prefixes set:
    a `preloaded` one is used as it is (what `generate --base` hands over); the others load
    through the resolved pair's one loader (an adapter: both from one copy of the base weights)."""
    missing = tuple(m for m in models if m not in preloaded)
    runners = dict(preloaded)
    if missing:
        assert prep.pair is not None  # `prepare` resolves it
        runners.update(prep.pair.load(device, d, prep.head_dtype, missing))
    for model in models:
        runners[model].set_prefix(prep.prefixes[model])
    return {m: runners[m] for m in models}


def load_scoring(
    config: ScoreConfig,
    prep: Prepared,
    store: Store,
    device: torch.device,
    d: Dist,
    preloaded: dict[str, ModelRunner] | None = None,
) -> Scoring:
    """The scorer of this store, its models loaded: the pair head, or, for a store an earlier
    release began, the scorer that finishes it in its own format (`jobs.legacy`).

    The answers of a store made by `generate` are scored by both models too: exact divergences
    need both distributions at once, so the aligned model runs again, teacher-forced (the
    scorer's `note` says so in the log)."""

    def load(models: Sequence[str]) -> dict[str, ModelRunner]:
        return load_runners(prep, device, d, preloaded or {}, models)

    earlier = legacy_scoring(config, prep, store, load)
    return earlier or PairScoring.load(config, prep.plan, load, generated(store))


def run_score(config: ScoreConfig, log: Log = print) -> dict[str, Any]:
    """Score every pending unit into the store; returns the run's timing summary."""
    device = resolve_device(config.device)
    task_index, task_count = task_share(config.task_index, config.task_count)
    if config.overwrite and task_count > 1:
        raise TdsError(
            "--overwrite with several array tasks would let one task delete the others' work"
        )
    d = init_distributed(config.tp, config.dist_timeout, device)
    try:
        return score_on(config, device, d, log, (task_index, task_count))
    finally:
        destroy(d)


def score_on(
    config: ScoreConfig,
    device: torch.device,
    d: Dist,
    log: Log = print,
    task: tuple[int, int] = (0, 1),
    preloaded: dict[str, ModelRunner] | None = None,
) -> dict[str, Any]:
    """The scoring job inside a process layout that is already set up: what `run_score` runs,
    and what `generate --base` runs after decoding, handing over its aligned model loaded
    (`preloaded`), so that each model is loaded once."""
    return _run(config, device, d, *task, log if d.is_main else (lambda m: None), preloaded or {})


def _run(
    config: ScoreConfig,
    device: torch.device,
    d: Dist,
    task_index: int,
    task_count: int,
    log: Log,
    preloaded: dict[str, ModelRunner],
) -> dict[str, Any]:
    def create() -> tuple[Prepared, Store]:
        prep = prepare(config)
        check_store_writable(config.store)  # before minutes of model loading
        try:
            return prep, open_or_create_store(prep)
        except OSError as e:
            new = not os.path.exists(os.path.join(config.store, "zarr.json"))
            full = no_space(e, config.store, sum(it.positions for it in prep.plan.items), new)
            if full is None:
                raise
            raise full from None

    made = checked_on_main(d, create)
    if made is None:  # same data, same plan: deterministic on every rank
        made = prepare(config), Store(config.store)
        adopt_head_dtype(made[0], made[1].meta.get("fingerprint", {}))  # as rank 0 resolved it
    prep, store = made
    for note in prep.notes:  # how the data file was read; an adapter made for another base name
        log(note)
    done = store.committed()
    pending = None
    if d.is_main:
        pending = [
            u.index
            for u in store.units()
            if not done[u.index] and in_task_share(u.index, task_index, task_count)
        ]
    pending = broadcast_ints(pending, 0, None, d)
    units = store.units()
    if generated(store):
        prep.plan = adopt_recorded_answers(prep, store)
    if prep.skipped:
        shown = ", ".join(repr(i) for i in prep.skipped[:5]) + (
            ", ..." if len(prep.skipped) > 5 else ""
        )
        log(f"tdsdist: left out {len(prep.skipped)} examples with an empty answer (ids {shown})")
    share = f", task {task_index} of {task_count}" if task_count > 1 else ""
    log(
        f"tdsdist: {len(prep.plan.items)} examples, {len(done)} units ({int(done.sum())} already"
        f" committed, {len(pending)} to do{share}); world {d.dims.world} = tp {d.dims.tp} x dp"
        f" {d.dims.dp}; store {store.path}"
    )
    timing: dict[str, Any] = {"load_seconds": 0.0, "score_seconds": 0.0, "positions": 0}
    if pending:
        start = time.perf_counter()
        scoring = load_scoring(config, prep, store, device, d, preloaded)
        timing["load_seconds"] = time.perf_counter() - start
        if scoring.note:
            log(scoring.note)
        try:
            timing.update(_score_units(scoring, store, [units[i] for i in pending], d, device))
        except OSError as e:
            left = store.committed()
            full = no_space(e, store.path, sum(u.positions for u in units if not left[u.index]))
            if full is None:
                raise
            raise full from None
    stopped = timing.pop("stopped", False)
    if d.is_main:
        if task_count == 1:
            store.set_timing(timing)
        else:
            store.set_task_timing(task_index, timing)
    log(
        f"tdsdist: scored {timing['positions']} positions in {timing['score_seconds']:.2f} s"
        f" (models loaded in {timing['load_seconds']:.2f} s)"
    )
    if stopped:
        log("tdsdist: stopped on SIGTERM; re-run the same command to finish the pending units")
        timing["stopped"] = True
    return timing


def _score_units(
    scoring: Scoring, store: Store, pending: list[UnitRows], d: Dist, device: torch.device
) -> dict[str, Any]:
    """`claim_loop` over the pending units: every rank of a group scores a claimed unit, its
    leader writes and commits it. Progress counts scored positions of every pass
    (`scoring.passes` per answer position)."""
    passes = scoring.passes
    fault_at = int(os.environ.get(FAULT_ENV, "-1"))
    if os.environ.get(FAULT_RANK_ENV, str(d.rank)) != str(d.rank):
        fault_at = -1
    committed = 0

    def score_unit(unit: UnitRows, advance: Callable[[int], None]) -> dict[str, Any]:
        arrays = scoring.score(unit, advance)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return arrays

    def commit(unit: UnitRows, arrays: dict[str, Any]) -> None:
        nonlocal committed
        store.write_rows(unit, arrays)
        if committed == fault_at:
            os.kill(os.getpid(), signal.SIGKILL)
        store.mark_committed(unit)
        committed += 1

    def size(unit: UnitRows) -> int:
        return passes * unit.positions

    def guard(unit: UnitRows) -> AbstractContextManager[bool]:
        def done() -> bool:  # read now: another process may have committed it since
            return store.example_unit_committed(unit.examples.start)

        return claim_unit(store.path, unit.index, done)

    # Other processes on this store (array tasks, a job submitted twice) claim units by file;
    # tensor-parallel groups rely on their leader's broadcast only (`parallel/file_claims.py`).
    by_file = guard if d.dims.tp == 1 else None
    loop = claim_loop(
        d, pending, score_unit, commit, size=size, label=("scoring", "pos"), guard=by_file
    )
    return {
        "score_seconds": loop.seconds,
        "positions": loop.done // passes,
        "stopped": loop.stopped,
    }
