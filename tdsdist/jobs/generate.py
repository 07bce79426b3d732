"""`tdsdist generate`: the aligned model writes its answers and records its own distributions.

The published pipeline generates answers in one project and then runs the aligned model again
over them to score them. Here the statistics of every generated position are recorded while
decoding (`engine.decoder`); a later `score` against the recorded store runs only the base pass.

The job has the scoring job's shape: rank 0 checks everything and prepares before any model
loads; the same loader (`parallel.loading.load_runner`, with `--tp`) and the same unit rule; group
leaders claim units dynamically through torchrun's store. Each finished unit is saved under
`OUT.parts/` (JSON and `.npz`, written atomically, the JSON last as the commit), so an
interrupted run resumes; the answers file and the store are assembled at the end.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from tdsdist.config import PAIR_SECTIONS, Decoding, GenerateConfig, ScoreConfig, Stops
from tdsdist.engine.adapters import (
    Adapter,
    adapter_fingerprint,
    check_fits_base,
    read_adapter,
    tokenizer_source,
)
from tdsdist.engine.decoder import Decoder, Generated, Sampling
from tdsdist.engine.models import load_model_config, resolve_device
from tdsdist.errors import TdsError
from tdsdist.files import file_sha256, write_atomic
from tdsdist.inputs import special_text
from tdsdist.inputs.data import Fields, read_data
from tdsdist.inputs.fingerprint import (
    BASE_KEYS,
    differences,
    fingerprinted_head_dtype,
    generation_fingerprint,
    options_fingerprint,
    score_fingerprint,
)
from tdsdist.inputs.plan import context_tokens
from tdsdist.inputs.templates import aligned_context_fn
from tdsdist.inputs.tokenizer import load_tokenizer
from tdsdist.jobs.score import score_on
from tdsdist.options import fingerprint_fields, section_values
from tdsdist.parallel.claims import claim_loop
from tdsdist.parallel.dist import (
    Dist,
    any_rank,
    broadcast_ints,
    checked_on_main,
    destroy,
    init_distributed,
)
from tdsdist.parallel.file_claims import claim_unit, held, try_claim
from tdsdist.parallel.loading import load_adapter_runners, load_runner
from tdsdist.safe_replace import (
    check_replaceable_answers,
    check_replaceable_parts,
    check_replaceable_store,
)
from tdsdist.store import MODEL_STATS, create
from tdsdist.store.contexts import ExampleContexts
from tdsdist.store.fields import ExampleFields, Writers, select
from tdsdist.store.space import check_store_writable
from tdsdist.store.units import unit_ranges

#: What the answers file records about how each answer was generated: the model, its template
#: and the decoding options that change the answers (the fingerprinted ones of `Decoding`, `Stops`).
SETTINGS = (
    "aligned",
    "aligned_template",
    *fingerprint_fields(Decoding),
    *fingerprint_fields(Stops),
)


def _part(parts: Path, n: int, suffix: str) -> Path:
    return parts / f"unit-{n:06d}.{suffix}"


def run_generate(cfg: GenerateConfig, log=print) -> dict[str, Any]:
    """Generate (resuming finished units), then write the answers file and the store."""
    data = read_data(cfg.data, Fields(), cfg.limit, require_answer=False, format=cfg.format)
    examples, chat = data.examples, data.info.kind == "chat"
    if chat and cfg.aligned_template != "chat":
        raise TdsError(
            f"{cfg.data}: chat transcripts have no prompt field for --aligned-template"
            f" {cfg.aligned_template}: generate from them with --aligned-template chat"
        )
    for note in data.info.notes(cfg.data):
        log(note)
    adapter, notes = check_adapter(cfg)
    tokenizer = load_tokenizer(*tokenizer_name(cfg), cfg.trust_remote_code)
    context_fn = aligned_context_fn(cfg.aligned_template, tokenizer)
    # A special token's text in a prompt is text (`special_text`); only such prompts change.
    contexts = [
        context_tokens(tokenizer, context_fn, ex, cfg.aligned_template == "input", False, True)
        for ex in examples
    ]
    out, parts = Path(cfg.out), Path(cfg.out + ".parts")
    fingerprint = generation_fingerprint(cfg, tokenizer)
    if special_text.count_with_special(
        ["\n".join(special_text.user_texts(ex)) for ex in examples], tokenizer
    ):
        fingerprint[special_text.KEY] = special_text.SPLIT  # absent: no prompt changed
    if adapter is not None:  # absent: no adapter, as before
        fingerprint["aligned_adapter"] = adapter_fingerprint(adapter)
    for place in (out, parts, *([cfg.store] if cfg.store else [])):
        check_store_writable(place)  # before minutes of model loading
    device = resolve_device(cfg.device)
    d = init_distributed(cfg.tp, cfg.dist_timeout, device)
    log = log if d.is_main else (lambda m: None)
    for note in notes:
        log(note)
    # `generate --base` re-run after its answers were written: go straight to the scoring.
    answered = bool(cfg.base) and out.exists() and not parts.exists() and not cfg.overwrite
    answered = answered and Path(str(cfg.store)).exists()
    try:
        result, runners = {"load_seconds": 0.0, "generate_seconds": 0.0}, {}
        if answered:
            log(f"tdsdist: {out} is complete: scoring it into {cfg.store}")
        else:
            result, runners = _generate(
                cfg, examples, contexts, tokenizer, out, parts, fingerprint, device, d, log
            )
        result["examples"] = len(examples)
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


def check_adapter(cfg: GenerateConfig) -> tuple[Adapter | None, list[str]]:
    """`--aligned-adapter`, checked against `--base` before anything loads (as `score` does)."""
    if not cfg.aligned_adapter:
        return None, []
    assert cfg.base is not None  # the configuration requires it
    adapter = read_adapter(cfg.aligned_adapter)
    base_config = load_model_config(cfg.base, cfg.base_revision, cfg.trust_remote_code)
    return adapter, check_fits_base(adapter, cfg.base, base_config, cfg.trust_remote_code)


def tokenizer_name(cfg: GenerateConfig) -> tuple[str, str | None]:
    """The aligned tokenizer's source and revision (with an adapter: `adapters.tokenizer_source`)."""
    if not cfg.aligned_adapter:
        assert cfg.aligned is not None
        return cfg.aligned, cfg.aligned_revision
    assert cfg.base is not None
    name = tokenizer_source(cfg.aligned, cfg.aligned_adapter, cfg.base)
    return name, (cfg.base_revision if name == cfg.base else cfg.aligned_revision)


