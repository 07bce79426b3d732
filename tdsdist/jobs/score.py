"""The scoring job: validate, plan, create or resume the store, score pending units, time it.

`python -m tdsdist.jobs.score ...` takes the same arguments as `tdsdist score` (it is what torchrun
launches). Order matters for the user: every check that can fail on bad input runs before any model
loads and before the store is created or touched.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from tdsdist import __version__
from tdsdist.config import ScoreConfig
from tdsdist.engine.models import (
    DTYPE,
    check_same_vocabulary,
    load_model,
    load_model_config,
    load_tokenizer,
    model_window,
    tokenizer_hash,
)
from tdsdist.engine.scorer import ContextAnswer, Scorer
from tdsdist.errors import TdsError
from tdsdist.inputs.data import Fields, file_sha256, load_examples
from tdsdist.inputs.plan import Plan, make_plan, shared_prefix
from tdsdist.inputs.templates import aligned_context_fn, base_context_fn, template_fingerprint
from tdsdist.metrics import topk_kl
from tdsdist.parallel.dist import (
    Dist,
    StopFlag,
    WorkClaims,
    broadcast_ints,
    destroy,
    init_distributed,
    task_share,
)
from tdsdist.store import Store, StoreExists, UnitRows, create

# Fault injection for tests of crash recovery: SIGKILL this process after writing the data of
# the N-th unit of this run (0-based) and before marking it committed: the worst moment to die.
FAULT_ENV = "TDSDIST_FAULT_KILL_BEFORE_COMMIT"
FAULT_RANK_ENV = "TDSDIST_FAULT_RANK"  # only this global rank dies (default: any that gets there)


@dataclass
class Prepared:
    """Everything known before any model loads."""

    config: ScoreConfig
    plan: Plan
    tokenizer: Any
    fingerprint: dict[str, Any]
    prefixes: dict[str, list[int]]
    """Per model, the token prefix shared by all its contexts (cached once; empty if disabled)."""
    skipped: list[str]
    """Ids of examples left out for an empty answer (`--skip-empty-answers`)."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TdsError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


def prepare(config: ScoreConfig) -> Prepared:
    """Validate the data, the templates and the tokenizers; tokenize; plan the units."""
    fields = Fields(
        config.id_field, config.instruction_field, config.input_field, config.output_field
    )
    skipped: list[str] | None = [] if config.skip_empty_answers else None
    examples = load_examples(config.data, fields, config.limit, skipped=skipped)
    if not examples:
        raise TdsError(f"{config.data}: every answer is empty: nothing to score")
    base_context = base_context_fn(config.base_template)
    tok = load_tokenizer(config.aligned, config.aligned_revision, config.trust_remote_code)
    base_tok = load_tokenizer(config.base, config.base_revision, config.trust_remote_code)
    check_same_vocabulary(tok, base_tok, config.aligned, config.base)
    if config.top_k > len(tok):
        raise TdsError(f"--top-k {config.top_k} exceeds the vocabulary size {len(tok)}")
    aligned_context = aligned_context_fn(config.aligned_template, tok, config.input_field)
    aligned_cfg = load_model_config(
        config.aligned, config.aligned_revision, config.trust_remote_code
    )
    base_cfg = load_model_config(config.base, config.base_revision, config.trust_remote_code)
    try:
        plan = make_plan(
            examples,
            tok,
            aligned_context,
            base_context,
            aligned_special_tokens=config.aligned_template == "input",
            aligned_window=model_window(aligned_cfg, tok),
            base_window=model_window(base_cfg, base_tok),
            max_output_tokens=config.max_output_tokens,
            truncate_context=config.truncate_context,
            unit_size=config.unit_size,
        )
    except TdsError as e:  # per-example problems found while tokenizing: name the data file too
        raise TdsError(f"{config.data}: {e}") from None
    fingerprint = {
        "aligned": config.aligned,
        "aligned_revision": config.aligned_revision,
        "base": config.base,
        "base_revision": config.base_revision,
        "aligned_template": template_fingerprint(config.aligned_template),
        "base_template": template_fingerprint(config.base_template),
        "top_k": config.top_k,
        "dtype": config.dtype,
        "max_output_tokens": config.max_output_tokens,
        "limit": config.limit,
        "unit_size": config.unit_size,
        "truncate_context": config.truncate_context,
        "fields": dataclasses.asdict(fields),
        "data_sha256": file_sha256(Path(config.data)),
        "tokenizer_sha256": tokenizer_hash(tok),
        "tdsdist_version": __version__,
    }
    if skipped:  # only when examples were left out: a store made without any stays resumable
        fingerprint["skipped_empty_answers"] = skipped
    prefixes = {"aligned": [], "base": []}
    if not config.no_prefix_cache:
        prefixes = {
            "aligned": shared_prefix([it.aligned_context for it in plan.items]),
            "base": shared_prefix([it.base_context for it in plan.items]),
        }
    return Prepared(config, plan, tok, fingerprint, prefixes, skipped or [])


