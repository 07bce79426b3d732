"""`tdsdist nudge`: the base model writes, the aligned model steps in where the rule fires.

Nudging (Fei et al. 2025) as a job: both models decode in lockstep (`engine.lockstep`), each
under its own context, with the `engine.nudging` policy choosing per position which model picks
the token; both caches advance on it and the pair head scores every position as it is written.
So the store comes out complete (it is what `score` of the answers gives with the same contexts)
and it records per position which model chose the token (`positions/nudged`).

The job is `generate`'s: rank 0 checks and prepares (the pair resolved once: `jobs.pair`), parts
under `OUT.parts/` per unit (`jobs.parts`: claim loop, resumable), the units decoded by
`jobs.nudge_units`; rank 0 assembles the answers file (just-eval JSON with each answer's nudged
fraction) and the store (`jobs.nudge_store`). With `--compare` each unit also decodes the
base-only answers (threshold 0) and keeps the aligned model's log-probability of their tokens,
for the likelihood comparison in `analyze`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tdsdist import __version__
from tdsdist.config import NudgeConfig
from tdsdist.engine.decoder import end_of_answer_ids
from tdsdist.engine.models import resolve_device
from tdsdist.errors import TdsError
from tdsdist.inputs import special_text
from tdsdist.inputs.data import Fields, read_data
from tdsdist.inputs.fingerprint import data_sha256, options_fingerprint
from tdsdist.inputs.plan import context_tokens
from tdsdist.inputs.tokenizer import tokenizer_hash
from tdsdist.jobs import nudge_units
from tdsdist.jobs.nudge_store import NudgeRun, assemble
from tdsdist.jobs.pair import ResolvedPair
from tdsdist.jobs.parts import assemble_parts, decode_units, pending_units, prepare_parts
from tdsdist.parallel.dist import Dist, any_rank, checked_on_main, destroy, init_distributed
from tdsdist.store.space import check_store_writable
from tdsdist.store.units import unit_ranges

Log = Callable[[str], None]


def nudge_fingerprint(cfg: NudgeConfig, tokenizer: Any) -> dict[str, Any]:
    """What nudged answers depend on (`NudgeConfig`'s fingerprinted options): an unfinished
    `nudge` resumes only with the same."""
    return {
        **options_fingerprint(NudgeConfig, vars(cfg)),
        "data_sha256": data_sha256(cfg.data),
        "tokenizer_sha256": tokenizer_hash(tokenizer),
        "tdsdist_version": __version__,
    }


def run_nudge(cfg: NudgeConfig, log: Log = print) -> dict[str, Any]:
    """Decode (resuming finished units), then write the answers file and the store."""
    job = plan_nudge(cfg, log)
    for place in (job.out, job.parts, cfg.store):
        check_store_writable(place)  # before minutes of model loading
    device = resolve_device(cfg.device)
    d = init_distributed(cfg.tp, cfg.dist_timeout, device)
    log = log if d.is_main else (lambda m: None)
    try:
        return _nudge(job, device, d, log)
    finally:
        destroy(d)


def plan_nudge(cfg: NudgeConfig, log: Log) -> NudgeRun:
    """The prompts read, the pair resolved (one vocabulary), both contexts of every prompt
    tokenized and the run's fingerprint."""
    data = read_data(cfg.data, Fields(), cfg.limit, require_answer=False, format=cfg.format)
    examples = data.examples
    if data.info.kind == "chat" and cfg.aligned_template != "chat":
        raise TdsError(
            f"{cfg.data}: chat transcripts have no prompt field for --aligned-template"
            f" {cfg.aligned_template}: nudge from them with --aligned-template chat"
        )
    for note in data.info.notes(cfg.data):
        log(note)
    pair = ResolvedPair.resolve(cfg)
    if pair.union is not None:
        raise TdsError(
            f"{cfg.aligned} appends tokens to the vocabulary of {cfg.base}: nudging needs one"
            " vocabulary (either model may choose any token)"
        )
    tokenizer, base_tok = pair.tokenizer, pair.base_tokenizer
    assert pair.base_context is not None  # resolved with the base
    contexts = []
    for ex in examples:  # as `generate` (aligned) and `score`'s plan (base) tokenize them
        both = {
            "aligned": context_tokens(
                tokenizer, pair.aligned_context, ex, cfg.aligned_template == "input", False, True
            ),
            "base": context_tokens(base_tok, pair.base_context, ex, True, False, True),
        }
        if not both["aligned"] or not both["base"]:
            raise TdsError(f"{cfg.data}: example {ex.index} (id {ex.id!r}): an empty context")
        contexts.append(both)
    fingerprint = nudge_fingerprint(cfg, tokenizer)
    if special_text.count_with_special(
        ["\n".join(special_text.user_texts(ex)) for ex in examples], tokenizer
    ):
        fingerprint[special_text.KEY] = special_text.SPLIT  # absent: no prompt changed
    out, parts = Path(cfg.out), Path(cfg.out + ".parts")
    return NudgeRun(cfg, examples, contexts, pair, out, parts, fingerprint)


def _nudge(job: NudgeRun, device: Any, d: Dist, log: Log) -> dict[str, Any]:
    cfg, parts = job.cfg, job.parts

    def prepare() -> None:
        if Path(cfg.store).exists() and not cfg.overwrite and not parts.exists():
            raise TdsError(f"{cfg.store}: already exists (use --overwrite to nudge again)")
        prepare_parts(parts, job.out, cfg, job.fingerprint)

    checked_on_main(d, prepare)
    units = unit_ranges(len(job.examples), cfg.unit_size)
    pending = pending_units(parts, len(units), d)
    log(
        f"tdsdist: {len(job.examples)} prompts, {len(units)} units ({len(units) - len(pending)}"
        f" already done, {len(pending)} to do); world {d.dims.world} = tp {d.dims.tp} x dp"
        f" {d.dims.dp}; rule {cfg.nudge_rule}"
        + (f" {cfg.nudge_threshold}" if cfg.nudge_rule == "threshold" else "")
    )
    load_seconds, start, stopped = 0.0, time.perf_counter(), False
    if pending:
        runners = job.pair.load(device, d, cfg.head_dtype or "float32")
        # Whichever model writes an end-of-answer token ends the answer.
        end_ids = end_of_answer_ids(runners["aligned"].model, job.tokenizer)
        end_ids |= end_of_answer_ids(runners["base"].model, job.tokenizer)
        decoder = nudge_units.NudgeDecoder(runners, job.tokenizer, cfg, end_ids)
        load_seconds = time.perf_counter() - start
        start = time.perf_counter()

        def decode(unit: tuple[Sequence[int], int]) -> dict[int, nudge_units.Nudged]:
            return nudge_units.decode_unit(decoder, job.contexts, unit[0], unit[1], cfg)

        def save(unit: tuple[Sequence[int], int], results: dict[int, nudge_units.Nudged]) -> None:
            nudge_units.save_unit(results, job.tokenizer, unit[0], unit[1], parts)

        todo = [(units[n], n) for n in pending]
        stopped = decode_units(d, todo, decode, save, parts, "nudging", by_file=False)
    stopped = any_rank(d, stopped)
    result: dict[str, Any] = {"examples": len(job.examples)}
    if not stopped:
        made = assemble_parts(d, parts, job.out, lambda: assemble(job, len(units), log))
        result.update(made or {})
    result.update(load_seconds=load_seconds, nudge_seconds=time.perf_counter() - start)
    if stopped:
        log("tdsdist: stopped on SIGTERM; re-run the same command to finish the pending units")
        result["stopped"] = True
    return result
