"""The end of a `generate` run: its answers file, and the store that waits for the pair head.

The store records the answers (their token ids as generated, which re-tokenizing the text need
not give back), the flags and contexts `score` keeps, and the fingerprint `score` will compute
for the answers file; its per-position statistics are left to the pair head, which computes both
models' over those ids (`score`, or `generate --base` in the same job).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tdsdist.config import PAIR_SECTIONS, Decoding, GenerateConfig, ScoreConfig, Stops
from tdsdist.errors import TdsError
from tdsdist.files import file_sha256
from tdsdist.inputs import special_text
from tdsdist.inputs.data import Fields
from tdsdist.inputs.fingerprint import (
    BASE_KEYS,
    fingerprinted_head_dtype,
    options_fingerprint,
    score_fingerprint,
)
from tdsdist.jobs.parts import DecodingRun, answer_records, kept_fields, part_path, write_answers
from tdsdist.options import fingerprint_fields, section_values
from tdsdist.store import create
from tdsdist.store.contexts import ExampleContexts
from tdsdist.store.fields import ExampleFields, Writers

#: What the answers file records about how each answer was generated: the model, its template
#: and the decoding options that change the answers (the fingerprinted ones of `Decoding`, `Stops`).
SETTINGS = (
    "aligned",
    "aligned_template",
    *fingerprint_fields(Decoding),
    *fingerprint_fields(Stops),
)


#: One `generate` run: its prompts' aligned contexts are token ids.
Generation = DecodingRun[GenerateConfig, list[int]]


def scoring_values(cfg: GenerateConfig) -> dict[str, Any]:
    """The options `score` completes the store with: the pair's sections as generated (the data
    is the answers file as written: no limit, format or fields of the prompts), into --store,
    resumed (never overwritten: `generate` just made it), unit for unit."""
    return {**section_values(cfg, *PAIR_SECTIONS), "store": cfg.store, "unit_size": cfg.unit_size}


def assemble(job: Generation, units: int, log: Callable[[str], None]) -> None:
    """The answers file from every unit's part, then the store, then the parts removed."""
    cfg, tokenizer = job.cfg, job.tokenizer
    answers: dict[int, dict[str, Any]] = {}
    for n in range(units):
        for rec in json.loads(part_path(job.parts, n, "json").read_text()):
            answers[rec["index"]] = rec
    settings = {k: getattr(cfg, k) for k in SETTINGS}
    if cfg.aligned_adapter:  # absent without one, as before
        settings.update(aligned_adapter=cfg.aligned_adapter, base=cfg.base)
    records = answer_records(
        job.examples,
        {i: a["answer"] for i, a in answers.items()},
        {ex.index: tokenizer.decode(job.contexts[ex.index]) for ex in job.examples},
        settings,
        kept_fields(cfg, job.examples),  # the prompts' metadata, for score to keep in turn
    )
    write_answers(job.out, records)
    log(f"tdsdist: wrote {len(records)} answers to {job.out}")
    empty = [ex.id for ex in job.examples if not answers[ex.index]["ids"]]
    if cfg.store and len(empty) < len(job.examples):
        if empty:
            log(
                f"tdsdist: {len(empty)} empty answers (e.g. id {empty[0]!r}) are not recorded in the"
                " store; score the answers with --skip-empty-answers"
            )
        record_answers(job, {i: a["ids"] for i, a in answers.items()}, empty)
        log(f"tdsdist: recorded the answers in {cfg.store}, for the pair head to score")
    shutil.rmtree(job.parts)
    if cfg.store and len(empty) == len(job.examples):
        raise TdsError(f"{job.out}: every generated answer is empty, so no store was recorded")


def record_answers(job: Generation, answers: dict[int, list[int]], empty: list[str]) -> None:
    """A store of the non-empty answers whose units wait for the pair head (`score`).

    Its fingerprint is the one `score` will compute for the answers file (base keys open), so
    that score resumes it; the empty answers are listed as `score --skip-empty-answers` lists
    them. It keeps each instruction and the aligned context the answer was generated from (the
    base context follows when `score` names the base template)."""
    cfg, tokenizer = job.cfg, job.tokenizer
    assert cfg.store is not None
    kept = [ex for ex in job.examples if answers[ex.index]]
    lengths = np.array([len(answers[ex.index]) for ex in kept], dtype=np.int32)
    answers_sha256 = file_sha256(job.out)
    options = options_fingerprint(ScoreConfig, {**scoring_values(cfg), **dict.fromkeys(BASE_KEYS)})
    fingerprint = score_fingerprint(
        options,
        fields=Fields(),
        data_sha256=answers_sha256,
        tokenizer=tokenizer,
        skipped_empty_answers=empty,
        head_dtype=fingerprinted_head_dtype(cfg.dtype, cfg.head_dtype or "float32"),
    )
    if any(ex.messages is not None for ex in job.examples):  # as `score` reads the answers file
        fingerprint.update(data_format="json/chat", turns="last")
    fingerprint[special_text.KEY] = special_text.SPLIT  # as `prepare` records a new store's
    fingerprint.update(job.pair.fingerprint_keys())  # as `prepare` records an adapter's
    create(
        Path(cfg.store),
        ids=[ex.id for ex in kept],
        lengths=lengths,
        token_ids=np.concatenate([np.asarray(answers[ex.index], np.int32) for ex in kept]),
        flags={"answer_truncated": lengths >= cfg.max_new_tokens},
        unit_size=cfg.unit_size,
        top_k=cfg.top_k,
        meta={
            "fingerprint": fingerprint,
            # `score` takes the answers' ids from the store, as generated (`resume.py`).
            "recorded_aligned": {"generation": job.fingerprint, "answers_sha256": answers_sha256},
            "vocab_size": len(tokenizer),
            "config": {"aligned": cfg.aligned, "generate": dataclasses.asdict(cfg)},
        },
        tokenizer=tokenizer,
        overwrite=cfg.overwrite,
        contexts=Writers(
            (
                ExampleContexts(
                    [ex.instruction for ex in kept], [job.contexts[ex.index] for ex in kept], None
                ),
                ExampleFields(kept_fields(cfg, kept)),
            )
        ),
    )
