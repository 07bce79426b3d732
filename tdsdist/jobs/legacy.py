"""Stores begun by earlier releases, finished in their own format: the one module that knows them.

- Format 1 (tdsdist 0.1.0) has no pair head: each model ran its own pass, the base one at the
  aligned top-k, and only the top-k KL was kept. A unit it left pending is scored the same way
  (`TwoPassScoring`), so that its rows match the ones 0.1.0 committed. A format-1 store recorded
  by 0.1.0's `generate` holds the aligned side already: it is read back, and only the base runs.
- Format 2 has the pair head but not AlignTDS's published metrics (`published/`, format 3): its
  pending units are scored without them (`Format2Scoring`), and `analyze` computes them from
  the top-k tables as that release did.

Everything else (`jobs.score`, `jobs.resume`, the commands) asks `legacy_scoring` for a
`Scoring` and never which format it holds; stores of formats 3 and 4 get `None` here and the
pipeline (`jobs.scoring.PairScoring`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tdsdist.config import ScoreConfig
from tdsdist.engine.scorer import ContextAnswer, Scorer
from tdsdist.errors import TdsError
from tdsdist.inputs.plan import Plan
from tdsdist.jobs.prepare import Prepared
from tdsdist.jobs.resume import generated
from tdsdist.jobs.scoring import (
    BOTH,
    PairScoring,
    Progress,
    RunnerLoader,
    Scoring,
    pair_arrays,
)
from tdsdist.metrics import topk_kl
from tdsdist.store import MODEL_STATS, Store, UnitRows


def legacy_scoring(
    config: ScoreConfig, prep: Prepared, store: Store, load: RunnerLoader
) -> Scoring | None:
    """The scorer that finishes `store` in its own format when an earlier release began it
    (models loaded through `load`); None for a store of the current formats."""
    if store.has_published:
        return None
    if store.has_pair:
        return Format2Scoring.load(config, prep.plan, load, generated(store))
    if prep.vocab_union is not None:  # fingerprints keep this from happening
        raise TdsError(f"{store.path}: a store of format 1 cannot score a vocabulary union")
    return TwoPassScoring.load(config, prep.plan, store, load)


class Format2Scoring(PairScoring):
    """The pair head without AlignTDS's published metrics, which a format-2 store has no
    arrays for."""

    def score(self, unit: UnitRows, progress: Progress | None = None) -> dict[str, np.ndarray]:
        return pair_arrays(self.plan, unit, self.pair, progress)


@dataclass
class TwoPassScoring:
    """Format 1's scorer: the aligned pass, then the base pass at the aligned top-k support.

    With `recorded` (a store whose aligned side 0.1.0's `generate` recorded), the aligned arrays
    are read from it instead of computed, and `aligned` is None."""

    plan: Plan
    aligned: Scorer | None
    base: Scorer
    recorded: Store | None = None

    @classmethod
    def load(
        cls, config: ScoreConfig, plan: Plan, store: Store, load: RunnerLoader
    ) -> TwoPassScoring:
        recorded = store if generated(store) else None
        runners = load(("base",) if recorded else BOTH)
        chunk = config.logits_chunk_mib << 20
        scorers = {
            m: Scorer(r, config.top_k, chunk, config.max_tokens_per_batch)
            for m, r in runners.items()
        }
        return cls(plan, scorers.get("aligned"), scorers["base"], recorded)

    @property
    def passes(self) -> int:
        return 1 if self.aligned is None else 2

    @property
    def note(self) -> str | None:
        if self.recorded is None:
            return None
        return "tdsdist: the aligned side was recorded by `generate`: running the base pass only"

    def score(self, unit: UnitRows, progress: Progress | None = None) -> dict[str, np.ndarray]:
        items = [self.plan.items[i] for i in unit.examples]
        if self.recorded is not None:
            rows = slice(unit.start, unit.start + unit.positions)
            a = {k: self.recorded.read(f"aligned/{k}", rows) for k in MODEL_STATS}
        else:
            assert self.aligned is not None
            a = self.aligned.score(
                [ContextAnswer(it.aligned_context, it.answer) for it in items], progress=progress
            )
        splits = np.cumsum([it.positions for it in items])[:-1]
        support = np.split(a["top_ids"], splits)
        b = self.base.score(
            [ContextAnswer(it.base_context, it.answer) for it in items], support, progress
        )
        arrays = {f"aligned/{k}": v for k, v in a.items()}
        arrays.update({f"base/{k}": v for k, v in b.items() if k != "support_logprobs"})
        arrays["base/logprobs_at_aligned_top"] = b["support_logprobs"]
        arrays["positions/kl"] = topk_kl(a["top_logprobs"], b["support_logprobs"])
        return arrays