def open_or_create_store(prep: Prepared) -> Store:
    """Resume a store made by the same configuration, or create it; refuse any other store."""
    path = Path(prep.config.store)
    if path.exists() and not prep.config.overwrite:
        return resume_store(path, prep)
    try:
        return create_store(prep)
    except StoreExists:
        return resume_store(path, prep)


def resume_store(path: Path, prep: Prepared) -> Store:
    if not path.is_dir() or not (path / "zarr.json").exists():
        raise TdsError(f"{path}: exists and is not a tdsdist store (use another --store)")
    store = Store(path)
    stored = dict(store.meta.get("fingerprint", {}))
    # A store recorded by `generate` waits for its base model: the base keys are filled in once.
    open_keys = [k for k in BASE_KEYS if recorded(store) and stored.get(k) is None]
    diffs = [
        f"{key}: {stored.get(key)!r} in the store, {value!r} now"
        for key, value in prep.fingerprint.items()
        if stored.get(key) != value and key not in open_keys
    ]
    if diffs:
        raise TdsError(
            f"{path}: the store was made with a different configuration ({'; '.join(diffs)});"
            " use --overwrite to start over"
        )
    if open_keys:
        stored.update({k: prep.fingerprint[k] for k in open_keys})
        store.root.attrs["tdsdist"] = {**store.meta, "fingerprint": stored}
        store = Store(path)
    return store


BASE_KEYS = ("base", "base_revision", "base_template")


def recorded(store: Store) -> bool:
    """Whether the aligned side was recorded during generation (`tdsdist generate --store`)."""
    return bool(store.meta.get("recorded_aligned"))


def adopt_recorded_answers(prep: Prepared, store: Store) -> Plan:
    """The plan with the generated token ids as answers: re-tokenizing the answer text need not
    give back the ids the model generated, and the base must score exactly those."""
    by_id = {it.example.id: it for it in prep.plan.items}
    missing = [i for i in store.ids if i not in by_id]
    if missing:
        raise TdsError(
            f"{prep.config.data}: example id {missing[0]!r} of the store is not in the data"
        )
    tokens = store.read("positions/token_id")
    items = [
        dataclasses.replace(by_id[i], answer=tokens[store.rows(e)].tolist())
        for e, i in enumerate(store.ids)
    ]
    size = store.meta["unit_size"]
    return Plan(items, [range(u, min(u + size, len(items))) for u in range(0, len(items), size)])


def create_store(prep: Prepared) -> Store:
    """The store's skeleton: ids, offsets, answer tokens, flags, tokenizer, fingerprint."""
    path = Path(prep.config.store)
    items = prep.plan.items
    lengths = np.array([it.positions for it in items], dtype=np.int32)
    flags = {
        "answer_truncated": np.array([it.answer_truncated for it in items], dtype=bool),
        "aligned_context_truncated": np.array(
            [it.aligned_context_truncated for it in items], dtype=bool
        ),
        "base_context_truncated": np.array([it.base_context_truncated for it in items], dtype=bool),
        "aligned_context_length": np.array(
            [len(it.aligned_context) for it in items], dtype=np.int32
        ),
        "base_context_length": np.array([len(it.base_context) for it in items], dtype=np.int32),
    }
    return create(
        path,
        ids=[it.example.id for it in items],
        lengths=lengths,
        token_ids=np.concatenate([np.asarray(it.answer, dtype=np.int32) for it in items]),
        flags=flags,
        unit_size=prep.config.unit_size,
        top_k=prep.config.top_k,
        meta={
            "fingerprint": prep.fingerprint,
            "config": dataclasses.asdict(prep.config),
            "vocab_size": len(prep.tokenizer),
            "shared_prefix_tokens": {k: len(v) for k, v in prep.prefixes.items()},
        },
        tokenizer=prep.tokenizer,
        overwrite=prep.config.overwrite,
    )


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
        a = {
            k: store.read(f"aligned/{k}", rows)
            for k in ("top_ids", "top_logprobs", "logprob", "rank", "entropy")
        }
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


def load_scorer(
    config: ScoreConfig,
    name: str,
    revision: str | None,
    vocab_size: int,
    device: torch.device,
    d: Dist,
) -> Scorer:
    """One model, whole on this rank or, under `--tp`, split across its tensor-parallel group.

    Under `--tp`, a local safetensors checkpoint whose weights must change dtype is loaded shard
    by shard, so no rank makes a converted copy of the whole model (`tp.load_sharded_for_tp`);
    otherwise the model is loaded whole on the CPU (memory-mapped files: the page cache, shared by
    the node's ranks), then split (`tp.loads_shard_by_shard` says why).
    """
    chunk = config.logits_chunk_mib << 20
    if d.dims.tp > 1:
        from tdsdist.parallel.tp import (
            TPScorer,
            load_sharded_for_tp,
            loads_shard_by_shard,
            shard_for_tp,
        )

        if revision is None and loads_shard_by_shard(name, DTYPE[config.dtype]):
            model, weight, bias, shard = load_sharded_for_tp(
                name, DTYPE[config.dtype], vocab_size, d.tp_group, d.dims.tp, d.tp_rank, device,
                config.trust_remote_code,
            )  # fmt: skip
        else:  # loaded whole on the CPU; DeepSpeed moves the shards
            model = load_model(
                name, config.dtype, torch.device("cpu"), revision, config.trust_remote_code
            )
            model, weight, bias, shard = shard_for_tp(
                model, vocab_size, d.tp_group, d.dims.tp, d.tp_rank, device
            )
        return TPScorer(
            model,
            vocab_size,
            config.top_k,
            chunk,
            config.max_tokens_per_batch,
            device,
            shard,
            (weight, bias),
        )
    model = load_model(name, config.dtype, device, revision, config.trust_remote_code)
    return Scorer(model, vocab_size, config.top_k, chunk, config.max_tokens_per_batch, device)


