"""Text stays text: a special-token string inside an answer, an instruction or a message is
tokenized as its characters.

Why: a tokenizer parses `<|im_end|>` written inside ordinary text as the control token, so an
answer that quotes it (or a user who types `<|im_start|>system`) would be scored as the model's
own end-of-turn or role marker, or would rewrite the context's roles. From this release user
texts are tokenized with `split_special_tokens=True` (`split`): only the template's markers and
`--answer-eos map` produce special ids. `parse` keeps the behaviour of earlier releases, to
reproduce stores made before.

A store records `special_tokens_in_text: split` in its fingerprint; a store without the key was
made with `parse`, and a resumed store keeps what it was made with.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from tdsdist.errors import TdsError
from tdsdist.inputs.data import Example
from tdsdist.inputs.tokenizer import Tokenizer

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


def special_strings(tokenizer: Tokenizer) -> list[str]:
    """Every special token's text (the added ones flagged special included), longest first."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    names = set(tokenizer.all_special_tokens)
    names |= {str(t) for t in added.values() if getattr(t, "special", False)}
    return sorted((n for n in names if n), key=len, reverse=True)


def count_with_special(texts: Sequence[str], tokenizer: Tokenizer) -> int:
    """How many of `texts` contain a special token's string."""
    strings = special_strings(tokenizer)
    return sum(any(s in text for s in strings) for text in texts)


def encode_text(tokenizer: Tokenizer, text: str, split: bool) -> list[int]:
    """Ids of `text` without added special tokens; a special-token string in it stays text when
    `split`."""
    if split:
        return list(
            tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        )
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


# Contexts: the template renders its markers and the user's texts into one string. To keep a
# special-token string inside an instruction or a message as text, the template is rendered a
# second time with a sentinel in place of each user text; the sentinels show where the user texts
# lie in the real rendering, and only special-token strings outside them (the template's markers)
# become special ids. An example whose user texts hold no special-token string is tokenized as it
# always was (the caller's plain path), so stores made before resume with identical ids.

_MARK = "\ue000{}\ue001"  # private-use characters: never in a template, never special
_MARK_RE = re.compile("\ue000(\\d+)\ue001")


def user_texts(ex: Example) -> list[str]:
    """The texts of an example that a user or a dataset wrote: instruction and message contents
    (system ones included)."""
    texts = [ex.instruction]
    if ex.messages is not None:
        texts += [m["content"] for m in ex.messages]
    return texts


def has_special(texts: Sequence[str], strings: Sequence[str]) -> bool:
    return any(s in text for text in texts for s in strings)


def _marked(ex: Example) -> tuple[Example, list[str]]:
    """`ex` with a sentinel in place of each user text (also where the instruction appears once
    in a verbatim prompt), and the texts by sentinel number."""
    texts: list[str] = []

    def mark(text: str) -> str:
        texts.append(text)
        return _MARK.format(len(texts) - 1)

    instruction = mark(ex.instruction)
    messages = None
    if ex.messages is not None:
        messages = tuple({**m, "content": mark(m["content"])} for m in ex.messages)
    prompt = ex.prompt
    # A verbatim prompt: the instruction's place is known only where it occurs once (an
    # instruction that is just a marker, `<|im_end|>`, would otherwise turn markers into text).
    if prompt is not None and ex.instruction and prompt.count(ex.instruction) == 1:
        prompt = prompt.replace(ex.instruction, instruction)
    return replace(ex, instruction=instruction, messages=messages, prompt=prompt), texts


def _segments(real: str, marked: str, texts: list[str]) -> list[tuple[str, bool]] | None:
    """(text, is user text) pieces whose concatenation is `real`, found by lining up the
    sentinel rendering against it; a template that trims a text is allowed for. None when the
    two do not line up (a template that rewrites the texts)."""
    parts = _MARK_RE.split(marked)
    pieces, marks = parts[0::2], [int(i) for i in parts[1::2]]
    if not real.startswith(pieces[0]):
        return None
    out, pos = [(pieces[0], False)], len(pieces[0])
    for k, i in enumerate(marks):
        nxt, last = pieces[k + 1], k + 1 == len(marks)
        text = texts[i]
        for cand in dict.fromkeys((text, text.strip(), text.rstrip(), text.lstrip())):
            end = pos + len(cand)
            if real.startswith(cand, pos) and (
                real[end:] == nxt if last else real.startswith(nxt, end)
            ):
                break
        else:
            return None
        out += [(cand, True), (nxt, False)]
        pos = end + len(nxt)
    return out if pos == len(real) else None


def encode_context(
    tokenizer: Tokenizer,
    render: Callable[[Example], str],
    ex: Example,
    real: str,
    special_tokens: bool,
) -> list[int] | None:
    """Ids of the rendered context `real` = `render(ex)` with every special-token string inside
    a user text kept as text, or None when no user text holds one (tokenize `real` as before).

    Between the template's markers the text (template text and user text together) is tokenized
    in one piece with `split_special_tokens=True`, as a tokenizer tokenizes the text between
    special tokens; a marker is its own id."""
    strings = special_strings(tokenizer)
    if not has_special(user_texts(ex), strings):
        return None
    marked_ex, texts = _marked(ex)
    segments = _segments(real, render(marked_ex), texts)
    if segments is None:
        raise TdsError(
            f"example {ex.index} (id {ex.id!r}): a user text holds a special-token string and the"
            " template rewrites the text, so it cannot be kept as text; use"
            " --special-tokens-in-text parse"
        )
    markers = re.compile("(" + "|".join(re.escape(s) for s in strings) + ")")
    ids: list[int] = []
    if special_tokens:
        ids += tokenizer("", add_special_tokens=True)["input_ids"]
    text = ""
    for piece, user in segments:
        if user:
            text += piece
            continue
        for k, part in enumerate(markers.split(piece)):
            if k % 2 == 0:
                text += part
                continue
            if text:
                ids += encode_text(tokenizer, text, True)
            text = ""
            ids.append(tokenizer.convert_tokens_to_ids(part))
    if text:
        ids += encode_text(tokenizer, text, True)
    return ids
