"""The Zarr v3 store: ragged per-position arrays, one writer per work unit, resumable.

Layout (P = positions, including the alignment gaps between units; k = top-k):

    zarr.json                      attrs: tdsdist (fingerprint, config, layout), timing
    examples/id                    [E] str
    examples/offset, length        [E] int64 / int32: rows of the example in the position arrays
    examples/unit                  [E] int32
    examples/answer_truncated      [E] bool   (also aligned_/base_context_truncated)
    examples/aligned_context_length, base_context_length   [E] int32
    units/committed                [U] uint8, chunk 1: each unit owns its flag
    positions/token_id             [P] int32  the answer tokens (written at creation)
    positions/kl                   [P] float32  top-k KL (a lower bound of kl_aligned_base)
    positions/{kl_aligned_base, kl_base_aligned, js, tv}   [P] float32  (format 2)
    positions/nudged               [P] int8  1: the aligned model chose the token (`nudge` only)
    aligned/{top_ids [P,k] int32, top_logprobs [P,k] f32, logprob, rank, entropy [P]}
    aligned/{ties [P] int32, logprobs_at_base_top [P,k] f32, rank_of_base_top1 [P] int32}  (2)
    base/{the same five, plus logprobs_at_aligned_top [P,k] f32; ties [P] int32 (2)}
    published/{jaccard, ndcg, kl_partial, weighted_sum, top_prob [P] f32; top_rank,
               aligned_top1_base_rank [P] int32; top1_differs [P] int8}   (format 3)
    tokenizer/<file name>          [bytes] uint8: the tokenizer files, so analysis needs no model
    contexts/...                   optional: the instruction and both contexts' ids per example
                                   (`contexts.py`; absent in older stores: "not recorded")

Formats 1-3: each unit's rows start on a chunk boundary and span whole chunks (4,096 positions),
one file per array and chunk, so two writers never touch the same file. Format 4: one file per
array and unit (Zarr v3's sharding codec). The store's shard length `S` is fixed at creation from
the plan: the largest unit's positions rounded up to the inner chunk (4,096 positions), at least
one chunk (`shard_positions`). Unit `u` owns rows `[u * S, (u + 1) * S)`, exactly one shard of
every per-position array, and nothing else: data-parallel ranks, array tasks and resumed runs
never write the same file (zarr-python warns that concurrent partial writes into one shard are
read-modify-write races that lose data). A unit's shard is written in one write of the whole
shard region (`Store.write_rows` pads the rows to `S` with the fill value), so zarr never merges
into an old shard; the rows past the unit's positions are fill, and an inner chunk that holds
only fill is not stored (an unscored unit, a short unit's tail and the padding cost no bytes).
From format 2 on every chunk of a per-position array (format 4: every inner chunk, and each
shard's index) ends in a crc32c checksum, so a damaged chunk is one error naming the array and
the unit. Everything that is known before scoring (ids, offsets, tokens) is written once, by the
creator. A unit's flag is set only after its data is written, so a crash leaves it pending and a
re-run rewrites it.

What a unit size costs in format 4 (per-position arrays: 29; `units/committed`: one file per
unit; about 50 further files of examples, tokenizer and metadata): files = 30 x units + a
constant (1M answers at unit size 256: about 117,000 files; format 3 needs a file per 4,096
positions whatever the unit size: about 2.2M). The largest file is the shard of a `[P, k]`
float32 array (about 70 B per position at k=20): 5.3 MB measured for a unit of 256 answers of
300 tokens (`tools/bench/scale.py`), four times that at 1,024. A kill loses the units being scored
(each rank's current unit): at most `unit_size` answers per rank. While scoring, a unit's rows
are held on the host until its shard is written (about 400 B per position, the same in format 3:
`score` writes a unit once, at its end): 31 MB at 256 x 300, 123 MB at 1,024 x 300; the
accelerator's memory is bounded by the batch and the head's chunk, not by the unit. Since the
shard length is the largest unit's, the logical position axis is `units x S`: 13% over the
positions measured for units of 256 answers of varied lengths (the padding costs no bytes, but
readers' masks cover every row).
"""

from tdsdist.store.checks import DamagedChunk
from tdsdist.store.reader import Store
from tdsdist.store.schema import (
    BASE_ARRAYS,
    BYTES_PER_POSITION,
    CHECKSUM,
    CHUNK_POSITIONS,
    COMPRESSOR,
    DIVERGENCES,
    FORMAT_VERSION,
    MODEL_ARRAYS,
    MODEL_STATS,
    MODELS,
    NEW_STORE_BYTES,
    NUDGED,
    PAIR_ARRAYS,
    POSITION_ARRAYS,
    PUBLISHED_ARRAYS,
    Column,
    columns_of,
    flat_name,
    per_position_arrays,
)
from tdsdist.store.units import UnitRows, layout, shard_positions
from tdsdist.store.writer import GroupWriter, StoreExists, create

__all__ = [
    "BASE_ARRAYS",
    "BYTES_PER_POSITION",
    "CHECKSUM",
    "CHUNK_POSITIONS",
    "COMPRESSOR",
    "DIVERGENCES",
    "FORMAT_VERSION",
    "MODELS",
    "MODEL_ARRAYS",
    "MODEL_STATS",
    "NEW_STORE_BYTES",
    "NUDGED",
    "PAIR_ARRAYS",
    "POSITION_ARRAYS",
    "PUBLISHED_ARRAYS",
    "Column",
    "DamagedChunk",
    "GroupWriter",
    "Store",
    "StoreExists",
    "UnitRows",
    "columns_of",
    "create",
    "flat_name",
    "layout",
    "per_position_arrays",
    "shard_positions",
]