def scoring_values(cfg: GenerateConfig) -> dict[str, Any]:
    """The options `score` completes the store with: the pair's sections as generated (the data
    is the answers file as written: no limit, format or fields of the prompts), into --store,
    resumed (never overwritten: `generate` just made it), unit for unit."""
    return {**section_values(cfg, *PAIR_SECTIONS), "store": cfg.store, "unit_size": cfg.unit_size}


def scoring_config(cfg: GenerateConfig) -> ScoreConfig:
    """The `score` configuration that completes the store `generate --base` recorded: its
    fingerprint is the one the recorded store was made with (`_record_store`)."""
    return ScoreConfig(data=cfg.out, skip_empty_answers=True, **scoring_values(cfg))


def _generate(cfg, examples, contexts, tokenizer, out, parts, fingerprint, device, d: Dist, log):
    """Decode every pending unit and assemble; returns (timing, the runners loaded: `aligned`,
    and `base` too with an adapter, for the scoring with --base)."""
    checked_on_main(d, lambda: _prepare_parts(parts, out, cfg, fingerprint))
    units = unit_ranges(len(examples), cfg.unit_size)
    pending = None
    if d.is_main:
        pending = [n for n in range(len(units)) if not _part(parts, n, "json").exists()]
    pending = broadcast_ints(pending, 0, None, d)
    log(
        f"tdsdist: {len(examples)} prompts, {len(units)} units ({len(units) - len(pending)}"
        f" already done, {len(pending)} to do); world {d.dims.world} = tp {d.dims.tp} x dp"
        f" {d.dims.dp}"
    )
    load_seconds, start, stopped, runners = 0.0, time.perf_counter(), False, {}
    if pending or cfg.base:  # with --base the aligned model is needed for the scoring anyway
        runners = _load(cfg, len(tokenizer), device, d)
        load_seconds = time.perf_counter() - start
        start = time.perf_counter()
    if pending:
        sampling = Sampling(
            cfg.max_new_tokens, cfg.temperature, cfg.top_p, tuple(cfg.stop), cfg.top_k
        )
        decoder = Decoder(runners["aligned"], tokenizer, sampling)
        todo = [units[n] for n in pending]
        stopped = _generate_units(
            decoder, contexts, todo, pending, parts, cfg, d, by_file=d.dims.tp == 1
        )
    stopped = any_rank(d, stopped)  # also waits for every rank's last unit
    if not stopped:  # rank 0 assembles; a failure there reaches every rank, no one waits

        def assemble() -> None:
            _assemble(examples, contexts, units, parts, out, cfg, tokenizer, fingerprint, log)

        if d.distributed:
            checked_on_main(d, assemble)
        else:  # plain processes on one parts folder: one assembles, the others wait for it
            _assemble_once(parts, out, assemble)
    # generate_seconds: decoding, saving and assembling (answers file, store); loading apart.
    result = {"load_seconds": load_seconds, "generate_seconds": time.perf_counter() - start}
    return ({**result, "stopped": True} if stopped else result), runners


