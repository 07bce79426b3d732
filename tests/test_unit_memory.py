"""A large work unit stays cheap on the host while it is scored: its arrays are allocated once, at
their final size, and each batch's rows are copied into place as the batch finishes
(`PairScorer.score`); `positions/kl` and the published metrics are computed sub-block by
sub-block into arrays of the unit's size (`jobs/scoring.py`, `topk_metrics.stored_arrays`).

tracemalloc sees numpy's allocations, not torch's: the torch tensors on the host are one batch's
(the pair head's output before its rows are copied), so what it traces is the unit's arrays and
everything per position that is computed from them.
"""

from __future__ import annotations

import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from tdsdist import topk_metrics
from tdsdist.engine.runner import ModelRunner
from tdsdist.engine.scorer import PairScorer
from tdsdist.inputs.data import Example
from tdsdist.inputs.plan import Item, Plan
from tdsdist.jobs.scoring import score_pair_unit
from tdsdist.store import UnitRows

K = 20
BUDGET = 512  # tokens per batch: a batch holds at most this many positions
SUB_ROWS = 256  # rows per sub-block of the metrics (the module's 4,096 would dwarf this unit)
WORKERS = 2  # sub-blocks computed at once


def test_scoring_a_large_unit_holds_its_arrays_once_plus_a_batch(tiny_pair, monkeypatch) -> None:
    """512 answers of about 37 tokens (19K positions, many batches, many sub-blocks): the peak
    traced while scoring the unit is its arrays' bytes plus one batch's rows twice and the
    sub-blocks' `[rows, k]` temporaries; keeping the batches' pieces, or computing the metrics
    over the whole unit at once, costs several times that allowance here."""
    monkeypatch.setattr(topk_metrics, "SUB_ROWS", SUB_ROWS)
    workers = ThreadPoolExecutor(WORKERS)
    monkeypatch.setattr(topk_metrics, "pool", lambda: workers)
    models = [AutoModelForCausalLM.from_pretrained(f).eval() for f in tiny_pair]
    runners = [ModelRunner(m, 301, torch.device("cpu")) for m in models]
    scorer = PairScorer(*runners, top_k=K, chunk_bytes=4 * 301 * 64, max_tokens_per_batch=BUDGET)
    rng = np.random.default_rng(0)
    items = [
        Item(
            Example(i, str(i), "", None, ""),
            [1, *rng.integers(2, 300, 5).tolist()],
            [1, *rng.integers(2, 300, 3).tolist()],
            rng.integers(2, 300, 40 - i % 7).tolist(),
            False,
            False,
            False,
        )
        for i in range(512)
    ]
    plan = Plan(items, [range(len(items))])
    positions = sum(it.positions for it in items)
    unit = UnitRows(0, range(len(items)), 0, positions)
    score_pair_unit(plan, UnitRows(0, range(2), 0, items[0].positions + items[1].positions), scorer)

    tracemalloc.start()
    arrays = score_pair_unit(plan, unit, scorer)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    workers.shutdown()

    assert all(len(v) == positions for v in arrays.values())
    unit_bytes = sum(v.nbytes for v in arrays.values())  # about 570 B per position at k = 20
    per_position = unit_bytes / positions
    batch = 2 * per_position * BUDGET  # a batch's rows, and their row indices and conversions
    sub_blocks = WORKERS * SUB_ROWS * K * 64  # each sub-block's [rows, k] temporaries, generous
    assert peak < unit_bytes + batch + sub_blocks, (peak, unit_bytes, batch, sub_blocks)


@pytest.mark.parametrize("rows", [1, SUB_ROWS - 1, 3 * SUB_ROWS + 5])
def test_the_published_metrics_by_sub_block_equal_one_block(rows: int, monkeypatch) -> None:
    """`stored_arrays` fills the unit's arrays sub-block by sub-block: the same values, to the
    bit, as `published_block` over the same rows, in the store's dtypes."""
    monkeypatch.setattr(topk_metrics, "SUB_ROWS", SUB_ROWS)
    rng = np.random.default_rng(rows)
    ids = [np.argsort(rng.random((rows, 40)), 1)[:, :K].astype(np.int32) for _ in range(2)]
    lps = [np.sort(rng.normal(-3, 2, (rows, K)).astype(np.float32), 1)[:, ::-1] for _ in range(2)]
    lps[1][rows // 2, 3:] = -np.inf  # a masked row: the other path of its sub-block
    arrays = dict(zip(topk_metrics.ARRAYS, (ids[0], lps[0], ids[1], lps[1])))
    got = topk_metrics.stored_arrays(arrays)
    want = topk_metrics.published_block(*(arrays[name] for name in topk_metrics.ARRAYS))
    for column in topk_metrics.PUBLISHED_ARRAYS:
        values = want[column.name]
        assert values is not None
        expected = values.astype(column.dtype)
        assert got[f"published/{column.name}"].tobytes() == expected.tobytes(), column.name
