"""Small synthetic stores with consistent top-k lists, for the analysis tests (no model needed).

Both models' top-k ids are drawn from a few candidates so that the lists overlap as real pairs'
do; the answer token is the aligned top 1 or (a "sampled" answer) its second choice; every rank
and log-probability of the answer token and of the aligned top 1 follows from the lists (the
head's rule: 1 + the entries strictly above; outside the list: below all of it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tdsdist_testkit import default_corpus, train_tiny_tokenizer

from tdsdist.analysis.published import stored_arrays
from tdsdist.store import CHUNK_POSITIONS, FORMAT_VERSION, Store, create

CANDIDATES = 12  # ids drawn from [FIRST_ID, FIRST_ID + CANDIDATES): heavy overlap at k = 5
FIRST_ID = 40


def _lists(
    rng: np.random.Generator, n: int, k: int, candidates: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    ids = candidates[np.argsort(rng.random((n, len(candidates))), axis=1)[:, :k]].astype(np.int32)
    logprobs = -np.cumsum(rng.exponential(0.7, (n, k)), axis=1) - 0.05
    ties = rng.random(n) < 0.1  # equal log-probabilities for the first two entries
    logprobs[ties, 1] = logprobs[ties, 0]
    masked = rng.random(n) < 0.05  # a masked token at the end of the list
    logprobs[masked, -1] = -np.inf
    return ids, logprobs.astype(np.float32)


def _rank_and_logprob(ids, logprobs, token):
    """The token's rank and log-probability under the model whose top-k these are."""
    n, k = ids.shape
    hit = ids == token[:, None]
    found = hit.any(1)
    j = hit.argmax(1)
    lp = np.where(found, logprobs[np.arange(n), j], logprobs[:, -1] - 1.0)
    above = (logprobs > lp[:, None]).sum(1)
    rank = np.where(found, above + 1, k + 1 + (token % 7))
    return rank.astype(np.int32), np.where(np.isfinite(lp), lp, -30.0).astype(np.float32)


def build(
    path: Path,
    lengths: list[int],
    k: int = 5,
    seed: int = 0,
    sampled: float = 0.4,
    commit: list[bool] | None = None,
    unit_size: int = 2,
    candidates: list[int] | None = None,
    format_version: int = FORMAT_VERSION,
    chunk: int = CHUNK_POSITIONS,
) -> Store:
    """A store of `len(lengths)` answers; `commit[u]` False leaves unit u pending; top-k ids
    drawn from `candidates` (default: `CANDIDATES` ids from `FIRST_ID`). In format 3 the
    published metrics are stored as `score` stores them; in format 2 the analysis computes them.
    `chunk`: rows per chunk (format 4: per inner chunk of each unit's shard)."""
    rng = np.random.default_rng(seed)
    total = int(sum(lengths))
    pool = np.array(candidates or range(FIRST_ID, FIRST_ID + CANDIDATES))
    a_ids, a_lp = _lists(rng, total, k, pool)
    b_ids, b_lp = _lists(rng, total, k, pool)
    take_second = rng.random(total) < sampled
    token = np.where(take_second, a_ids[:, 1], a_ids[:, 0]).astype(np.int32)
    tokenizer = train_tiny_tokenizer(default_corpus(), 300)
    store = create(
        path,
        ids=[f"ex{i}" for i in range(len(lengths))],
        lengths=np.array(lengths, np.int32),
        token_ids=token,
        flags={},
        unit_size=unit_size,
        top_k=k,
        meta={
            "fingerprint": {"aligned": "a", "base": "b", "data_sha256": "d", "limit": None},
            "vocab_size": 300,
        },
        tokenizer=tokenizer,
        overwrite=True,
        format_version=format_version,
        chunk=chunk,
    )
    base_rank, base_logprob = _rank_and_logprob(b_ids, b_lp, token)
    aligned_rank, aligned_logprob = _rank_and_logprob(a_ids, a_lp, token)
    _, base_at_a1 = _rank_and_logprob(b_ids, b_lp, a_ids[:, 0])
    at_a_top = np.repeat(base_at_a1[:, None], k, 1)  # column 0 is what the analysis reads
    rank_of_b1, _ = _rank_and_logprob(a_ids, a_lp, b_ids[:, 0])
    arrays = {
        "aligned/top_ids": a_ids,
        "aligned/top_logprobs": a_lp,
        "base/top_ids": b_ids,
        "base/top_logprobs": b_lp,
        "base/rank": base_rank,
        "base/logprob": base_logprob,
        "aligned/rank": aligned_rank,
        "aligned/logprob": aligned_logprob,
        "base/logprobs_at_aligned_top": at_a_top,
        "aligned/rank_of_base_top1": rank_of_b1,
        "positions/kl": rng.exponential(0.2, total).astype(np.float32),
        "positions/kl_aligned_base": rng.exponential(0.3, total).astype(np.float32),
        "positions/js": rng.exponential(0.05, total).astype(np.float32),
    }
    if format_version >= 3:
        arrays.update(stored_arrays(arrays))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    for unit in store.units():
        if commit is not None and not commit[unit.index]:
            continue
        lo = int(offsets[unit.examples.start])
        rows = slice(lo, lo + unit.positions)
        store.write_rows(unit, {name: v[rows] for name, v in arrays.items()})
        store.mark_committed(unit)
    return Store(path, mode="r")
