"""Token ids as the text a reader sees: each id's string, and where each token ends in the answer.

Decoding one token at a time loses what tokenizers put back in context (SentencePiece's
word-initial space, characters split over byte tokens); these helpers restore it, for the report's
token panel and for tables of tokens by their text.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import numpy as np

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SENTENCEPIECE_SPACE = "\u2581"
#: Token ids to their text.
Decode = Callable[[list[int]], str]


class TokenText:
    """`decode([id])` per id, cached for the whole report (the vocabulary bounds the cache)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.cache: dict[int, str] = {}

    def table(self, ids: np.ndarray) -> dict[str, str]:
        unique = [int(i) for i in np.unique(ids) if i >= 0]
        new = [i for i in unique if i not in self.cache]
        if new:
            texts = self.tokenizer.batch_decode([[i] for i in new])
            pieces = self.tokenizer.convert_ids_to_tokens(new)
            for i, text, piece in zip(new, texts, pieces):
                # SentencePiece decoders drop the word-initial space of a lone token: restore it.
                if isinstance(piece, str) and piece.startswith(SENTENCEPIECE_SPACE):
                    if not text.startswith(" "):
                        text = " " + text
                self.cache[i] = text
        return {str(i): self.cache[i] for i in unique}


def _decoder(tokenizer: PreTrainedTokenizerBase, ids: list[int], text: str) -> Decode:
    """`tokenizer.decode` of one id list, through the Rust tokenizer directly when that gives the
    same text for the whole answer (transformers' wrapper costs many times the decoding itself).
    The wrapper's only addition, the optional space clean-up, acts on local patterns, so an answer
    it leaves unchanged has all its parts and prefixes unchanged too."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        try:
            if backend.decode(ids, skip_special_tokens=False) == text:
                return lambda seq: backend.decode(seq, skip_special_tokens=False)
        except Exception:  # an unusual backend: the wrapper is always right
            pass
    return cast(Decode, tokenizer.decode)  # one id list: one text (list[str] is for a batch)


def _incremental_pieces(decode: Decode, ids: list[int]) -> list[str]:
    """Each token's share of the answer text, decoded incrementally as streaming decoders do:
    text is released once it no longer ends in an incomplete character (U+FFFD), decoded with a
    few tokens of context before it so that word-initial spaces come out right. Linear time."""
    pieces = []
    prefix = read = 0
    for t in range(len(ids)):
        before = decode(ids[prefix:read])
        after = decode(ids[prefix : t + 1])
        if len(after) > len(before) and not after.endswith("\ufffd") and after.startswith(before):
            pieces.append(after[len(before) :])
            prefix, read = read, t + 1
        else:
            pieces.append("")
    if read < len(ids):  # the answer ends inside a character: the rest goes to the last token
        before = decode(ids[prefix:read])
        pieces[-1] = decode(ids[prefix:])[len(before) :]
    return pieces


def text_ends(
    tokenizer: PreTrainedTokenizerBase, ids: list[int], text: str, pieces: list[str] | None = None
) -> list[int]:
    """For each position t, the length (in UTF-16 units, as JavaScript counts) of the answer text
    up to and including token t: `text[:ends[t]]` is the prefix the example page shows.

    `pieces`, the tokens decoded one by one, are used as they are when they add up to the text
    (or to it plus leading whitespace that the decoder strips at the start). Otherwise the text is
    decoded incrementally (a character split over byte tokens goes to the token that completes
    it); if that does not add up either (an unusual decoder), the prefixes themselves are decoded
    (quadratic, but only for such answers).
    """
    n = len(ids)
    if n == 0:
        return []
    if pieces is not None:
        joined = "".join(pieces)
        strip = len(joined) - len(text)
        if joined.endswith(text) and 0 <= strip <= len(pieces[0]) and not joined[:strip].strip():
            ends = np.maximum(np.cumsum([len(p) for p in pieces]) - strip, 0)
            return _utf16(ends, text)
    decode = _decoder(tokenizer, ids, text)
    incremental = _incremental_pieces(decode, ids)
    if "".join(incremental) == text:
        return _utf16(np.cumsum([len(p) for p in incremental]), text)
    ends = np.zeros(n, np.int64)
    for t in range(n):
        prefix = decode(ids[: t + 1])
        if text.startswith(prefix):
            ends[t] = len(prefix)
        else:
            ends[t] = len(os.path.commonprefix([prefix.rstrip("\ufffd"), text]))
    return _utf16(np.maximum.accumulate(ends), text)


def _utf16(ends: np.ndarray, text: str) -> list[int]:
    """Character offsets into `text` as UTF-16 offsets (characters past U+FFFF count twice)."""
    astral = np.concatenate([[0], np.cumsum([ord(c) > 0xFFFF for c in text])]).astype(np.int64)
    offsets: list[int] = (np.asarray(ends, np.int64) + astral[ends]).tolist()
    return offsets
