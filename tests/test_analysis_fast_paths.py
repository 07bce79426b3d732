"""The analysis's vectorised shortcuts against the direct numpy they replace: the committed
rows of each block, the KL histogram's bins, the published metrics' per-example sums; and
forgetting one block's prefetched reads."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from tdsdist.analysis.chunks import BlockReader, committed_blocks
from tdsdist.analysis.published import NAMES, PublishedSums
from tdsdist.analysis.summary import KL_EDGES, kl_bins

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import build  # noqa: E402


def test_committed_blocks_match_a_loop_over_rows(tmp_path) -> None:
    # empty answers, pending units, blocks that cut answers and units; 3 answers per unit
    lengths = [7, 0, 130, 64, 1, 0, 0, 300, 5, 90, 2, 33]
    store = build(tmp_path / "s.zarr", lengths, unit_size=3, commit=[True, False, True, True])
    total = int(store.meta["unit_starts"][-1])
    done = store.committed()
    # the reference: every row's example, by a loop over the rows of each committed answer
    example = np.full(total, -1)
    for e, (offset, n) in enumerate(zip(store.offsets, store.lengths)):
        if done[e // 3]:
            example[int(offset) : int(offset) + int(n)] = e
    for block in (1, 100, 256, total):
        seen = []
        for rows, valid, t, length, ex in committed_blocks(store, block):
            want = example[rows]
            np.testing.assert_array_equal(valid, want >= 0)
            np.testing.assert_array_equal(ex, want[want >= 0])
            np.testing.assert_array_equal(
                t, np.arange(rows.start, rows.stop)[valid] - store.offsets[ex]
            )
            np.testing.assert_array_equal(length, store.lengths[ex])
            seen.append(rows)
        assert sum(r.stop - r.start for r in seen) <= total
        assert sum(int(v) for v in (example >= 0)) == sum(
            int((example[r] >= 0).sum()) for r in seen
        )


def test_kl_bins_are_searchsorted_on_the_edges() -> None:
    rng = np.random.default_rng(0)
    edges = KL_EDGES[:-1]  # every finite edge, and its neighbours on either side
    kl = np.concatenate(
        [
            rng.exponential(0.2, 100_000),
            10.0 ** rng.uniform(-9, 4, 100_000),
            edges,
            np.nextafter(edges, np.inf),
            np.nextafter(edges[1:], 0.0),
            [0.0, 5e-324, 1e-300, 1e3, 1e6, np.finfo(np.float64).max],
        ]
    )
    want = np.searchsorted(KL_EDGES, kl, side="right") - 1
    np.testing.assert_array_equal(kl_bins(kl), want)
    single = kl[kl < 1e38].astype(np.float32).astype(np.float64)  # as the store holds them
    np.testing.assert_array_equal(kl_bins(single), np.searchsorted(KL_EDGES, single, "right") - 1)


def test_published_sums_over_the_rows_touched_equal_sums_over_all_examples() -> None:
    rng = np.random.default_rng(1)
    examples, max_t = 50, 4
    sums = PublishedSums(examples, max_t)
    want = np.zeros((examples, 1 + len(NAMES)))
    for lo, hi in ((3, 9), (9, 10), (20, 49), (0, 50)):  # blocks of sorted examples
        example = np.sort(rng.integers(lo, hi, 300))
        t = rng.integers(0, 10, 300)
        values = {name: rng.normal(size=300) for name in NAMES[1:]}
        values[NAMES[0]] = None  # a metric the store lacks
        sums.add(example, t, values)
        want[:, 0] += np.bincount(example, minlength=examples)
        for j, name in enumerate(NAMES[1:], start=2):
            want[:, j] += np.bincount(example, weights=values[name], minlength=examples)
    np.testing.assert_array_equal(sums.per_example, want)
    assert not sums.present[NAMES[0]] and all(sums.present[n] for n in NAMES[1:])


def test_forgetting_a_block_keeps_the_reads_of_another(tmp_path) -> None:
    store = build(tmp_path / "s.zarr", [40, 50, 60], unit_size=1)
    reader = BlockReader(store)
    first, second = slice(0, 30), slice(30, 90)
    reader.prefetch(["base/rank", "positions/kl"], first)
    reader.prefetch(["base/rank"], second)
    reader.forget(first)  # the filters left `first` empty; `second` is another thread's
    assert list(reader.pending) == [("base/rank", 30, 90)]
    np.testing.assert_array_equal(reader.read("base/rank", second), store.read("base/rank", second))
    reader.prefetch(["base/rank"], first)
    reader.forget()
    assert not reader.pending
