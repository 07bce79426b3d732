"""The option sections of the commands that read stores (`analyze`, `compare`, `figures`,
`export`, `report`): their flags are derived from the fields (`commands/common.py`
`section_options`), defaulting to the fields' defaults (these commands take no --config).
Kept apart from the analysis package so that `--help` imports no numpy nor zarr."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from tdsdist.options import Section, opt

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class Thresholds(Section):
    """Categories by the base rank of the answer token: unshifted <= a < marginal <= b < shifted."""

    unshifted_max: int = 1
    """Highest base rank counted unshifted."""
    marginal_max: int = 3
    """Highest base rank counted marginal."""

    def check(self) -> None:
        if not 1 <= self.unshifted_max < self.marginal_max:
            raise ValueError("thresholds must satisfy 1 <= unshifted_max < marginal_max")

    def categorize(self, rank: np.ndarray) -> np.ndarray:
        """0 unshifted, 1 marginal, 2 shifted (`[P] -> [P]` int8)."""
        from tdsdist.metrics import categories  # numpy: not imported for `--help`

        return categories(rank, self.unshifted_max, self.marginal_max)


@dataclass(frozen=True)
class Filters(Section):
    """Positions left out of every statistic: the first `exclude_first` of each answer, and
    (`exclude_special_tokens`) every special token of the stored tokenizer (EOS among them)."""

    exclude_first: int = 0
    """Leave out each answer's first N positions."""
    exclude_special_tokens: bool = False
    """Leave out EOS and every special token of the stored tokenizer."""

    def check(self) -> None:
        if self.exclude_first < 0:
            raise ValueError("exclude_first must be >= 0")

    def special_ids(self, load_tokenizer: Callable[[], Any]) -> np.ndarray:
        """`[s]` int64, sorted: the ids `exclude_special_tokens` leaves out, none without it
        (`load_tokenizer` is called only then: loading one takes seconds)."""
        import numpy as np  # not imported for `--help`

        if not self.exclude_special_tokens:
            return np.zeros(0, np.int64)
        return np.array(sorted(load_tokenizer().all_special_ids), np.int64)

    def keep(self, t: np.ndarray, token_ids: np.ndarray, special: np.ndarray) -> np.ndarray:
        """`[n]` bool: the positions every statistic counts, given each position's place in its
        answer `t` `[n]` and token `token_ids` `[n]` (`special`: `special_ids`). The one rule:
        `analyze`, `export` and the report's pages leave out the same positions."""
        import numpy as np

        keep: np.ndarray = (t >= self.exclude_first) & ~np.isin(token_ids, special)
        return keep


@dataclass(frozen=True, kw_only=True)
class Analysis(Section):
    """How `analyze`, `compare` and `figures` estimate and categorize."""

    max_t: int = field(default=100, metadata=opt(minimum=0))
    """Per-position curve up to this t, then one tail bin."""
    resamples: int = field(default=1000, metadata=opt(minimum=1))
    """Bootstrap resamples of examples for the 95% intervals."""
    seed: int = 0
    """Seed of the bootstrap."""
    category_by: Literal["answer", "aligned-top1"] = "answer"
    """Whose base rank makes the categories: the answer token's (tdsdist), or the aligned model's
    top 1 (AlignTDS); the same for greedy answers."""
    published: bool = True
    """AlignTDS's top-k metrics as published (stored per position since store format 3; computed
    from both top-k lists in older stores, which doubles the time)."""


@dataclass(frozen=True, kw_only=True)
class Grouping(Section):
    """Statistics per group of examples."""

    group_by: str | None = None
    """Every statistic per group of examples (`export`: a column `group`): the values of FIELD,
    an input field the store kept (score/generate --keep-fields), with intervals and differences."""