def _load(cfg: GenerateConfig, vocab_size: int, device, d: Dist) -> dict:
    """The aligned runner; with an adapter, the base runner over the same weights too."""
    kwargs = dict(
        dtype=cfg.dtype,
        vocab_size=vocab_size,
        device=device,
        d=d,
        trust_remote_code=cfg.trust_remote_code,
        head_dtype=cfg.head_dtype or "float32",
    )
    if cfg.aligned_adapter:
        return load_adapter_runners(cfg.base, cfg.base_revision, cfg.aligned_adapter, **kwargs)
    return {"aligned": load_runner(cfg.aligned, cfg.aligned_revision, **kwargs)}


def _generate_units(
    decoder,
    contexts,
    units,
    numbers,
    parts,
    cfg,
    d: Dist,
    decode=None,
    save=None,
    label="generating",
    by_file=False,
) -> bool:
    """`claim_loop` over the pending units: the group decodes a claimed unit together, its
    leader saves it. Returns whether SIGTERM stopped it. `decode`, `save` and `label`
    (`nudge`'s): a unit's results, its parts and the progress line, in place of `generate`'s.

    `by_file` (tp 1): other processes on the same parts folder (array tasks, a job submitted
    twice) claim units by file too (`parallel/file_claims.py`); a single process then waits for
    the units others hold (taking over a stale claim), so that every part exists when it returns."""
    decode, save = decode or _generate_unit, save or _save_unit
    pending = list(zip(units, numbers))  # (example indices, unit number)

    def work(unit: tuple[Any, int], advance: Any) -> dict[int, Any]:
        return decode(decoder, contexts, unit[0], unit[1], cfg)

    def commit(unit: tuple[Any, int], results: dict[int, Any]) -> None:
        save(results, decoder.tokenizer, unit[0], unit[1], parts)

    def size(unit: tuple[Any, int]) -> int:
        return len(unit[0])

    @contextmanager
    def guard(unit: tuple[Any, int]) -> Iterator[bool]:
        n = unit[1]
        with ExitStack() as stack:
            try:
                saved = _part(parts, n, "json").exists
                mine = stack.enter_context(claim_unit(parts, n, saved))
            except FileNotFoundError:  # another process assembled every unit, removed the parts
                if parts.exists():
                    raise
                mine = False
            try:
                yield mine
            except FileNotFoundError:
                if parts.exists():
                    raise

    by = guard if by_file else None
    stopped = claim_loop(d, pending, work, commit, size=size, label=(label, "ex"), guard=by).stopped
    while by_file and not d.distributed and not stopped:
        missing = [u for u in pending if not _part(parts, u[1], "json").exists()]
        missing = missing if parts.exists() else []  # assembled by another process
        if not missing:
            break
        for unit in missing:
            with guard(unit) as mine:
                if mine:
                    commit(unit, work(unit, None))
        time.sleep(WAIT_S)
    return stopped


