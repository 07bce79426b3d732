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
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from tdsdist.config import ScoreConfig
from tdsdist.engine.models import resolve_device
from tdsdist.engine.runner import ModelRunner
from tdsdist.engine.scorer import AnswerPair, ContextAnswer, PairScorer, Scorer
from tdsdist.errors import TdsError
from tdsdist.inputs.plan import Plan
from tdsdist.jobs.prepare import Prepared, prepare
from tdsdist.jobs.resume import (
    adopt_head_dtype,
    adopt_recorded_answers,
    open_or_create_store,
    recorded,
)
from tdsdist.metrics import topk_kl
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
from tdsdist.parallel.loading import load_adapter_runners, load_runner
from tdsdist.store import MODEL_STATS, Store, UnitRows
from tdsdist.store.space import check_store_writable, no_space
from tdsdist.store.units import in_task_share
from tdsdist.topk_metrics import stored_arrays as published_arrays

# Fault injection for tests of crash recovery: SIGKILL this process after writing the data of
# the N-th unit of this run (0-based) and before marking it committed: the worst moment to die.
FAULT_ENV = "TDSDIST_FAULT_KILL_BEFORE_COMMIT"
FAULT_RANK_ENV = "TDSDIST_FAULT_RANK"  # only this global rank dies (default: any that gets there)


def score_unit(
    plan: Plan,
    unit: UnitRows,
    aligned: Scorer | None,
    base: Scorer,
    progress=None,
    store: Store | None = None,
) -> dict[str, np.ndarray]:
    """All arrays of one unit: the aligned pass, then the base pass at the aligned top-k support.

    With a `store` whose aligned side was recorded during generation, the aligned arrays are
    read from it instead of computed.
    """
    items = [plan.items[i] for i in unit.examples]
    if store is not None and recorded(store):
        rows = slice(unit.start, unit.start + unit.positions)
        a = {k: store.read(f"aligned/{k}", rows) for k in MODEL_STATS}
    else:
        assert aligned is not None
        a = aligned.score(
            [ContextAnswer(it.aligned_context, it.answer) for it in items], progress=progress
        )
    splits = np.cumsum([it.positions for it in items])[:-1]
    support = np.split(a["top_ids"], splits)
    b = base.score([ContextAnswer(it.base_context, it.answer) for it in items], support, progress)
    arrays = {f"aligned/{k}": v for k, v in a.items()}
    arrays.update({f"base/{k}": v for k, v in b.items() if k != "support_logprobs"})
    arrays["base/logprobs_at_aligned_top"] = b["support_logprobs"]
    arrays["positions/kl"] = topk_kl(a["top_logprobs"], b["support_logprobs"])
    return arrays


def score_pair_unit(
    plan: Plan, unit: UnitRows, pair: PairScorer, progress=None, published: bool = False
):
    """All arrays of one unit from the pair head: both models on the same rows at once, the
    exact divergences, and the top-k KL of format 1 beside them (for continuity); with
    `published` (a store of format 3), AlignTDS's top-k metrics of the unit's positions too."""
    items = [plan.items[i] for i in unit.examples]
    answers = [AnswerPair(it.aligned_context, it.base_context, it.answer) for it in items]
    arrays = pair.score(answers, progress)
    arrays["positions/token_id"] = np.concatenate([np.asarray(a.answer, np.int32) for a in answers])
    arrays["positions/kl"] = topk_kl(
        arrays["aligned/top_logprobs"], arrays["base/logprobs_at_aligned_top"]
    )
    if published:
        arrays.update(published_arrays(arrays))
    return arrays


def load_model_runner(
    config: ScoreConfig, model: str, vocab_size: int, device, d: Dist, head_dtype: str
):
    """One model of the pair, as this rank runs it (`parallel.loading.load_runner`)."""
    revision = config.aligned_revision if model == "aligned" else config.base_revision
    return load_runner(
        getattr(config, model),
        revision,
        dtype=config.dtype,
        vocab_size=vocab_size,
        device=device,
        d=d,
        trust_remote_code=config.trust_remote_code,
        head_dtype=head_dtype,
    )