def run_score(config: ScoreConfig, log=print) -> dict[str, Any]:
    """Score every pending unit into the store; returns the run's timing summary.

    Under torchrun, rank 0 validates, plans and creates the store before any model loads; the
    group leaders then claim units dynamically; everyone else follows its leader.
    """
    device = resolve_device(config.device)
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    task_index, task_count = task_share(config.task_index, config.task_count)
    if config.overwrite and task_count > 1:
        raise TdsError(
            "--overwrite with several array tasks would let one task delete the others' work"
        )
    d = init_distributed(config.tp, config.dist_timeout, device)
    try:
        return _run(
            config, device, d, task_index, task_count, log if d.is_main else (lambda m: None)
        )
    finally:
        destroy(d)


def _run(
    config: ScoreConfig, device: torch.device, d: Dist, task_index: int, task_count: int, log
) -> dict[str, Any]:
    prep, store, error = None, None, ""
    if d.is_main:
        try:
            prep = prepare(config)
            store = open_or_create_store(prep)
        except TdsError as e:
            error = str(e)
    if d.distributed:  # everyone learns whether rank 0's checks passed before doing anything
        failed = broadcast_ints([1 if error else 0] if d.is_main else None, 0, None, d)[0]
        if failed:
            if d.is_main:
                raise TdsError(error)
            raise SystemExit(2)
    elif error:
        raise TdsError(error)
    if not d.is_main:
        prep, store = prepare(config), Store(config.store)  # same data, same plan: deterministic
    assert prep is not None and store is not None
    done = store.committed()
    pending = None
    if d.is_main:
        pending = [
            u.index
            for u in store.units()
            if not done[u.index] and u.index % task_count == task_index
        ]
    pending = broadcast_ints(pending, 0, None, d)
    units = store.units()
    if recorded(store):
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
        vocab = len(prep.tokenizer)
        aligned = None  # a store recorded during generation needs only the base pass
        if not recorded(store):
            aligned = load_scorer(config, config.aligned, config.aligned_revision, vocab, device, d)
            aligned.set_prefix(prep.prefixes["aligned"])
        base = load_scorer(config, config.base, config.base_revision, vocab, device, d)
        base.set_prefix(prep.prefixes["base"])
        timing["load_seconds"] = time.perf_counter() - start
        timing.update(
            _score_units(prep.plan, store, [units[i] for i in pending], aligned, base, device, d)
        )
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


def _score_units(plan, store, pending, aligned, base, device, d: Dist) -> dict[str, Any]:
    """The claim loop: leaders claim and write units, their groups follow; rank 0 shows progress."""
    fault_at = int(os.environ.get(FAULT_ENV, "-1"))
    if os.environ.get(FAULT_RANK_ENV, str(d.rank)) != str(d.rank):
        fault_at = -1
    claims = WorkClaims(d, len(pending))
    stop = StopFlag()
    bar = tqdm(
        total=2 * sum(u.positions for u in pending),
        unit="pos",
        desc="scoring",
        disable=None if d.is_main else True,
        dynamic_ncols=True,
    )
    start = time.perf_counter()
    n_done = 0
    stopped = False
    while True:
        claimed = None
        if d.is_leader:
            stopped = stop.requested
            claimed = [-1 if stopped else claims.claim()]
        index = broadcast_ints(claimed, d.leader, d.tp_group, d)[0] if d.dims.tp > 1 else claimed[0]
        if index < 0:
            break
        unit = pending[index]
        arrays = score_unit(plan, unit, aligned, base, progress=bar.update, store=store)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if d.is_leader:
            store.write_rows(unit, arrays)
            if n_done == fault_at:
                os.kill(os.getpid(), signal.SIGKILL)
            store.mark_committed(unit)
            total = claims.add_done(2 * unit.positions)
            if d.is_main:
                bar.n = max(bar.n, total)
                bar.refresh()
        n_done += 1
    bar.close()
    elapsed = time.perf_counter() - start
    positions = 0
    if d.distributed:
        dist.barrier()
        positions = claims.add_done(0) // 2
    else:
        positions = claims.done_local // 2
    return {"score_seconds": elapsed, "positions": positions, "stopped": stopped}
