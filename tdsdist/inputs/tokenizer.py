"""Tokenizers: loading, fingerprinting, and checking that a pair is comparable.

TDS compares two distributions over the same vocabulary at the same token positions, so the base
and the aligned tokenizers must agree token for token, or the aligned one may only append tokens
after the base one's ids (scored over their union); that is checked here before any weights load.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from tdsdist.errors import TdsError, first_line
from tdsdist.model_paths import check_model_source

Tokenizer = Any
"""A transformers tokenizer (`PreTrainedTokenizerBase`). `Any`: its methods are mostly untyped
there, and tdsdist uses a handful of them (`__call__`, `get_vocab`, `apply_chat_template`, the
special-token attributes)."""


def load_tokenizer(
    name: str, revision: str | None = None, trust_remote_code: bool = False
) -> Tokenizer:
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    # tdsdist checks lengths against the model's window itself, per example, with a clear message;
    # transformers' "longer than the maximum sequence length" warning would only be noise.
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]  # untyped in transformers

    check_model_source(name, weights=False)  # never minutes of hub retries for a local typo
    try:
        return AutoTokenizer.from_pretrained(
            name, revision=revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as e:
        raise TdsError(f"cannot load the tokenizer of {name!r}: {first_line(e)}") from None


def vocabulary(tokenizer: Tokenizer) -> dict[str, int]:
    return dict(tokenizer.get_vocab())


def tokenizer_hash(tokenizer: Tokenizer) -> str:
    """Fingerprint of what maps text to ids: vocabulary, special tokens and chat template."""
    payload = {
        "vocab": sorted(vocabulary(tokenizer).items(), key=lambda kv: kv[1]),
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "chat_template": getattr(tokenizer, "chat_template", None),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class VocabularyUnion:
    """An aligned vocabulary that is the base one plus tokens appended after it (a pad or chat
    token: 32,001 ids against 32,000). Scoring is then over the union, the aligned vocabulary,
    with the base model giving the appended ids probability 0 (README: "Vocabularies that differ
    by appended tokens")."""

    base: int
    """V_b: the base vocabulary's size; ids [0, V_b) mean the same token in both."""
    aligned: int
    """V_a > V_b: the union's size; ids [V_b, V_a) exist only in the aligned vocabulary."""

    def meta(self) -> dict[str, int]:
        """What the store's meta records under `vocab_union`."""
        return {"base": self.base, "aligned": self.aligned}


def compare_vocabularies(
    aligned_tok: Tokenizer, base_tok: Tokenizer, aligned: str, base: str
) -> VocabularyUnion | None:
    """None for one shared vocabulary; a `VocabularyUnion` when the aligned vocabulary appends
    tokens after the base one (every base token keeps its id, every other aligned id is at least
    the base size). Any other difference would make ranks and divergences compare different
    tokens: refused, naming the first id whose token differs, with both sides' tokens."""
    a, b = vocabulary(aligned_tok), vocabulary(base_tok)
    if a == b:
        return None
    by_id_a, by_id_b = _tokens_by_id(a), _tokens_by_id(b)
    size_b = max(len(base_tok), max(by_id_b, default=-1) + 1)
    size_a = max(len(aligned_tok), max(by_id_a, default=-1) + 1)
    for i in sorted(set(by_id_a) | set(by_id_b)):
        if i >= size_b:
            break  # past the base vocabulary: appended aligned tokens
        if by_id_a.get(i) != by_id_b.get(i):
            raise TdsError(
                f"the tokenizers of {aligned!r} and {base!r} differ at id {i}:"
                f" {_shown(by_id_a.get(i))} in the aligned one, {_shown(by_id_b.get(i))} in the"
                " base one; TDS needs one shared vocabulary, or an aligned one that only appends"
                f" tokens after the base one's {size_b} ids"
            )
    if size_a <= size_b:  # same ids, other spellings of one token (two strings for one id)
        raise TdsError(
            f"the tokenizers of {aligned!r} and {base!r} map different token strings to the same"
            " ids; TDS needs one shared vocabulary"
        )
    return VocabularyUnion(base=size_b, aligned=size_a)


def _tokens_by_id(vocab: dict[str, int]) -> dict[int, str]:
    """id -> token; where two strings share an id (rare added-token aliases), the first in
    sorted order, the same on both sides."""
    out: dict[int, str] = {}
    for token, i in sorted(vocab.items()):
        out.setdefault(i, token)
    return out


def _shown(token: str | None) -> str:
    return "no token" if token is None else repr(token)
