"""Everything the scoring job knows before any model loads: inputs validated, tokenized, planned.

Order matters for the user: every check that can fail on bad input runs here, before any model
loads and before the store is created or touched (a bad file costs a second, not the minutes it
takes to load two 70B models).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tdsdist.config import ScoreConfig
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
from tdsdist.inputs.tokenizer import VocabularyUnion
from tdsdist.jobs.pair import ResolvedPair


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
    pair: ResolvedPair | None = None
    """The model pair, resolved (`jobs.pair`): its `load` loads the runners."""

    def vocab_size(self, model: str) -> int:
        """The rows of `model`'s output projection that are tokens (its tokenizer's size)."""
        if self.vocab_union is None:
            return len(self.tokenizer)
        return int(getattr(self.vocab_union, model))


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
    pair = ResolvedPair.resolve(config, input_field=config.input_field)
    tok, base_tok, union, notes = pair.tokenizer, pair.base_tokenizer, pair.union, [*pair.notes]
    assert pair.base_context is not None  # resolved with the base
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
            pair.aligned_context,
            pair.base_context,
            aligned_special_tokens=config.aligned_template in ("input", "input-verbatim"),
            aligned_keep_double_bos=config.aligned_template == "input-verbatim",
            aligned_window=pair.window("aligned"),
            base_window=pair.window("base"),
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
    if answer_end is not None:  # absent: answers scored as written, as in 0.1.0
        fingerprint["answer_eos"] = f"{answer_end.mode}:{answer_end.text}"
    if special == special_text.SPLIT:  # absent: special-token strings parsed, as before
        fingerprint[special_text.KEY] = special_text.SPLIT
    # The adapter's hash, the base tokenizer's for a union: absent otherwise, as in 0.1.0.
    fingerprint.update(pair.fingerprint_keys())
    fingerprint.update(info.fingerprint_keys())  # none for a just-eval JSON/JSONL file with ids
    prefixes: dict[str, list[int]] = {"aligned": [], "base": []}
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
        pair,
    )
