"""Token tables: which answer tokens shift, by id and merged by the text they decode to.

Counts are per vocabulary id (one `bincount` per block). The text tables merge ids that read the
same once leading whitespace is set aside (SentencePiece's `▁the` and a bare `the`, BPE's `Ġthe`
and `the`): a reader asks whether "the" shifts, not which of its ids did. Rankings: by count, and
by shift rate among tokens seen at least `min_support` times. "Base-favoured" positions are those
where the base model gives the answer token a higher probability than the aligned model did.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from tdsdist.analysis.token_text import TokenText

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

#: What is counted per id: positions, shifted, unshifted, base-favoured.
COLUMNS = ("count", "shifted", "unshifted", "base_favoured")


class TokenCounts:
    """Per-vocabulary-id counts of `COLUMNS`."""

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab
        self.counts = np.zeros((len(COLUMNS), vocab), np.int64)

    def add(self, tokens: np.ndarray, category: np.ndarray, base_favoured: np.ndarray) -> None:
        v = self.vocab
        self.counts[0] += np.bincount(tokens, minlength=v)
        self.counts[1] += np.bincount(tokens[category == 2], minlength=v)
        self.counts[2] += np.bincount(tokens[category == 0], minlength=v)
        self.counts[3] += np.bincount(tokens[base_favoured], minlength=v)

    def tables(
        self, tokenizer: PreTrainedTokenizerBase | None, min_support: int, rows: int
    ) -> dict[str, Any]:
        """The JSON of `summary["tokens"]` (tokenizer None: ids only, for an empty store)."""
        seen = np.flatnonzero(self.counts[0])
        texts = TokenText(tokenizer).table(seen) if tokenizer is not None and seen.size else {}
        by_id = [_id_row(int(i), texts.get(str(i), str(i)), self.counts[:, i]) for i in seen]
        merged: dict[str, dict[str, Any]] = {}
        for row in by_id:
            key = text_key(row["token"])
            cell = merged.setdefault(
                key, {"text": key, "token_ids": [], **dict.fromkeys(COLUMNS, 0)}
            )
            cell["token_ids"].append(row["token_id"])
            for c in COLUMNS:
                cell[c] += row[c]
        by_text = [_rates(cell) for cell in merged.values()]
        total = int(self.counts[0].sum())
        favoured = int(self.counts[3].sum())
        return {
            "rows": rows,
            "min_support": min_support,
            "by_id": _rankings(by_id, min_support, rows),
            "by_text": _rankings(by_text, min_support, rows),
            "base_favoured": {
                "definition": "positions where the base probability of the answer token is above the aligned one",
                "positions": favoured,
                "fraction": favoured / total if total else None,
                "by_id": _top(by_id, "base_favoured", rows),
                "by_text": _top(by_text, "base_favoured", rows),
            },
        }


def text_key(text: str) -> str:
    """What ids are merged by: the text without its leading and trailing whitespace (a token that
    is only whitespace keeps it: a newline is not a space)."""
    return text.strip() or text


def _id_row(i: int, text: str, counts: np.ndarray) -> dict[str, Any]:
    return _rates({"token_id": i, "token": text, **{c: int(v) for c, v in zip(COLUMNS, counts)}})


def _rates(row: dict[str, Any]) -> dict[str, Any]:
    n = row["count"]
    for c in COLUMNS[1:]:
        row[f"{c}_rate"] = row[c] / n if n else None
    return row


def _rankings(rows: list[dict[str, Any]], min_support: int, top: int) -> dict[str, Any]:
    """By count (ties: more shifted first), and by shift rate among `count >= min_support`
    (ties: more positions first)."""
    by_count = sorted(rows, key=lambda r: (-r["count"], -r["shifted"], _name(r)))
    supported = [r for r in rows if r["count"] >= min_support]
    by_rate = sorted(supported, key=lambda r: (-r["shifted_rate"], -r["count"], _name(r)))
    return {"by_count": by_count[:top], "by_shift_rate": by_rate[:top]}


def _top(rows: list[dict[str, Any]], key: str, top: int) -> list[dict[str, Any]]:
    hit = [r for r in rows if r[key] > 0]
    return sorted(hit, key=lambda r: (-r[key], -r["count"], _name(r)))[:top]


def _name(row: dict[str, Any]) -> str:
    name: str = row.get("text", row.get("token", ""))
    return name


def render_lines(tokens: dict[str, Any] | None, shown: int = 10) -> list[str]:
    if not tokens:
        return []
    lines = []
    rate = tokens["by_text"]["by_shift_rate"][:shown]
    if rate:
        lines.append(
            f"highest shift rate (text, >= {tokens['min_support']} occurrences): "
            + ", ".join(
                f"{r['text']!r} {100 * r['shifted_rate']:.0f}% of {r['count']}" for r in rate
            )
        )
    fav = tokens["base_favoured"]
    if fav["positions"]:
        lines.append(
            f"base-favoured positions (base probability above aligned): {fav['positions']}"
            f" ({100 * fav['fraction']:.1f}%); most often: "
            + ", ".join(f"{r['text']!r} ({r['base_favoured']})" for r in fav["by_text"][:shown])
        )
    return lines
