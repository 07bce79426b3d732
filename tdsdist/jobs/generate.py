"""`tdsdist generate`: the aligned model writes its answers; the pair head scores them.

The published pipeline generates answers in one project and then runs the aligned model again
over them to score them. Here the answers' token ids go into the store as they were generated
(`jobs.generate_store`), and the pair head (`score`, or this job with `--base`) computes both
models' statistics over exactly those ids: decoding records the answers, nothing it would have
to compute a second time.

The job has the scoring job's shape: rank 0 checks everything and prepares before any model
loads (the pair resolved once: `jobs.pair`); the same loader, with `--tp`, and the same unit
rule; group leaders claim units dynamically (`jobs.parts`, `parallel.claims.claim_loop`). Each
finished unit is saved under `OUT.parts/` (JSON, written atomically), so an interrupted run
resumes; the answers file and the store are assembled at the end.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tdsdist.config import GenerateConfig, ScoreConfig
from tdsdist.engine.decoder import Decoder, Generated, Sampling
from tdsdist.engine.models import resolve_device
from tdsdist.engine.runner import ModelRunner
from tdsdist.errors import TdsError
from tdsdist.files import write_atomic
from tdsdist.inputs import special_text
from tdsdist.inputs.data import Fields, read_data
from tdsdist.inputs.fingerprint import generation_fingerprint
from tdsdist.inputs.plan import context_tokens
from tdsdist.jobs.generate_store import Generation, assemble, scoring_values
from tdsdist.jobs.pair import ResolvedPair
from tdsdist.jobs.parts import (
    assemble_parts,
    decode_units,
    part_path,
    pending_units,
    prepare_parts,
)
from tdsdist.jobs.score import score_on
from tdsdist.parallel.dist import Dist, any_rank, checked_on_main, destroy, init_distributed
from tdsdist.store.space import check_store_writable
from tdsdist.store.units import unit_ranges

Log = Callable[[str], None]


def run_generate(cfg: GenerateConfig, log: Log = print) -> dict[str, Any]:
    """Generate (resuming finished units), then write the answers file and the store."""
    job, notes = plan_generation(cfg, log)
    places: list[Path | str] = [job.out, job.parts, *([cfg.store] if cfg.store else [])]
    for place in places:
        check_store_writable(place)  # before minutes of model loading
    device = resolve_device(cfg.device)
    d = init_distributed(cfg.tp, cfg.dist_timeout, device)
    log = log if d.is_main else (lambda m: None)
    for note in notes:
        log(note)
    out, parts = job.out, job.parts
    # `generate --base` re-run after its answers were written: go straight to the scoring.
    answered = bool(cfg.base) and out.exists() and not parts.exists() and not cfg.overwrite
    answered = answered and Path(str(cfg.store)).exists()
    try:
        result: dict[str, Any] = {"load_seconds": 0.0, "generate_seconds": 0.0}
        runners: dict[str, ModelRunner] = {}
        if answered:
            log(f"tdsdist: {out} is complete: scoring it into {cfg.store}")
        else:
            result, runners = _generate(job, device, d, log)
        result["examples"] = len(job.examples)
        if result.get("stopped"):
            log("tdsdist: stopped on SIGTERM; re-run the same command to finish the pending units")
            return result
        if cfg.base and cfg.store:  # with an adapter and no store, --base is only its base
            aligned = cfg.aligned_adapter or cfg.aligned
            log(f"tdsdist: scoring the answers under {aligned} and {cfg.base} (pair head)")
            scored = score_on(scoring_config(cfg), device, d, log, preloaded=runners or None)
            result["score"] = scored
            if scored.get("stopped"):
                result["stopped"] = True
        return result
    finally:
        destroy(d)


def plan_generation(cfg: GenerateConfig, log: Log) -> tuple[Generation, list[str]]:
    """The prompts read, the pair resolved (the aligned side; an adapter checked against
    --base), every context tokenized and the run's fingerprint; and the notes for the log."""
    data = read_data(cfg.data, Fields(), cfg.limit, require_answer=False, format=cfg.format)
    examples, chat = data.examples, data.info.kind == "chat"
    if chat and cfg.aligned_template != "chat":
        raise TdsError(
            f"{cfg.data}: chat transcripts have no prompt field for --aligned-template"
            f" {cfg.aligned_template}: generate from them with --aligned-template chat"
        )
    for note in data.info.notes(cfg.data):
        log(note)
    pair = ResolvedPair.resolve(cfg, with_base=False)
    tokenizer = pair.tokenizer
    # A special token's text in a prompt is text (`special_text`); only such prompts change.
    contexts = [
        context_tokens(
            tokenizer, pair.aligned_context, ex, cfg.aligned_template == "input", False, True
        )
        for ex in examples
    ]
    fingerprint = generation_fingerprint(cfg, tokenizer)
    if special_text.count_with_special(
        ["\n".join(special_text.user_texts(ex)) for ex in examples], tokenizer
    ):
        fingerprint[special_text.KEY] = special_text.SPLIT  # absent: no prompt changed
    fingerprint.update(pair.fingerprint_keys())  # the adapter's (absent without one, as before)
    out = Path(cfg.out)
    job = Generation(cfg, examples, contexts, pair, out, Path(cfg.out + ".parts"), fingerprint)
    return job, pair.notes


