"""Everything the scoring job knows before any model loads: inputs validated, tokenized, planned.

Order matters for the user: every check that can fail on bad input runs here, before any model
loads and before the store is created or touched (a bad file costs a second, not the minutes it
takes to load two 70B models).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tdsdist.config import ScoreConfig
from tdsdist.engine.adapters import (
    adapter_fingerprint,
    check_fits_base,
    read_adapter,
    tokenizer_source,
)
from tdsdist.engine.models import load_model_config, model_window
from tdsdist.errors import TdsError
from tdsdist.inputs import special_text
from tdsdist.inputs.data import Fields, read_data
from tdsdist.inputs.fingerprint import (
    data_sha256,
    fingerprinted_head_dtype,
    options_fingerprint,
    score_fingerprint,
)
from tdsdist.inputs.plan import AnswerEnd, Plan, make_plan, shared_prefix
from tdsdist.inputs.templates import aligned_context_fn, base_context_fn
from tdsdist.inputs.tokenizer import (
    VocabularyUnion,
    compare_vocabularies,
    load_tokenizer,
    tokenizer_hash,
)


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
    head_dtype: str = "float32"
    """Precision of the output projection (`--head-dtype`, resolved; see `resume.py`)."""
    vocab_union: VocabularyUnion | None = None
    """Set when the aligned vocabulary appends tokens to the base one: scored over the union."""
    notes: list[str] = field(default_factory=list)
    """What the log says about how the data file was read (its format, ids from the index)."""

    def vocab_size(self, model: str) -> int:
        """The rows of `model`'s output projection that are tokens (its tokenizer's size)."""
        if self.vocab_union is None:
            return len(self.tokenizer)
        return getattr(self.vocab_union, model)


def prepare(config: ScoreConfig) -> Prepared:
    """Validate the data, the templates and the tokenizers; tokenize; plan the units."""
    fields = Fields(
        config.id_field, config.instruction_field, config.input_field, config.output_field
    )
    data = read_data(
        config.data,
        fields,
        config.limit,
        skip_empty=config.skip_empty_answers,
        format=config.format,
        turns=config.turns,
    )
    examples, info = data.examples, data.info
    skipped: list[str] | None = data.skipped if config.skip_empty_answers else None
    if not examples:
        raise TdsError(f"{config.data}: every answer is empty: nothing to score")
    if info.kind == "chat" and config.aligned_template != "chat":
        raise TdsError(
            f"{config.data}: chat transcripts have no prompt field for --aligned-template"
            f" {config.aligned_template}: score them with --aligned-template chat"
        )
    base_context = base_context_fn(config.base_template)
    adapter = read_adapter(config.aligned_adapter) if config.aligned_adapter else None
    aligned_name, aligned_revision = config.aligned, config.aligned_revision
    if config.aligned_adapter:  # the aligned tokenizer: --aligned, the adapter's, or the base's
        aligned_name = tokenizer_source(config.aligned, config.aligned_adapter, config.base)
        aligned_revision = config.base_revision if aligned_name == config.base else aligned_revision
    assert aligned_name is not None
    tok = load_tokenizer(aligned_name, aligned_revision, config.trust_remote_code)
    base_tok = load_tokenizer(config.base, config.base_revision, config.trust_remote_code)
    union = compare_vocabularies(tok, base_tok, aligned_name, config.base)
    check_union_layout(union, config)
    if config.top_k > min(len(tok), len(base_tok)):
        size = min(len(tok), len(base_tok))
        raise TdsError(f"--top-k {config.top_k} exceeds the vocabulary size {size}")
    aligned_context = aligned_context_fn(config.aligned_template, tok, config.input_field)
    base_cfg = load_model_config(config.base, config.base_revision, config.trust_remote_code)
    notes: list[str] = []
    if adapter is not None:  # one body: the base's, with the adapter on
        aligned_cfg = base_cfg
        notes = check_fits_base(adapter, config.base, base_cfg, config.trust_remote_code)
    else:
        aligned_cfg = load_model_config(aligned_name, aligned_revision, config.trust_remote_code)
    answer_end = None
    if config.answer_eos_text:
        answer_end = AnswerEnd(config.answer_eos_text, config.answer_eos)
    special = special_text.resolve(config.special_tokens_in_text, config.store, config.overwrite)
    quoting = special_text.count_with_special(
        ["\n".join([*special_text.user_texts(ex), ex.answer]) for ex in examples], base_tok
    )
    if quoting:
        asked = special_text.count_with_special(
            ["\n".join(special_text.user_texts(ex)) for ex in examples], base_tok
        )
        notes.append(
            f"tdsdist: {quoting} example(s) contain a special-token string in their text ({asked}"
            " in the instruction or messages); it is tokenized as"
            f" {'text' if special == 'split' else 'the control token'}"
            f" (--special-tokens-in-text {special})"
        )
    try:
        plan = make_plan(
            examples,
            tok,
            aligned_context,
            base_context,
            aligned_special_tokens=config.aligned_template in ("input", "input-verbatim"),
            aligned_keep_double_bos=config.aligned_template == "input-verbatim",
            aligned_window=model_window(aligned_cfg, tok),
            base_window=model_window(base_cfg, base_tok),
            max_output_tokens=config.max_output_tokens,
            truncate_context=config.truncate_context,
            unit_size=config.unit_size,
            answer_end=answer_end,
            base_tokenizer=None if union is None else base_tok,
            split_special_text=special == special_text.SPLIT,
        )
    except TdsError as e:  # per-example problems found while tokenizing: name the data file too
        raise TdsError(f"{config.data}: {e}") from None
    fingerprint = score_fingerprint(
        options_fingerprint(ScoreConfig, vars(config)),
        fields=info.fields,
        data_sha256=data_sha256(config.data),
        tokenizer=tok,
        skipped_empty_answers=skipped,
        head_dtype=fingerprinted_head_dtype(config.dtype, config.head_dtype or "float32"),
    )
    if adapter is not None:  # absent: no adapter, as before
        fingerprint["aligned_adapter"] = adapter_fingerprint(adapter)
    if answer_end is not None:  # absent: answers scored as written, as in 0.1.0
        fingerprint["answer_eos"] = f"{answer_end.mode}:{answer_end.text}"
    if special == special_text.SPLIT:  # absent: special-token strings parsed, as before
        fingerprint[special_text.KEY] = special_text.SPLIT
    if union is not None:  # absent: one shared vocabulary, as in 0.1.0
        fingerprint["base_tokenizer_sha256"] = tokenizer_hash(base_tok)
    fingerprint.update(info.fingerprint_keys())  # none for a just-eval JSON/JSONL file with ids
    prefixes = {"aligned": [], "base": []}
    if not config.no_prefix_cache:
        prefixes = {
            "aligned": shared_prefix([it.aligned_context for it in plan.items]),
            "base": shared_prefix([it.base_context for it in plan.items]),
        }
    return Prepared(
        config,
        plan,
        tok,
        fingerprint,
        prefixes,
        skipped or [],
        config.head_dtype or "float32",
        union,
        info.notes(config.data) + notes,
    )


def check_union_layout(union: VocabularyUnion | None, config: ScoreConfig) -> None:
    """Refuse what the union does not support yet, before any model loads."""
    if union is not None and config.tp > 1:
        raise TdsError(
            f"--tp {config.tp}: the aligned vocabulary ({union.aligned} ids) appends"
            f" {union.aligned - union.base} token(s) to the base one ({union.base} ids), and the"
            " vocabulary-parallel head splits both models' vocabularies into the same slices,"
            " which two sizes do not give; score this pair with --tp 1 (data parallel ranks work)"
        )