def load_scoring(
    config: ScoreConfig, prep: Prepared, store: Store, device, d: Dist, preloaded=None
):
    """The models this store needs, loaded, with their prefixes set; returns `(score_fn,
    passes)`: `score_fn(unit, progress)` gives a unit's arrays.

    A store of format 2 is scored by the pair head (both models, even when `generate` recorded
    the aligned side: exact divergences need both distributions at once, so the aligned model
    runs again, teacher-forced). A store of format 1 (tdsdist 0.1.0) is finished as it was
    begun: one head per model, the base pass at the aligned top-k (base only if recorded)."""
    chunk = config.logits_chunk_mib << 20
    runners = dict(preloaded or {})
    if config.aligned_adapter and not runners:  # base + adapter: one copy of the base weights
        runners = load_adapter_runners(
            config.base,
            config.base_revision,
            config.aligned_adapter,
            dtype=config.dtype,
            vocab_size=prep.vocab_size("base"),
            device=device,
            d=d,
            trust_remote_code=config.trust_remote_code,
            head_dtype=prep.head_dtype,
        )
    for model in ("aligned", "base"):
        if model == "aligned" and recorded(store) and not store.has_pair:
            runners.pop(model, None)
            continue  # format 1: the recorded aligned side is read back from the store
        runners[model] = runners.get(model) or load_model_runner(
            config, model, prep.vocab_size(model), device, d, prep.head_dtype
        )
        runners[model].set_prefix(prep.prefixes[model])
    if prep.vocab_union is not None and not store.has_pair:  # fingerprints keep this from happening
        raise TdsError(f"{store.path}: a store of format 1 cannot score a vocabulary union")
    if store.has_pair:
        pair = PairScorer(
            runners["aligned"], runners["base"], config.top_k, chunk, config.max_tokens_per_batch
        )
        published = store.has_published
        return (
            lambda unit, progress: score_pair_unit(prep.plan, unit, pair, progress, published)
        ), 2
    scorers = {
        m: Scorer(r, config.top_k, chunk, config.max_tokens_per_batch) for m, r in runners.items()
    }

    def score_fn(unit, progress):
        return score_unit(prep.plan, unit, scorers.get("aligned"), scorers["base"], progress, store)

    return score_fn, len(scorers)


def run_score(config: ScoreConfig, log=print) -> dict[str, Any]:
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
    log=print,
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
    log,
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
    if recorded(store):
        prep.plan = adopt_recorded_answers(prep, store)
        if store.has_pair:
            log(
                "tdsdist: the answers were recorded by `generate`; the pair head runs the aligned"
                " model again, teacher-forced (exact divergences need both distributions at once)"
            )
        else:
            log("tdsdist: the aligned side was recorded by `generate`: running the base pass only")
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
        score_fn, passes = load_scoring(config, prep, store, device, d, preloaded)
        timing["load_seconds"] = time.perf_counter() - start
        try:
            timing.update(
                _score_units(score_fn, store, [units[i] for i in pending], d, passes, device)
            )
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


def _score_units(score_fn, store, pending, d: Dist, passes: int, device) -> dict[str, Any]:
    """`claim_loop` over the pending units: every rank of a group scores a claimed unit, its
    leader writes and commits it. Progress counts scored positions of every pass (`passes` per
    answer position)."""
    fault_at = int(os.environ.get(FAULT_ENV, "-1"))
    if os.environ.get(FAULT_RANK_ENV, str(d.rank)) != str(d.rank):
        fault_at = -1
    committed = 0

    def score_unit(unit: Any, advance: Callable[[int], None]) -> dict[str, Any]:
        arrays = score_fn(unit, advance)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return arrays

    def commit(unit: Any, arrays: dict[str, Any]) -> None:
        nonlocal committed
        store.write_rows(unit, arrays)
        if committed == fault_at:
            os.kill(os.getpid(), signal.SIGKILL)
        store.mark_committed(unit)
        committed += 1

    def size(unit: Any) -> int:
        return passes * unit.positions

    def guard(unit: Any) -> Any:
        def done() -> bool:
            return bool(store.root["units/committed"][unit.index])

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
