"""The scoring pipeline: the pair head over one unit, behind the one interface the job drives.

`jobs.score` asks one object, a `Scoring`, for a unit's arrays and for how many positions a unit
costs; it never asks which store format it is filling. `PairScoring` is the pipeline of every
store `score` creates; stores begun by earlier releases are finished in their own format by the
scorers of `jobs.legacy`, which answer the same interface.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

from tdsdist.config import ScoreConfig
from tdsdist.engine.runner import ModelRunner
from tdsdist.engine.scorer import AnswerPair, PairScorer
from tdsdist.inputs.plan import Plan
from tdsdist.metrics import topk_kl
from tdsdist.store import UnitRows
from tdsdist.topk_metrics import in_sub_blocks
from tdsdist.topk_metrics import stored_arrays as published_arrays

Progress = Callable[[int], None]
"""Called with the number of positions scored (of every model pass) since the last call."""

RunnerLoader = Callable[[Sequence[str]], dict[str, ModelRunner]]
"""Loads the named models of the pair ("aligned", "base"), their shared prefixes set."""

BOTH = ("aligned", "base")

RERUN = (
    "tdsdist: the answers were recorded by `generate`; the pair head runs the aligned model"
    " again, teacher-forced (exact divergences need both distributions at once)"
)

P = TypeVar("P", bound="PairScoring")


class Scoring(Protocol):
    """What the scoring job needs of a pipeline: a unit's arrays, by store name."""

    @property
    def passes(self) -> int:
        """Model passes per answer position: the progress bar counts `passes * positions`."""
        ...

    @property
    def note(self) -> str | None:
        """A line for the log about how this store is finished (None: nothing to say)."""
        ...

    def score(self, unit: UnitRows, progress: Progress | None = None) -> dict[str, np.ndarray]:
        """Every array of `unit`'s rows, as the store names them."""
        ...


def pair_scorer(config: ScoreConfig, runners: dict[str, ModelRunner]) -> PairScorer:
    """The pair head over both loaded models, with the run's top-k, chunk and batch budget."""
    return PairScorer(
        runners["aligned"],
        runners["base"],
        config.top_k,
        config.logits_chunk_mib << 20,
        config.max_tokens_per_batch,
    )


def pair_arrays(
    plan: Plan, unit: UnitRows, pair: PairScorer, progress: Progress | None = None
) -> dict[str, np.ndarray]:
    """A unit's arrays from the pair head: both models on the same rows at once, the exact
    divergences, and the top-k KL of format 1 beside them (for continuity). Each array is
    allocated once at the unit's size (see `PairScorer.score`)."""
    items = [plan.items[i] for i in unit.examples]
    answers = [AnswerPair(it.aligned_context, it.base_context, it.answer) for it in items]
    arrays = pair.score(answers, progress)
    arrays["positions/token_id"] = np.concatenate([np.asarray(a.answer, np.int32) for a in answers])
    top, at_top = arrays["aligned/top_logprobs"], arrays["base/logprobs_at_aligned_top"]
    kl = arrays["positions/kl"] = np.empty(len(top), np.float32)

    def one(a: int, b: int) -> None:  # per row: the sub-blocks change no value
        kl[a:b] = topk_kl(top[a:b], at_top[a:b])

    in_sub_blocks(one, len(top))  # float64 temporaries of a sub-block, not of the unit
    return arrays


def score_pair_unit(
    plan: Plan, unit: UnitRows, pair: PairScorer, progress: Progress | None = None
) -> dict[str, np.ndarray]:
    """All arrays of one unit as `score` stores them: the pair head's, and AlignTDS's top-k
    metrics of the unit's positions (`published/`) computed from them."""
    arrays = pair_arrays(plan, unit, pair, progress)
    arrays.update(published_arrays(arrays))
    return arrays


@dataclass
class PairScoring:
    """The pipeline: both models at once through the pair head (`engine/pair_head.py`)."""

    plan: Plan
    pair: PairScorer
    note: str | None = None

    @classmethod
    def load(
        cls: type[P], config: ScoreConfig, plan: Plan, load: RunnerLoader, generated: bool
    ) -> P:
        """Both models loaded; `generated`: the answers are the ids `generate` recorded."""
        return cls(plan, pair_scorer(config, load(BOTH)), RERUN if generated else None)

    @property
    def passes(self) -> int:
        return 2  # both bodies run over every position

    def score(self, unit: UnitRows, progress: Progress | None = None) -> dict[str, np.ndarray]:
        return score_pair_unit(self.plan, unit, self.pair, progress)
