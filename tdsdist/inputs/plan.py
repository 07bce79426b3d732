"""Tokenize every example for both models and cut the work into units.

Planning is cheap (tokenizers only) and happens before any model loads, so every too-long context
or empty answer is reported up front. The answer is tokenized once, on its own, without special
tokens, and the same ids follow each model's context: both models predict the identical sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tdsdist.errors import TdsError
from tdsdist.inputs.data import Example
from tdsdist.inputs.special_text import encode_context, encode_text
from tdsdist.inputs.templates import ContextFn
from tdsdist.inputs.tokenizer import Tokenizer
from tdsdist.store.units import unit_ranges


@dataclass(frozen=True)
class Item:
    """One example, tokenized for both models."""

    example: Example
    aligned_context: list[int]
    base_context: list[int]
    answer: list[int]
    answer_truncated: bool
    aligned_context_truncated: bool
    base_context_truncated: bool

    @property
    def positions(self) -> int:
        return len(self.answer)


@dataclass(frozen=True)
class AnswerEnd:
    """The end-of-answer policy: an answer ends before its EOS, which is not scored (as
    `generate` writes answers). `text` is the literal EOS text that ends answers in a data file
    written with another tokenizer (the shipped just-eval file's Llama-2 `</s>`, which other
    tokenizers split into fragments such as `</` and `s`). `drop` removes it (with any whitespace
    after it); `map` puts this tokenizer's own EOS token in its place, so that it is scored as one
    token (and `--exclude-special-tokens` can leave it out)."""

    text: str
    mode: str = "drop"  # drop | map

    def apply(self, answer: str, tokenizer: Tokenizer) -> tuple[str, list[int]]:
        """The answer text to tokenize, and the ids to append after its tokens."""
        stripped = answer.rstrip()
        if not stripped.endswith(self.text):
            return answer, []
        text = stripped[: -len(self.text)]
        if self.mode == "map" and tokenizer.eos_token_id is not None:
            return text, [tokenizer.eos_token_id]
        return text, []


@dataclass(frozen=True)
class Plan:
    items: list[Item]
    units: list[range]
    """Item indices of each work unit, in data order."""


def tokenize_context(
    tokenizer: Tokenizer, text: str, special_tokens: bool, keep_double_bos: bool = False
) -> list[int]:
    """Context ids as the tokenizer makes them by default, never with a doubled BOS unless
    `keep_double_bos` (`--aligned-template input-verbatim`).

    A prompt such as Llama-2's `input` field already starts with the text `<s>`, which the
    tokenizer parses as BOS; adding special tokens would then put a second BOS in front. The
    original AlignTDS pipeline tokenized it so, and `input-verbatim` reproduces its contexts.
    """
    ids = list(tokenizer(text, add_special_tokens=special_tokens)["input_ids"])
    return _single_bos(tokenizer, ids, special_tokens, keep_double_bos)


def context_tokens(
    tokenizer: Tokenizer,
    render: ContextFn,
    ex: Example,
    special_tokens: bool,
    keep_double_bos: bool = False,
    split_special_text: bool = False,
) -> list[int]:
    """`tokenize_context` of `render(ex)`; with `split_special_text`, a special-token string in
    the instruction or a message stays text (`special_text.encode_context`), and an example
    without one gets exactly the ids it always got."""
    text = render(ex)
    if split_special_text:
        ids = encode_context(tokenizer, render, ex, text, special_tokens)
        if ids is not None:
            return _single_bos(tokenizer, ids, special_tokens, keep_double_bos)
    return tokenize_context(tokenizer, text, special_tokens, keep_double_bos)


def _single_bos(
    tokenizer: Tokenizer, ids: list[int], special_tokens: bool, keep_double_bos: bool
) -> list[int]:
    bos = tokenizer.bos_token_id
    doubled = bos is not None and len(ids) >= 2 and ids[0] == bos and ids[1] == bos
    if special_tokens and doubled and not keep_double_bos:
        ids = ids[1:]
    return ids


def _fit_context(
    context: list[int],
    answer_len: int,
    window: int,
    truncate: bool,
    bos: int | None,
    what: str,
    ex: Example,
) -> tuple[list[int], bool]:
    """Cut the context from the left (keeping a leading BOS) so that context + answer fits."""
    if len(context) + answer_len <= window:
        return context, False
    where = f"example {ex.index} (id {ex.id!r})"
    if not truncate:
        raise TdsError(
            f"{where}: {what} context ({len(context)} tokens) plus answer ({answer_len} tokens)"
            f" exceeds the model's window of {window}: use --truncate-context or --max-output-tokens"
        )
    keep_bos = bos is not None and context and context[0] == bos
    room = window - answer_len - (1 if keep_bos else 0)
    if room < 1:
        raise TdsError(
            f"{where}: the answer alone ({answer_len} tokens) leaves no room for the {what} context"
            f" in the model's window of {window}: use --max-output-tokens"
        )
    cut = context[len(context) - room :]
    return ([context[0]] + cut if keep_bos else cut), True


def make_plan(
    examples: Sequence[Example],
    tokenizer: Tokenizer,
    aligned_context: ContextFn,
    base_context: ContextFn,
    *,
    aligned_special_tokens: bool,
    aligned_window: int,
    base_window: int,
    max_output_tokens: int | None,
    truncate_context: bool,
    unit_size: int,
    answer_end: AnswerEnd | None = None,
    base_tokenizer: Tokenizer | None = None,
    aligned_keep_double_bos: bool = False,
    split_special_text: bool = False,
) -> Plan:
    """Items for every example and units of `unit_size` consecutive examples.

    The base context always takes the tokenizer's default special tokens; the aligned one takes
    them for verbatim prompts and not for chat-template text (which carries its own).

    `base_tokenizer` (given only when the aligned vocabulary appends tokens to the base one,
    `tokenizer.VocabularyUnion`) tokenizes the answer and the base context, so that every answer
    id exists in both models; `tokenizer` (the aligned one) keeps the aligned context, whose
    chat tokens may be appended ones.
    `aligned_keep_double_bos` keeps a verbatim prompt's doubled BOS (`input-verbatim`).
    `split_special_text`: a special-token string in an answer, an instruction or a message is
    text (`special_text.py`).
    """
    items: list[Item] = []
    base_tok = tokenizer if base_tokenizer is None else base_tokenizer
    bos, base_bos = tokenizer.bos_token_id, base_tok.bos_token_id
    for ex in examples:
        text, eos = answer_end.apply(ex.answer, base_tok) if answer_end else (ex.answer, [])
        answer = encode_text(base_tok, text, split_special_text) + eos
        if not answer:
            raise TdsError(f"example {ex.index} (id {ex.id!r}): the answer tokenizes to no tokens")
        cut = max_output_tokens is not None and len(answer) > max_output_tokens
        if cut:
            answer = answer[:max_output_tokens]
        a_ctx = context_tokens(
            tokenizer,
            aligned_context,
            ex,
            aligned_special_tokens,
            aligned_keep_double_bos,
            split_special_text,
        )
        b_ctx = context_tokens(base_tok, base_context, ex, True, False, split_special_text)
        for ctx, what in ((a_ctx, "aligned"), (b_ctx, "base")):
            if not ctx:
                raise TdsError(
                    f"example {ex.index} (id {ex.id!r}): the {what} context is empty; the first"
                    " answer token needs a context to be predicted from"
                )
        a_ctx, a_cut = _fit_context(
            a_ctx, len(answer), aligned_window, truncate_context, bos, "aligned", ex
        )
        b_ctx, b_cut = _fit_context(
            b_ctx, len(answer), base_window, truncate_context, base_bos, "base", ex
        )
        items.append(Item(ex, a_ctx, b_ctx, answer, cut, a_cut, b_cut))
    return Plan(items=items, units=unit_ranges(len(items), unit_size))


def shared_prefix(contexts: Sequence[list[int]]) -> list[int]:
    """The longest token prefix that every context starts with, one token short of the shortest.

    Token-level, so it ends on a boundary that every context shares (a prefix that ends mid-word
    in text ends wherever the tokens of all contexts still agree). At least one context token is
    left after it, whose hidden state predicts the first answer token.
    """
    if not contexts:
        return []
    first = contexts[0]
    n = min(len(c) for c in contexts) - 1
    for c in contexts[1:]:
        i = 0
        while i < n and c[i] == first[i]:
            i += 1
        n = i
        if n == 0:
            break
    return list(first[: max(n, 0)])
