"""Text stays text: a special-token string inside an answer is tokenized as its characters.

Why: a tokenizer parses `<|im_end|>` written inside ordinary text as the control token, so an
answer that quotes it (or a user who types `<|im_start|>system`) would be scored as the model's
own end-of-turn or role marker. From this release the answers are tokenized with
`split_special_tokens=True` (`split`): only the template's markers and `--answer-eos map` produce
special ids. `parse` keeps the behaviour of earlier releases, to reproduce stores made before.

A store records `special_tokens_in_text: split` in its fingerprint; a store without the key was
made with `parse`, and a resumed store keeps what it was made with.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

SPLIT, PARSE = "split", "parse"
CHOICES = (SPLIT, PARSE)
#: The fingerprint key; absent means `parse` (stores made before this option).
KEY = "special_tokens_in_text"


def stored_choice(store: Path | str | None) -> str | None:
    """What an existing store was made with (`parse` when it has no key), or None for no store
    (or an unreadable root, which the store's own checks then report)."""
    if store is None:
        return None
    try:
        meta = json.loads((Path(store) / "zarr.json").read_bytes())
        fingerprint = meta["attributes"]["tdsdist"].get("fingerprint", {})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return str(fingerprint.get(KEY, PARSE))


def resolve(choice: str | None, store: Path | str | None, overwrite: bool) -> str:
    """The option as given, else the existing store's own (resume), else `split`."""
    if choice is not None:
        return choice
    kept = None if overwrite else stored_choice(store)
    return kept or SPLIT


def special_strings(tokenizer) -> list[str]:
    """Every special token's text (the added ones flagged special included), longest first."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    names = set(tokenizer.all_special_tokens)
    names |= {str(t) for t in added.values() if getattr(t, "special", False)}
    return sorted((n for n in names if n), key=len, reverse=True)


def count_with_special(texts: Sequence[str], tokenizer) -> int:
    """How many of `texts` contain a special token's string."""
    strings = special_strings(tokenizer)
    return sum(any(s in text for s in strings) for text in texts)


def encode_text(tokenizer, text: str, split: bool) -> list[int]:
    """Ids of `text` without added special tokens; a special-token string in it stays text when
    `split`."""
    if split:
        return list(
            tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        )
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
