"""`tdsdist nudge`: the base model writes, the aligned model steps in where the rule fires.

Nudging (Fei et al. 2025) as a job: both models decode in lockstep (`engine.lockstep`), each
under its own context, with the `engine.nudging` policy choosing per position which model picks
the token; both caches advance on it and the pair head scores every position as it is written.
So the store comes out complete (it is what `score` of the answers gives with the same contexts)
and it records per position which model chose the token (`positions/nudged`).

The job is `generate`'s (`jobs/generate.py`): rank 0 checks and prepares, parts under
`OUT.parts/` per unit (its `_prepare_parts`, `_part`, claim loop), resumable; rank 0 assembles the
answers file (just-eval JSON with each answer's nudged fraction) and the store. With `--compare`
each unit also decodes the base-only answers (threshold 0) and keeps the aligned model's
log-probability of their tokens, for the likelihood comparison in `analyze`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from tdsdist import __version__
from tdsdist.config import PAIR_SECTIONS, NudgeConfig, ScoreConfig
from tdsdist.engine.decoder import end_of_answer_ids
from tdsdist.engine.lockstep import LockstepDecoder, LockstepRequest
from tdsdist.engine.models import resolve_device
from tdsdist.engine.nudging import Nudging
from tdsdist.engine.pair_head import PairOutput
from tdsdist.errors import TdsError
from tdsdist.files import file_sha256, write_atomic
from tdsdist.inputs import special_text
from tdsdist.inputs.data import Fields, read_data
from tdsdist.inputs.fingerprint import (
    data_sha256,
    fingerprinted_head_dtype,
    options_fingerprint,
    score_fingerprint,
)
from tdsdist.inputs.plan import context_tokens
from tdsdist.inputs.templates import aligned_context_fn, base_context_fn
from tdsdist.inputs.tokenizer import compare_vocabularies, load_tokenizer, tokenizer_hash
from tdsdist.jobs.generate import _generate_units, _kept_fields, _part, _prepare_parts
from tdsdist.metrics import topk_kl
from tdsdist.options import section_values
from tdsdist.parallel.dist import (
    Dist,
    any_rank,
    broadcast_ints,
    checked_on_main,
    destroy,
    init_distributed,
)
from tdsdist.parallel.loading import load_runner
from tdsdist.store import create
from tdsdist.store.contexts import ExampleContexts
from tdsdist.store.fields import ExampleFields, Writers
from tdsdist.store.space import check_store_writable
from tdsdist.store.units import unit_ranges
from tdsdist.topk_metrics import stored_arrays as published_arrays

#: What the answers file records about how each answer was decoded.
SETTINGS = (
    "aligned",
    "base",
    "aligned_template",
    "base_template",
    "nudge_rule",
    "nudge_threshold",
    "max_new_tokens",
    "temperature",
    "top_p",
    "seed",
)


@dataclasses.dataclass
class Nudged:
    """One answer: its ids, which model chose each (`nudged`), the pair head's arrays by store
    name, and with `--compare` the base-only answer's ids and aligned log-probabilities."""

    ids: list[int]
    nudged: list[bool]
    arrays: dict[str, np.ndarray]
    base_only: list[int] | None = None
    base_only_aligned_logprob: list[float] | None = None


