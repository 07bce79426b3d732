"""The schema of a store's per-position arrays: the one place an array's name, group, dtype, fill
and dimensions are written.

Every reader and writer derives from it: `create` makes the arrays, `Store.columns` says which of
them a store holds, the heads' result containers take their dtypes from it (`engine/rows.py`),
and `show`, `export`, the report and the API list the arrays it names. A new per-position array
is one line here (and its values, written by whoever computes them).
"""

from __future__ import annotations

from dataclasses import dataclass

from zarr.codecs import BloscCodec, Crc32cCodec

#: 1: tdsdist 0.1.0 (one head per model, top-k KL only). 2: the pair head's arrays (exact
#: divergences, ties, both top-k cross log-probabilities) and a crc32c checksum on every chunk of
#: the per-position arrays. Stores of format 1 keep opening; their missing arrays read as absent.
#: 3: AlignTDS's top-k metrics per position (`published/...`), computed when a unit is scored
#: (`analysis/published.py`) so that the analysis reads 8 small arrays instead of four [P, k]
#: tables; in stores of format 1 and 2 the analysis computes them from those tables.
#: 4: one shard per per-position array and unit (see the package docstring); inner chunks and
#: every array as in 3. Stores of formats 1-3 keep opening and resume in their own format.
FORMAT_VERSION = 4
CHUNK_POSITIONS = 4096
#: About what one answer position takes on disk in format 3 (both models' statistics, top-k ids
#: and log-probabilities, divergences; compressed): what a disk-full message says a run needs.
BYTES_PER_POSITION = 400
#: A new store's own files before any position (metadata, empty arrays, tokenizer files): about
#: 1 MB on a file system of 4 KB blocks (measured on the tests' tiny store), one block a file.
NEW_STORE_BYTES = 1_000_000
MODELS = ("aligned", "base")
COMPRESSOR = BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")
#: After compression: a damaged chunk fails its checksum on read instead of decoding to numbers.
CHECKSUM = Crc32cCodec()


@dataclass(frozen=True)
class Column:
    """One per-position array: `[P]`, or `[P, k]` when `per_candidate`."""

    name: str
    dtype: str
    fill: float | int
    per_candidate: bool = False

    @property
    def integer(self) -> bool:
        """Whether the values are counts or ids (stored as integers)."""
        return self.dtype.startswith(("int", "uint"))

    @property
    def dims(self) -> tuple[str, ...]:
        """The axes' names (Zarr v3 dimension names: xarray reads them)."""
        return ("position", "k") if self.per_candidate else ("position",)


#: Per model (`aligned/...`, `base/...`): what the scoring head returns for each position.
MODEL_ARRAYS = (
    Column("top_ids", "int32", -1, per_candidate=True),
    Column("top_logprobs", "float32", float("nan"), per_candidate=True),
    Column("logprob", "float32", float("nan")),
    Column("rank", "int32", 0),
    Column("entropy", "float32", float("nan")),
)
MODEL_STATS = tuple(c.name for c in MODEL_ARRAYS)
#: The base model only: its log-probabilities at the aligned model's top-k ids.
BASE_ARRAYS = (Column("logprobs_at_aligned_top", "float32", float("nan"), per_candidate=True),)
#: Both models together (`positions/...`); `token_id` is written at creation.
POSITION_ARRAYS = (Column("token_id", "int32", -1), Column("kl", "float32", float("nan")))
#: Exact divergences between the two next-token distributions at each position (format 2).
DIVERGENCES = ("kl_aligned_base", "kl_base_aligned", "js", "tv")
#: The pair head's arrays (format 2), by group: exact divergences over the full vocabulary, tie
#: counts, the aligned log-probabilities at the base top-k and the aligned rank of the base top 1.
PAIR_ARRAYS = {
    "positions": tuple(Column(name, "float32", float("nan")) for name in DIVERGENCES),
    "aligned": (
        Column("ties", "int32", -1),
        Column("logprobs_at_base_top", "float32", float("nan"), per_candidate=True),
        Column("rank_of_base_top1", "int32", 0),
    ),
    "base": (Column("ties", "int32", -1),),
}
#: AlignTDS's top-k metrics as published and tdsdist's top-1 ones (format 3; their formulas in
#: `analysis/published.py`, whose `METRICS` lists them with the aligned rank of the base top 1).
PUBLISHED_ARRAYS = (
    *(
        Column(name, "float32", float("nan"))
        for name in ("jaccard", "ndcg", "kl_partial", "weighted_sum", "top_prob")
    ),
    Column("top_rank", "int32", -1),
    Column("aligned_top1_base_rank", "int32", -1),
    Column("top1_differs", "int8", -1),
)
#: Nudged decoding only (`tdsdist nudge`): 1 where the aligned model chose the position's token,
#: 0 where the base model did. Absent from every other store (`Store.nudged`).
NUDGED = Column("nudged", "int8", -1)


def per_position_arrays(format_version: int, nudged: bool = False) -> dict[str, tuple[Column, ...]]:
    """Every per-position array of a store of this format (and of a nudged store), by group."""
    groups = {
        "positions": POSITION_ARRAYS,
        "aligned": MODEL_ARRAYS,
        "base": MODEL_ARRAYS + BASE_ARRAYS,
    }
    if format_version >= 2:
        groups = {g: columns + PAIR_ARRAYS[g] for g, columns in groups.items()}
    if format_version >= 3:
        groups["published"] = PUBLISHED_ARRAYS
    if nudged:
        groups["positions"] = groups["positions"] + (NUDGED,)
    return groups


def paths(groups: dict[str, tuple[Column, ...]]) -> dict[str, Column]:
    """`group/name` -> column, in order, of columns given by group."""
    return {f"{group}/{c.name}": c for group, columns in groups.items() for c in columns}


def columns_of(format_version: int, nudged: bool = False) -> dict[str, Column]:
    """`group/name` -> column: every per-position array of a store of this format, in order."""
    return paths(per_position_arrays(format_version, nudged))


def column(path: str) -> Column:
    """The column `group/name` of the newest format (where the heads look up their dtypes); a
    `KeyError` naming it for an unknown one."""
    try:
        return columns_of(FORMAT_VERSION, nudged=True)[path]
    except KeyError:
        raise KeyError(f"{path}: not a per-position array of the store schema") from None


def flat_name(path: str) -> str:
    """An array's name in a flat table (`export`'s columns, the API's example keys):
    `aligned/rank` -> `aligned_rank`, `positions/js` -> `js`."""
    group, _, name = path.partition("/")
    return name if group == "positions" else f"{group}_{name}"
