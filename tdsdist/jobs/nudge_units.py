"""`nudge`'s decoding units: the pair decodes a unit's prompts in lockstep, and its part is saved.

Each answer keeps its token ids, which model chose each one, and the pair head's arrays of every
position as the lockstep decoder scored it (`engine.lockstep`); with `--compare` also the
base-only answer and the aligned model's log-probabilities of its tokens. A unit's part is a JSON
file (the commit) beside an `.npz` of the arrays (`jobs.parts`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tdsdist.config import NudgeConfig
from tdsdist.engine.lockstep import LockstepDecoder, LockstepRequest
from tdsdist.engine.nudging import Nudging
from tdsdist.engine.pair_head import PairOutput
from tdsdist.engine.runner import ModelRunner
from tdsdist.files import write_atomic
from tdsdist.jobs.parts import part_path
from tdsdist.metrics import topk_kl

#: Both models' contexts (token ids) of each prompt, by example index.
Contexts = Sequence[dict[str, list[int]]]


@dataclasses.dataclass
class Nudged:
    """One answer: its ids, which model chose each (`nudged`), the pair head's arrays by store
    name, and with `--compare` the base-only answer's ids and aligned log-probabilities."""

    ids: list[int]
    nudged: list[bool]
    arrays: dict[str, np.ndarray]
    base_only: list[int] | None = None
    base_only_aligned_logprob: list[float] | None = None


class NudgeDecoder:
    """The models, the rule and the tokenizer of one job: decodes a unit's prompts."""

    def __init__(
        self, runners: dict[str, ModelRunner], tokenizer: Any, cfg: NudgeConfig, end_ids: set[int]
    ) -> None:
        self.runners, self.tokenizer, self.cfg, self.end_ids = runners, tokenizer, cfg, end_ids

    def decode(
        self, contexts: dict[int, dict[str, list[int]]], rule: str, threshold: float
    ) -> dict[int, tuple[list[int], list[bool], dict[str, np.ndarray]]]:
        """Every prompt of `contexts` (index -> both contexts), `batch_size` at a time in one
        running batch (a finished answer's slot goes to the next prompt at once)."""
        cfg, policy = self.cfg, Nudging(rule, threshold)
        decoder = LockstepDecoder(
            self.runners["aligned"],
            self.runners["base"],
            cfg.top_k,
            cfg.logits_chunk_mib << 20,
            self.end_ids,
            policy,
        )
        # One seed per prompt: a resumed run (or another batching) samples what a fresh one would.
        queue = [
            LockstepRequest(
                str(i), c, cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.seed * 1_000_003 + i
            )
            for i, c in contexts.items()
        ]
        rows: dict[str, list[PairOutput]] = {r.id: [] for r in queue}
        flags: dict[str, list[bool]] = {r.id: [] for r in queue}
        requests = {r.id: r for r in queue}
        while queue or len(decoder):
            while queue and len(decoder) < cfg.batch_size:
                decoder.add(queue.pop(0))
            outputs = decoder.step()
            chosen = policy.last_nudged.tolist()  # [B] in the step's row order, as `outputs`
            for out, nudged in zip(outputs, chosen):
                if out.token is not None:
                    assert out.stats is not None  # a written token comes with its arrays
                    rows[out.id].append(out.stats)
                    flags[out.id].append(bool(nudged))
        return {int(i): (requests[i].tokens, flags[i], _arrays(rows[i])) for i in rows}


def _arrays(rows: list[PairOutput]) -> dict[str, np.ndarray]:
    """The store's arrays of one answer (empty answer: no arrays)."""
    if not rows:
        return {}
    arrays = PairOutput.cat(rows).arrays()
    arrays["positions/kl"] = topk_kl(
        arrays["aligned/top_logprobs"], arrays["base/logprobs_at_aligned_top"]
    )
    return arrays


def decode_unit(
    decoder: NudgeDecoder, contexts: Contexts, unit: Sequence[int], n: int, cfg: NudgeConfig
) -> dict[int, Nudged]:
    """A unit's answers (what `jobs.parts.decode_units` decodes per claimed unit)."""
    mine = {i: contexts[i] for i in unit}
    got = decoder.decode(mine, cfg.nudge_rule, cfg.nudge_threshold)
    results = {i: Nudged(*got[i]) for i in unit}
    if cfg.compare:  # the base model alone: threshold 0, the same prompts and seeds
        for i, (ids, _, arrays) in decoder.decode(mine, "threshold", 0.0).items():
            results[i].base_only = ids
            lp = arrays.get("aligned/logprob", np.zeros(0, np.float32))
            results[i].base_only_aligned_logprob = [float(x) for x in lp]
    return results


def save_unit(
    results: dict[int, Nudged], tokenizer: Any, unit: Sequence[int], n: int, parts: Path
) -> None:
    """The unit's answers (JSON, the commit, written last) and the pair head's arrays (npz)."""
    records = []
    for i in unit:
        r = results[i]
        rec: dict[str, Any] = {
            "index": i,
            "ids": r.ids,
            "answer": tokenizer.decode(r.ids),
            "nudged": [int(x) for x in r.nudged],
        }
        if r.base_only is not None:
            rec.update(
                base_only_ids=r.base_only,
                base_only_answer=tokenizer.decode(r.base_only),
                base_only_aligned_logprob=r.base_only_aligned_logprob,
            )
        records.append(rec)
    arrays = {f"{name}@{i}": v for i in unit for name, v in results[i].arrays.items()}
    tmp = part_path(parts, n, "npz.tmp.npz")
    np.savez(tmp, allow_pickle=False, **arrays)
    tmp.replace(part_path(parts, n, "npz"))
    write_atomic(part_path(parts, n, "json"), json.dumps(records).encode())  # last: the commit


def read_parts(
    units: int, parts: Path
) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, np.ndarray]]]:
    """Every unit's answers (by example index) and arrays (by example index, then name)."""
    answers: dict[int, dict[str, Any]] = {}
    arrays: dict[int, dict[str, np.ndarray]] = {}
    for n in range(units):
        for rec in json.loads(part_path(parts, n, "json").read_text()):
            answers[rec["index"]] = rec
        with np.load(part_path(parts, n, "npz"), allow_pickle=False) as z:
            for key in z.files:
                name, i = key.rsplit("@", 1)
                arrays.setdefault(int(i), {})[name] = z[key]
    return answers, arrays