class NudgeDecoder:
    """The models, the rule and the tokenizer of one job: decodes a unit's prompts."""

    def __init__(self, runners: dict, tokenizer, cfg: NudgeConfig, end_ids: set[int]) -> None:
        self.runners, self.tokenizer, self.cfg, self.end_ids = runners, tokenizer, cfg, end_ids

    def decode(
        self, contexts: dict[int, dict[str, list[int]]], rule: str, threshold: float
    ) -> dict[int, tuple[list[int], list[bool], dict[str, np.ndarray]]]:
        """Every prompt of `contexts` (index -> both contexts), `batch_size` at a time in one
        running batch (a finished answer's slot goes to the next prompt at once)."""
        cfg, policy = self.cfg, Nudging(rule, threshold)
        decoder = LockstepDecoder(
            self.runners["aligned"],
            self.runners["base"],
            cfg.top_k,
            cfg.logits_chunk_mib << 20,
            self.end_ids,
            policy,
        )
        # One seed per prompt: a resumed run (or another batching) samples what a fresh one would.
        queue = [
            LockstepRequest(
                str(i), c, cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.seed * 1_000_003 + i
            )
            for i, c in contexts.items()
        ]
        rows: dict[str, list[PairOutput]] = {r.id: [] for r in queue}
        flags: dict[str, list[bool]] = {r.id: [] for r in queue}
        requests = {r.id: r for r in queue}
        while queue or len(decoder):
            while queue and len(decoder) < cfg.batch_size:
                decoder.add(queue.pop(0))
            outputs = decoder.step()
            chosen = policy.last_nudged.tolist()  # [B] in the step's row order, as `outputs`
            for out, nudged in zip(outputs, chosen):
                if out.token is not None:
                    rows[out.id].append(out.stats)
                    flags[out.id].append(bool(nudged))
        return {int(i): (requests[i].tokens, flags[i], _arrays(rows[i])) for i in rows}


def _arrays(rows: list[PairOutput]) -> dict[str, np.ndarray]:
    """The store's arrays of one answer (empty answer: no arrays)."""
    if not rows:
        return {}
    arrays = PairOutput.cat(rows).arrays()
    arrays["positions/kl"] = topk_kl(
        arrays["aligned/top_logprobs"], arrays["base/logprobs_at_aligned_top"]
    )
    return arrays


def _nudge_unit(decoder: NudgeDecoder, contexts, unit, n, cfg: NudgeConfig) -> dict[int, Nudged]:
    """A unit's answers (the `decode` of `generate`'s claim loop)."""
    mine = {i: contexts[i] for i in unit}
    got = decoder.decode(mine, cfg.nudge_rule, cfg.nudge_threshold)
    results = {i: Nudged(*got[i]) for i in unit}
    if cfg.compare:  # the base model alone: threshold 0, the same prompts and seeds
        for i, (ids, _, arrays) in decoder.decode(mine, "threshold", 0.0).items():
            results[i].base_only = ids
            lp = arrays.get("aligned/logprob", np.zeros(0, np.float32))
            results[i].base_only_aligned_logprob = [float(x) for x in lp]
    return results


