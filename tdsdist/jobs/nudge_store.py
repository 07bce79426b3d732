"""The end of a `nudge` run: the answers file (each answer's nudged fraction) and the store.

The store is complete: the pair head's arrays of every position were computed while decoding
(`jobs.nudge_units`), so it is what `score` of the answers file makes with the same contexts
(its fingerprint too), plus which model chose each token (`positions/nudged`).
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tdsdist.config import PAIR_SECTIONS, NudgeConfig, ScoreConfig
from tdsdist.errors import TdsError
from tdsdist.files import file_sha256
from tdsdist.inputs.data import Example, Fields
from tdsdist.inputs.fingerprint import (
    fingerprinted_head_dtype,
    options_fingerprint,
    score_fingerprint,
)
from tdsdist.jobs.nudge_units import read_parts
from tdsdist.jobs.parts import DecodingRun, answer_records, kept_fields, write_answers
from tdsdist.options import section_values
from tdsdist.store import create
from tdsdist.store.contexts import ExampleContexts
from tdsdist.store.fields import ExampleFields, Writers
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


#: One `nudge` run: both models' contexts of each prompt (token ids, by model).
NudgeRun = DecodingRun[NudgeConfig, dict[str, list[int]]]


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def assemble(job: NudgeRun, units: int, log: Callable[[str], None]) -> dict[str, Any]:
    """The answers file, then the store (complete: every unit written and committed)."""
    cfg, examples, out = job.cfg, job.examples, job.out
    answers, arrays = read_parts(units, job.parts)
    settings = {k: getattr(cfg, k) for k in SETTINGS}
    extra: dict[int, dict[str, Any]] = {}
    for ex in examples:
        a = answers[ex.index]
        extra[ex.index] = {
            "nudged_fraction": float(np.mean(a["nudged"])) if a["nudged"] else 0.0,
            "nudged_tokens": int(sum(a["nudged"])),
        }
        if cfg.compare:
            extra[ex.index]["base_only_output"] = a["base_only_answer"]
    records = answer_records(
        examples,
        {i: a["answer"] for i, a in answers.items()},
        {ex.index: job.tokenizer.decode(job.contexts[ex.index]["aligned"]) for ex in examples},
        settings,
        kept_fields(cfg, examples),
        extra,
    )
    write_answers(out, records)
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
    per_example: dict[str, list[float | None]] = {"nudged_logprob": [], "base_only_logprob": []}
    if cfg.compare:  # the aligned model's mean log-probability per token, of each answer
        for ex in examples:
            a = answers[ex.index]
            lp = arrays.get(ex.index, {}).get("aligned/logprob")
            per_example["nudged_logprob"].append(float(np.mean(lp)) if lp is not None else None)
            base = a["base_only_aligned_logprob"]
            per_example["base_only_logprob"].append(float(np.mean(base)) if base else None)
        summary["compare"] = {
            k: _mean([float(v) for v in vs if v is not None]) for k, vs in per_example.items()
        }
    _write_store(job, kept_ex, answers, arrays, empty, summary, per_example)
    log(
        f"tdsdist: wrote the pair head's store {cfg.store} ({summary['nudged_fraction']:.1%} of"
        f" {summary['tokens']} tokens nudged)"
    )
    shutil.rmtree(job.parts)
    return summary


def _write_store(
    job: NudgeRun,
    kept: list[Example],
    answers: dict[int, dict[str, Any]],
    arrays: dict[int, dict[str, np.ndarray]],
    empty: list[str],
    summary: dict[str, Any],
    per_example: dict[str, list[float | None]],
) -> None:
    """The store `score` of the answers file makes with the same contexts (its fingerprint too,
    base template included), complete, plus `positions/nudged` and the rule in `nudge`."""
    cfg, tokenizer, contexts = job.cfg, job.tokenizer, job.contexts
    answers_sha256 = file_sha256(job.out)
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
        index = {ex.index: j for j, ex in enumerate(job.examples)}
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
            "recorded_aligned": {"generation": job.fingerprint, "answers_sha256": answers_sha256},
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
                ExampleFields(kept_fields(cfg, kept)),
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