#: Seconds between looks at the units or the assembly another process holds.
WAIT_S = 0.5


def _assemble_once(parts: Path, out: Path, assemble) -> None:
    """`assemble()` in one of the processes sharing `parts` (whoever claims it); the others wait
    until it is done (the answers file written, the parts folder removed)."""
    while not (out.exists() and not parts.exists()):
        try:
            claim = try_claim(parts, -1)
        except FileNotFoundError:  # the parts folder was just removed: assembled
            continue
        if claim is not None:
            with held(claim):
                if parts.exists():
                    assemble()
            return
        time.sleep(WAIT_S)


def _generate_unit(decoder, contexts, unit, n, cfg) -> dict[int, Generated]:
    order = sorted(unit, key=lambda i: -len(contexts[i]))  # similar lengths: less padding
    results: dict[int, Generated] = {}
    for b in range(0, len(order), cfg.batch_size):
        batch = order[b : b + cfg.batch_size]
        # One seed per unit and batch position: a resumed run samples what a fresh one would.
        seed = cfg.seed * 1_000_003 + n * 1009 + b
        for i, g in zip(batch, decoder.generate([contexts[i] for i in batch], seed)):
            results[i] = g
    return results


def _save_unit(results: dict[int, Generated], tokenizer, unit, n: int, parts: Path) -> None:
    records = [
        {"index": i, "ids": results[i].ids, "answer": tokenizer.decode(results[i].ids)}
        for i in unit
    ]
    arrays = {f"{k}/{i}": results[i].stats[k] for i in unit for k in MODEL_STATS}
    tmp = _part(parts, n, "npz.tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(_part(parts, n, "npz"))
    write_atomic(_part(parts, n, "json"), json.dumps(records).encode())  # last: the commit


def _prepare_parts(parts: Path, out: Path, cfg: GenerateConfig, fingerprint: dict) -> None:
    marker = parts / "fingerprint.json"
    if cfg.overwrite:
        check_replaceable_parts(parts, marker.name)
        check_replaceable_answers(out)
        if cfg.store:
            check_replaceable_store(Path(cfg.store))
        shutil.rmtree(parts, ignore_errors=True)
    if marker.exists():
        diffs = differences(json.loads(marker.read_text()), fingerprint, where="before")
        if diffs:
            raise TdsError(
                f"{parts}: an unfinished run with another configuration ({'; '.join(diffs)});"
                " use --overwrite"
            )
        return
    if out.exists() and not cfg.overwrite:
        raise TdsError(f"{out}: already exists (use --overwrite to generate again)")
    parts.mkdir(parents=True, exist_ok=True)
    write_atomic(marker, json.dumps(fingerprint).encode())


def _assemble(examples, contexts, units, parts, out, cfg, tokenizer, fingerprint, log) -> None:
    answers: dict[int, dict[str, Any]] = {}
    stats: dict[int, dict[str, np.ndarray]] = {}
    for n, _ in enumerate(units):
        for rec in json.loads(_part(parts, n, "json").read_text()):
            answers[rec["index"]] = rec
        with np.load(_part(parts, n, "npz"), allow_pickle=False) as z:
            for key in z.files:
                name, i = key.split("/")
                stats.setdefault(int(i), {})[name] = z[key]
    settings = {k: getattr(cfg, k) for k in SETTINGS}
    if cfg.aligned_adapter:  # absent without one, as before
        settings.update(aligned_adapter=cfg.aligned_adapter, base=cfg.base)
    kept = _kept_fields(cfg, examples)  # the prompts' metadata, for score to keep in turn
    records = [
        {
            "id": ex.id,
            "pure_input": ex.instruction,
            "input": tokenizer.decode(contexts[ex.index]),
            "output": [answers[ex.index]["answer"]],
            "generator": settings,
            **{k: v[j] for k, v in kept.items() if v[j] is not None},
        }
        if ex.messages is None
        else {  # a transcript: the prompt's conversation and the answer as its last turn
            "id": ex.id,
            "messages": [
                *ex.messages,
                {"role": "assistant", "content": answers[ex.index]["answer"]},
            ],
            "generator": settings,
            **{k: v[j] for k, v in kept.items() if v[j] is not None},
        }
        for j, ex in enumerate(examples)
    ]
    write_atomic(out, json.dumps(records, ensure_ascii=False, indent=1).encode("utf-8"))
    log(f"tdsdist: wrote {len(records)} answers to {out}")
    empty = [ex.id for ex in examples if not answers[ex.index]["ids"]]
    if cfg.store and len(empty) < len(examples):
        if empty:
            log(
                f"tdsdist: {len(empty)} empty answers (e.g. id {empty[0]!r}) are not recorded in the"
                " store; score the answers with --skip-empty-answers"
            )
        _record_store(examples, answers, stats, out, cfg, tokenizer, empty, fingerprint, contexts)
        log(f"tdsdist: recorded the aligned model's distributions in {cfg.store}")
    shutil.rmtree(parts)
    if cfg.store and len(empty) == len(examples):
        raise TdsError(f"{out}: every generated answer is empty, so no store was recorded")


def _kept_fields(cfg: GenerateConfig, examples) -> dict[str, list]:
    """`--keep-fields` of the prompts' scalar metadata (`store/fields.py`)."""
    texts = {"id", "pure_input", "input", "output", "generator", "messages"}
    return select([dict(ex.metadata) for ex in examples], cfg.keep_fields, texts, cfg.data)


def _record_store(
    examples, answers, stats, out, cfg, tokenizer, empty, generation, contexts
) -> None:
    """A store whose aligned side is filled and whose units wait for the base pass (`score`).

    Its fingerprint is the one `score` will compute for the answers file (base keys open), so
    that score resumes it; the empty answers are listed as `score --skip-empty-answers` lists
    them. It keeps each instruction and the aligned context the answer was generated from (the
    base context follows when `score` names the base template)."""
    kept = [ex for ex in examples if answers[ex.index]["ids"]]
    lengths = np.array([len(answers[ex.index]["ids"]) for ex in kept], dtype=np.int32)
    answers_sha256 = file_sha256(out)
    options = options_fingerprint(ScoreConfig, {**scoring_values(cfg), **dict.fromkeys(BASE_KEYS)})
    fingerprint = score_fingerprint(
        options,
        fields=Fields(),
        data_sha256=answers_sha256,
        tokenizer=tokenizer,
        skipped_empty_answers=empty,
        head_dtype=fingerprinted_head_dtype(cfg.dtype, cfg.head_dtype or "float32"),
    )
    if any(ex.messages is not None for ex in examples):  # as `score` reads the answers file
        fingerprint.update(data_format="json/chat", turns="last")
    fingerprint[special_text.KEY] = special_text.SPLIT  # as `prepare` records a new store's
    if cfg.aligned_adapter:  # as `prepare` records it, so that `score` resumes this store
        fingerprint["aligned_adapter"] = adapter_fingerprint(read_adapter(cfg.aligned_adapter))
    store = create(
        Path(cfg.store),
        ids=[ex.id for ex in kept],
        lengths=lengths,
        token_ids=np.concatenate([np.asarray(answers[ex.index]["ids"], np.int32) for ex in kept]),
        flags={
            "answer_truncated": np.array(
                [len(answers[ex.index]["ids"]) >= cfg.max_new_tokens for ex in kept]
            )
        },
        unit_size=cfg.unit_size,
        top_k=cfg.top_k,
        meta={
            "fingerprint": fingerprint,
            "recorded_aligned": {"generation": generation, "answers_sha256": answers_sha256},
            "vocab_size": len(tokenizer),
            "config": {"aligned": cfg.aligned, "generate": dataclasses.asdict(cfg)},
        },
        tokenizer=tokenizer,
        overwrite=cfg.overwrite,
        contexts=Writers(
            (
                ExampleContexts(
                    [ex.instruction for ex in kept], [contexts[ex.index] for ex in kept], None
                ),
                ExampleFields(_kept_fields(cfg, kept)),
            )
        ),
    )
    for unit in store.units():
        arrays = {
            f"aligned/{k}": np.concatenate([stats[kept[e].index][k] for e in unit.examples])
            for k in MODEL_STATS
        }
        store.write_rows(unit, arrays)  # not committed: the base pass commits each unit