def scoring_config(cfg: GenerateConfig) -> ScoreConfig:
    """The `score` configuration that completes the store `generate --base` recorded: its
    fingerprint is the one the recorded store was made with (`generate_store`)."""
    return ScoreConfig(data=cfg.out, skip_empty_answers=True, **scoring_values(cfg))


def _generate(
    job: Generation, device: Any, d: Dist, log: Log
) -> tuple[dict[str, Any], dict[str, ModelRunner]]:
    """Decode every pending unit and assemble; returns (timing, the runners loaded: `aligned`,
    and `base` too with an adapter, for the scoring with --base)."""
    cfg, parts = job.cfg, job.parts
    checked_on_main(d, lambda: prepare_parts(parts, job.out, cfg, job.fingerprint))
    units = unit_ranges(len(job.examples), cfg.unit_size)
    pending = pending_units(parts, len(units), d)
    log(
        f"tdsdist: {len(job.examples)} prompts, {len(units)} units ({len(units) - len(pending)}"
        f" already done, {len(pending)} to do); world {d.dims.world} = tp {d.dims.tp} x dp"
        f" {d.dims.dp}"
    )
    load_seconds, start, stopped = 0.0, time.perf_counter(), False
    runners: dict[str, ModelRunner] = {}
    if pending or cfg.base:  # with --base the aligned model is needed for the scoring anyway
        head_dtype = cfg.head_dtype or "float32"
        runners = job.pair.load(device, d, head_dtype, models=("aligned",))
        runners["aligned"].check_top_k(cfg.top_k)  # the store's, which the pair head keeps
        load_seconds = time.perf_counter() - start
        start = time.perf_counter()
    if pending:
        sampling = Sampling(cfg.max_new_tokens, cfg.temperature, cfg.top_p, tuple(cfg.stop))
        decoder = Decoder(runners["aligned"], job.tokenizer, sampling)
        todo = [(units[n], n) for n in pending]

        def decode(unit: tuple[Sequence[int], int]) -> dict[int, Generated]:
            return _generate_unit(decoder, job.contexts, unit[0], unit[1], cfg)

        def save(unit: tuple[Sequence[int], int], results: dict[int, Generated]) -> None:
            _save_unit(results, job.tokenizer, unit[0], unit[1], parts)

        stopped = decode_units(d, todo, decode, save, parts, "generating", d.dims.tp == 1)
    stopped = any_rank(d, stopped)  # also waits for every rank's last unit
    if not stopped:  # one process assembles (`assemble_parts`)
        assemble_parts(d, parts, job.out, lambda: assemble(job, len(units), log))
    # generate_seconds: decoding, saving and assembling (answers file, store); loading apart.
    result = {"load_seconds": load_seconds, "generate_seconds": time.perf_counter() - start}
    return ({**result, "stopped": True} if stopped else result), runners


def _generate_unit(
    decoder: Decoder, contexts: list[list[int]], unit: Sequence[int], n: int, cfg: GenerateConfig
) -> dict[int, Generated]:
    order = sorted(unit, key=lambda i: -len(contexts[i]))  # similar lengths: less padding
    results: dict[int, Generated] = {}
    for b in range(0, len(order), cfg.batch_size):
        batch = order[b : b + cfg.batch_size]
        # One seed per unit and batch position: a resumed run samples what a fresh one would.
        seed = cfg.seed * 1_000_003 + n * 1009 + b
        for i, g in zip(batch, decoder.generate([contexts[i] for i in batch], seed)):
            results[i] = g
    return results


def _save_unit(
    results: dict[int, Generated], tokenizer: Any, unit: Sequence[int], n: int, parts: Path
) -> None:
    """The unit's answers (ids and text): the JSON part, its commit. A part of an earlier
    release has a `.npz` of statistics beside it, which nothing reads any more."""
    records = [
        {"index": i, "ids": results[i].ids, "answer": tokenizer.decode(results[i].ids)}
        for i in unit
    ]
    write_atomic(part_path(parts, n, "json"), json.dumps(records).encode())
