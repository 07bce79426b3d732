"""Tokenizers: loading, fingerprinting, and checking that a pair is comparable.

TDS compares two distributions over the same vocabulary at the same token positions, so the base
and the aligned tokenizers must agree token for token; that is checked here before any weights
load.
"""

from __future__ import annotations

import hashlib
import json

from tdsdist.errors import TdsError, first_line


def load_tokenizer(name: str, revision: str | None = None, trust_remote_code: bool = False):
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    # tdsdist checks lengths against the model's window itself, per example, with a clear message;
    # transformers' "longer than the maximum sequence length" warning would only be noise.
    hf_logging.set_verbosity_error()

    try:
        return AutoTokenizer.from_pretrained(
            name, revision=revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as e:
        raise TdsError(f"cannot load the tokenizer of {name!r}: {first_line(e)}") from None


def vocabulary(tokenizer) -> dict[str, int]:
    return dict(tokenizer.get_vocab())


def tokenizer_hash(tokenizer) -> str:
    """Fingerprint of what maps text to ids: vocabulary, special tokens and chat template."""
    payload = {
        "vocab": sorted(vocabulary(tokenizer).items(), key=lambda kv: kv[1]),
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "chat_template": getattr(tokenizer, "chat_template", None),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def check_same_vocabulary(aligned_tok, base_tok, aligned: str, base: str) -> None:
    """Refuse a pair whose tokenizers map tokens to different ids: ranks would be meaningless."""
    a, b = vocabulary(aligned_tok), vocabulary(base_tok)
    if a == b:
        return
    only_a = sorted(set(a) - set(b))
    only_b = sorted(set(b) - set(a))
    moved = sorted(t for t in set(a) & set(b) if a[t] != b[t])
    detail = []
    if only_a:
        detail.append(f"{len(only_a)} token(s) only in the aligned one (e.g. {only_a[0]!r})")
    if only_b:
        detail.append(f"{len(only_b)} token(s) only in the base one (e.g. {only_b[0]!r})")
    if moved:
        detail.append(f"{len(moved)} token(s) with different ids (e.g. {moved[0]!r})")
    raise TdsError(
        f"the tokenizers of {aligned!r} and {base!r} differ: {'; '.join(detail)};"
        " TDS needs one shared vocabulary"
    )