def _save_unit(results: dict[int, Nudged], tokenizer, unit, n: int, parts: Path) -> None:
    records = []
    for i in unit:
        r = results[i]
        rec: dict[str, Any] = {
            "index": i,
            "ids": r.ids,
            "answer": tokenizer.decode(r.ids),
            "nudged": [int(x) for x in r.nudged],
        }
        if r.base_only is not None:
            rec.update(
                base_only_ids=r.base_only,
                base_only_answer=tokenizer.decode(r.base_only),
                base_only_aligned_logprob=r.base_only_aligned_logprob,
            )
        records.append(rec)
    arrays = {f"{name}@{i}": v for i in unit for name, v in results[i].arrays.items()}
    tmp = _part(parts, n, "npz.tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(_part(parts, n, "npz"))
    write_atomic(_part(parts, n, "json"), json.dumps(records).encode())  # last: the commit


def nudge_fingerprint(cfg: NudgeConfig, tokenizer) -> dict[str, Any]:
    """What nudged answers depend on (`NudgeConfig`'s fingerprinted options): an unfinished
    `nudge` resumes only with the same."""
    return {
        **options_fingerprint(NudgeConfig, vars(cfg)),
        "data_sha256": data_sha256(cfg.data),
        "tokenizer_sha256": tokenizer_hash(tokenizer),
        "tdsdist_version": __version__,
    }


def run_nudge(cfg: NudgeConfig, log=print) -> dict[str, Any]:
    """Decode (resuming finished units), then write the answers file and the store."""
    data = read_data(cfg.data, Fields(), cfg.limit, require_answer=False, format=cfg.format)
    examples = data.examples
    if data.info.kind == "chat" and cfg.aligned_template != "chat":
        raise TdsError(
            f"{cfg.data}: chat transcripts have no prompt field for --aligned-template"
            f" {cfg.aligned_template}: nudge from them with --aligned-template chat"
        )
    for note in data.info.notes(cfg.data):
        log(note)
    tokenizer = load_tokenizer(cfg.aligned, cfg.aligned_revision, cfg.trust_remote_code)
    base_tok = load_tokenizer(cfg.base, cfg.base_revision, cfg.trust_remote_code)
    if compare_vocabularies(tokenizer, base_tok, cfg.aligned, cfg.base) is not None:
        raise TdsError(
            f"{cfg.aligned} appends tokens to the vocabulary of {cfg.base}: nudging needs one"
            " vocabulary (either model may choose any token)"
        )
    if cfg.top_k > len(tokenizer):
        raise TdsError(f"--top-k {cfg.top_k} exceeds the vocabulary size {len(tokenizer)}")
    aligned_fn, base_fn = (
        aligned_context_fn(cfg.aligned_template, tokenizer),
        base_context_fn(cfg.base_template),
    )
    contexts = []
    for ex in examples:  # as `generate` (aligned) and `score`'s plan (base) tokenize them
        both = {
            "aligned": context_tokens(
                tokenizer, aligned_fn, ex, cfg.aligned_template == "input", False, True
            ),
            "base": context_tokens(base_tok, base_fn, ex, True, False, True),
        }
        if not both["aligned"] or not both["base"]:
            raise TdsError(f"{cfg.data}: example {ex.index} (id {ex.id!r}): an empty context")
        contexts.append(both)
    out, parts = Path(cfg.out), Path(cfg.out + ".parts")
    fingerprint = nudge_fingerprint(cfg, tokenizer)
    if special_text.count_with_special(
        ["\n".join(special_text.user_texts(ex)) for ex in examples], tokenizer
    ):
        fingerprint[special_text.KEY] = special_text.SPLIT  # absent: no prompt changed
    for place in (out, parts, cfg.store):
        check_store_writable(place)  # before minutes of model loading
    device = resolve_device(cfg.device)
    d = init_distributed(cfg.tp, cfg.dist_timeout, device)
    log = log if d.is_main else (lambda m: None)
    try:
        return _nudge(cfg, examples, contexts, tokenizer, out, parts, fingerprint, device, d, log)
    finally:
        destroy(d)


def _nudge(cfg, examples, contexts, tokenizer, out, parts, fingerprint, device, d: Dist, log):
    def prepare() -> None:
        if Path(cfg.store).exists() and not cfg.overwrite and not parts.exists():
            raise TdsError(f"{cfg.store}: already exists (use --overwrite to nudge again)")
        _prepare_parts(parts, out, cfg, fingerprint)

    checked_on_main(d, prepare)
    units = unit_ranges(len(examples), cfg.unit_size)
    pending = None
    if d.is_main:
        pending = [n for n in range(len(units)) if not _part(parts, n, "json").exists()]
    pending = broadcast_ints(pending, 0, None, d)
    log(
        f"tdsdist: {len(examples)} prompts, {len(units)} units ({len(units) - len(pending)}"
        f" already done, {len(pending)} to do); world {d.dims.world} = tp {d.dims.tp} x dp"
        f" {d.dims.dp}; rule {cfg.nudge_rule}"
        + (f" {cfg.nudge_threshold}" if cfg.nudge_rule == "threshold" else "")
    )
    load_seconds, start, stopped = 0.0, time.perf_counter(), False
    if pending:
        kwargs = dict(
            dtype=cfg.dtype,
            vocab_size=len(tokenizer),
            device=device,
            d=d,
            trust_remote_code=cfg.trust_remote_code,
            head_dtype=cfg.head_dtype or "float32",
        )
        runners = {
            "aligned": load_runner(cfg.aligned, cfg.aligned_revision, **kwargs),
            "base": load_runner(cfg.base, cfg.base_revision, **kwargs),
        }
        # Whichever model writes an end-of-answer token ends the answer.
        end_ids = end_of_answer_ids(runners["aligned"].model, tokenizer)
        end_ids |= end_of_answer_ids(runners["base"].model, tokenizer)
        decoder = NudgeDecoder(runners, tokenizer, cfg, end_ids)
        load_seconds = time.perf_counter() - start
        start = time.perf_counter()
        todo = [units[n] for n in pending]
        stopped = _generate_units(
            decoder, contexts, todo, pending, parts, cfg, d, _nudge_unit, _save_unit, "nudging"
        )
    stopped = any_rank(d, stopped)
    result: dict[str, Any] = {"examples": len(examples)}
    if not stopped:
        made = checked_on_main(
            d,
            lambda: _assemble(
                examples, contexts, units, parts, out, cfg, tokenizer, fingerprint, log
            ),
        )
        result.update(made or {})
    result.update(load_seconds=load_seconds, nudge_seconds=time.perf_counter() - start)
    if stopped:
        log("tdsdist: stopped on SIGTERM; re-run the same command to finish the pending units")
        result["stopped"] = True
    return result


def _read_parts(units, parts: Path) -> tuple[dict[int, dict], dict[int, dict[str, np.ndarray]]]:
    answers: dict[int, dict[str, Any]] = {}
    arrays: dict[int, dict[str, np.ndarray]] = {}
    for n, _ in enumerate(units):
        for rec in json.loads(_part(parts, n, "json").read_text()):
            answers[rec["index"]] = rec
        with np.load(_part(parts, n, "npz"), allow_pickle=False) as z:
            for key in z.files:
                name, i = key.rsplit("@", 1)
                arrays.setdefault(int(i), {})[name] = z[key]
    return answers, arrays


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _assemble(
    examples, contexts, units, parts, out, cfg: NudgeConfig, tokenizer, fingerprint, log
) -> dict:
    """The answers file, then the store (complete: every unit written and committed)."""
    answers, arrays = _read_parts(units, parts)
    settings = {k: getattr(cfg, k) for k in SETTINGS}
    kept = _kept_fields(cfg, examples)
    records = []
    for j, ex in enumerate(examples):
        a = answers[ex.index]
        fraction = float(np.mean(a["nudged"])) if a["nudged"] else 0.0
        extra: dict[str, Any] = {
            "nudged_fraction": fraction,
            "nudged_tokens": int(sum(a["nudged"])),
        }
        if cfg.compare:
            extra["base_only_output"] = a["base_only_answer"]
        record: dict[str, Any] = {"id": ex.id}
        if ex.messages is None:
            record.update(
                pure_input=ex.instruction,
                input=tokenizer.decode(contexts[ex.index]["aligned"]),
                output=[a["answer"]],
            )
        else:
            record["messages"] = [*ex.messages, {"role": "assistant", "content": a["answer"]}]
        record.update(generator=settings, **extra)
        record.update({k: v[j] for k, v in kept.items() if v[j] is not None})
        records.append(record)
    write_atomic(out, json.dumps(records, ensure_ascii=False, indent=1).encode("utf-8"))
    log(f"tdsdist: wrote {len(records)} nudged answers to {out}")
    kept_ex = [ex for ex in examples if answers[ex.index]["ids"]]
    if not kept_ex:
        raise TdsError(f"{out}: every answer is empty, so no store was recorded")
    empty = [ex.id for ex in examples if not answers[ex.index]["ids"]]
    if empty:
        log(f"tdsdist: {len(empty)} empty answers (e.g. id {empty[0]!r}) are not in the store")
    flags = [answers[ex.index]["nudged"] for ex in kept_ex]
    summary: dict[str, Any] = {
        "nudged_tokens": int(sum(map(sum, flags))),
        "tokens": int(sum(map(len, flags))),
    }
    summary["nudged_fraction"] = summary["nudged_tokens"] / summary["tokens"]
    per_example = {"nudged_logprob": [], "base_only_logprob": []}
    if cfg.compare:  # the aligned model's mean log-probability per token, of each answer
        for ex in examples:
            a = answers[ex.index]
            lp = arrays.get(ex.index, {}).get("aligned/logprob")
            per_example["nudged_logprob"].append(float(np.mean(lp)) if lp is not None else None)
            base = a["base_only_aligned_logprob"]
            per_example["base_only_logprob"].append(float(np.mean(base)) if base else None)
        summary["compare"] = {
            k: _mean([v for v in vs if v is not None]) for k, vs in per_example.items()
        }
    _write_store(
        kept_ex,
        answers,
        arrays,
        contexts,
        out,
        cfg,
        tokenizer,
        empty,
        summary,
        per_example,
        examples,
        fingerprint,
    )
    log(
        f"tdsdist: wrote the pair head's store {cfg.store} ({summary['nudged_fraction']:.1%} of"
        f" {summary['tokens']} tokens nudged)"
    )
    shutil.rmtree(parts)
    return summary


def _write_store(
    kept,
    answers,
    arrays,
    contexts,
    out,
    cfg,
    tokenizer,
    empty,
    summary,
    per_example,
    examples,
    generation,
) -> None:
    """The store `score` of the answers file makes with the same contexts (its fingerprint too,
    base template included), complete, plus `positions/nudged` and the rule in `nudge`."""
    answers_sha256 = file_sha256(out)
    # As `score` will compute it for the answers file (the pair's own options, no cut).
    scoring = {**section_values(cfg, *PAIR_SECTIONS), "unit_size": cfg.unit_size}
    fingerprint = score_fingerprint(
        options_fingerprint(ScoreConfig, scoring),
        fields=Fields(),
        data_sha256=answers_sha256,
        tokenizer=tokenizer,
        skipped_empty_answers=empty,
        head_dtype=fingerprinted_head_dtype(cfg.dtype, cfg.head_dtype or "float32"),
    )
    if any(ex.messages is not None for ex in kept):
        fingerprint.update(data_format="json/chat", turns="last")
    lengths = np.array([len(answers[ex.index]["ids"]) for ex in kept], dtype=np.int32)
    flags = {"answer_truncated": lengths >= cfg.max_new_tokens}
    if cfg.compare:  # per example, where the likelihood comparison reads them
        index = {ex.index: j for j, ex in enumerate(examples)}
        for k, vs in per_example.items():
            flags[f"aligned_mean_{k}"] = np.array(
                [np.nan if (v := vs[index[ex.index]]) is None else v for ex in kept], np.float32
            )
    store = create(
        Path(cfg.store),
        ids=[ex.id for ex in kept],
        lengths=lengths,
        token_ids=np.concatenate([np.asarray(answers[ex.index]["ids"], np.int32) for ex in kept]),
        flags=flags,
        unit_size=cfg.unit_size,
        top_k=cfg.top_k,
        meta={
            "fingerprint": fingerprint,
            # The answers' ids as decoded (their text need not re-tokenize to them): `score`
            # re-scores a unit of this store (`verify --repair`) on these ids, as it does for
            # `generate --store`.
            "recorded_aligned": {"generation": generation, "answers_sha256": answers_sha256},
            "nudge": {
                "rule": cfg.nudge_rule,
                "threshold": cfg.nudge_threshold,
                "answers_sha256": answers_sha256,
                **summary,
            },
            "vocab_size": len(tokenizer),
            "config": {"aligned": cfg.aligned, "base": cfg.base, "nudge": dataclasses.asdict(cfg)},
        },
        tokenizer=tokenizer,
        # `prepare` refused a store there without this run's parts: one there now is this run's,
        # published by an assembly killed before it removed the parts. Made again from them.
        overwrite=True,
        contexts=Writers(
            (
                ExampleContexts(
                    [ex.instruction for ex in kept],
                    [contexts[ex.index]["aligned"] for ex in kept],
                    [contexts[ex.index]["base"] for ex in kept],
                ),
                ExampleFields(_kept_fields(cfg, kept)),
            )
        ),
        nudged=True,
    )
    for unit in store.units():
        members = [kept[e].index for e in unit.examples]
        unit_arrays = {
            name: np.concatenate([arrays[i][name] for i in members]) for name in arrays[members[0]]
        }
        unit_arrays.update(published_arrays(unit_arrays))
        unit_arrays["positions/nudged"] = np.concatenate(
            [np.asarray(answers[i]["nudged"], np.int8) for i in members]
        )
        store.write_rows(unit, unit_arrays)
        store.mark_committed(unit)
