"""`tdsdist export`: a store's committed positions as one Parquet table, for pandas, polars, DuckDB.

One row per answer position of a committed unit (pending units and the alignment gaps between
units are not rows). Columns, in order (`COLUMNS`):

    example_index int32, example_id string, t int32 (position in the answer), token_id int32,
    token string (`decode([id])`, SentencePiece's word-initial space restored: `token_text.py`;
    both strings dictionary-encoded: categorical in pandas),
    aligned_/base_ logprob float32, rank int32, entropy float32 (nats),
    aligned_/base_branching float32 (exp(entropy): the branching factor of Yang & Holtzman),
    base_top1_prob float32 (the base model's probability of its own top 1),
    kl_aligned_base, kl_base_aligned, js, tv float32 (exact, the pair head; null in format-1
    stores), topk_kl float32 (KL over the aligned top-k + tail, a lower bound: `metrics.py`),
    category dictionary<int8, string> (unshifted / marginal / shifted by the base rank),
    published_<metric> (AlignTDS's top-k metrics as published, and tdsdist's top-1 ones:
    `published.METRICS`; float32, the ranks int32, `published_top1_differs` bool; null where the
    store lacks an input, e.g. `published_base_top1_aligned_rank` in format-1 stores),
    nudged bool (a nudged store only, `tdsdist nudge`: the aligned model chose the token),
    field_<name> per input field the store kept (`store/fields.py`; bool, int64, float64 or string
    as the values are; null where an example lacks it), and with `--group-by FIELD` a last
    column `group` (string: the group's name as `analyze --group-by` prints it).

Filters leave positions out (the same positions `analyze` leaves out), so the table holds exactly
what the statistics count. The table is streamed one block of store rows at a time, one Parquet
row group per block, so memory is bounded by the block size whatever the store's size; it is
written under a temporary name and renamed at the end, so an interrupted export leaves nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tdsdist.analysis import show
from tdsdist.analysis.chunks import BlockReader, committed_blocks
from tdsdist.analysis.groups import label_of
from tdsdist.analysis.published import NAMES as PUBLISHED
from tdsdist.analysis.published import Read, read_block
from tdsdist.analysis.published import inputs as published_inputs
from tdsdist.analysis.token_text import TokenText
from tdsdist.analysis_options import Filters, Thresholds
from tdsdist.errors import TdsError
from tdsdist.files import staged_file
from tdsdist.metrics import CATEGORIES
from tdsdist.safe_replace import check_replaceable_parquet
from tdsdist.store import DIVERGENCES, MODELS, Column, Store, flat_name
from tdsdist.store.fields import field_names, read_field
from tdsdist.store.schema import column

#: Each model's `[P]` statistics in the table, with the store's dtypes.
MODEL_COLUMNS = tuple(
    (name, pa.from_numpy_dtype(np.dtype(column(f"base/{name}").dtype)))
    for name in ("logprob", "rank", "entropy")
)
#: Store arrays the table lays out by name (`SCHEMA`, `nudged`) or derives its columns from (the
#: top-k tables: `base_top1_prob`, `topk_kl`, the `published/` group: `published_*`), and those it
#: leaves out (the tie counts; the aligned rank of the base top 1 is
#: `published_base_top1_aligned_rank`): the arrays `show` lays out or leaves out, too. Every
#: other per-position array a store holds is a column of its own after `nudged`, named as
#: `open_store(...).example` names it (`schema.flat_name`): an array added to the schema needs no
#: code here.
LAID_OUT = show.LAID_OUT | show.NOT_SHOWN
CATEGORY_TYPE = pa.dictionary(pa.int8(), pa.string())
TEXT_TYPE = pa.dictionary(pa.int32(), pa.string())  # pandas: categorical; DuckDB: VARCHAR


def _published_type(name: str) -> pa.DataType:
    if name == "top1_differs":
        return pa.bool_()
    return pa.int32() if name.endswith("rank") else pa.float32()


SCHEMA = pa.schema(
    [
        ("example_index", pa.int32()),
        ("example_id", TEXT_TYPE),
        ("t", pa.int32()),
        ("token_id", pa.int32()),
        ("token", TEXT_TYPE),
        *[(f"{m}_{name}", kind) for m in MODELS for name, kind in MODEL_COLUMNS],
        *[(f"{m}_branching", pa.float32()) for m in MODELS],
        ("base_top1_prob", pa.float32()),
        *[(name, pa.float32()) for name in DIVERGENCES],
        ("topk_kl", pa.float32()),
        ("category", CATEGORY_TYPE),
        *[(f"published_{name}", _published_type(name)) for name in PUBLISHED],
    ]
)
COLUMNS = tuple(SCHEMA.names)

BLOCK_ROWS = 1 << 18  # rows read and written at once: one Parquet row group per block


def _field_columns(store: Store, group_by: str | None) -> dict[str, pa.Array]:
    """`{column: [E] array}`: each kept field, one value per example (taken per row later)."""
    columns = {}
    for name in field_names(store):
        values = read_field(store, name)
        kinds = {type(v) for v in values if v is not None}
        if kinds == {bool}:
            kind = pa.bool_()
        elif kinds == {int}:
            kind = pa.int64()
        elif kinds and kinds <= {int, float}:
            kind = pa.float64()
        else:
            kind = pa.string()
            values = [v if v is None or isinstance(v, str) else json.dumps(v) for v in values]
        columns[f"field_{name}"] = pa.array(values, kind)
    if group_by is not None:
        columns["group"] = pa.array([label_of(v) for v in read_field(store, group_by)], pa.string())
    return columns


def export_parquet(
    store: Store,
    path: Path | str,
    thresholds: Thresholds = Thresholds(),
    filters: Filters = Filters(),
    group_by: str | None = None,
) -> dict[str, Any]:
    """Write the table to `path` (replacing a file there, once complete); returns rows and row
    groups written."""
    path = Path(path)
    fields = _field_columns(store, group_by)  # a missing --group-by field: before any work
    if not path.parent.is_dir():
        raise TdsError(f"{path}: the folder {path.parent} does not exist")
    if path.is_dir():
        raise TdsError(f"{path}: is a folder; give a file name (e.g. {path / 'positions.parquet'})")
    check_replaceable_parquet(path)
    tokenizer = store.tokenizer()
    special = filters.special_ids(lambda: tokenizer)
    token_text = TokenText(tokenizer)
    ids = store.ids
    meta = {
        "store": str(store.path),
        "format_version": store.format_version,
        "thresholds": vars(thresholds),
        "filters": vars(filters),
        "exact_divergences": store.has_pair,
        "config": store.meta.get("fingerprint", {}),
    }
    nudged = [pa.field("nudged", pa.bool_())] if "positions/nudged" in store.columns else []
    others = [pa.field(flat_name(n), _arrow_type(c)) for n, c in _other_columns(store).items()]
    schema = pa.schema(
        [*SCHEMA, *nudged, *others, *(pa.field(k, v.type) for k, v in fields.items())]
    )
    schema = schema.with_metadata({"tdsdist": json.dumps(meta, default=str)})
    rows = groups = 0
    with staged_file(path) as tmp:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for table in _tables(store, thresholds, special, filters, token_text, ids):
                rows_of = pa.array(table.column("example_index").to_numpy())
                for name, values in fields.items():
                    table = table.append_column(name, values.take(rows_of))
                table = table.replace_schema_metadata(schema.metadata)
                writer.write_table(table, row_group_size=max(table.num_rows, 1))
                rows, groups = rows + table.num_rows, groups + 1
    return {"path": str(path), "rows": rows, "row_groups": groups}


def _tables(
    store: Store,
    thresholds: Thresholds,
    special: np.ndarray,
    filters: Filters,
    token_text: TokenText,
    ids: list[str],
) -> Iterator[pa.Table]:
    """One `pa.Table` per block of store rows, filtered positions left out."""
    reader = BlockReader(store)  # tdsdist's chunk files read directly, the arrays in threads
    names = [f"{m}/{n}" for m in MODELS for n, _ in MODEL_COLUMNS] + ["positions/kl"]
    names += [f"positions/{n}" for n in DIVERGENCES] if store.has_pair else []
    names += ["base/top_logprobs"] + published_inputs(store)
    nudged = "positions/nudged" in store.columns
    names += ["positions/nudged"] if nudged else []
    others = _other_columns(store)
    names += list(others)
    for rows, valid, t, _, example in committed_blocks(store, BLOCK_ROWS):
        reader.prefetch(names, rows)
        tokens = reader.read("positions/token_id", rows)[valid]
        keep = filters.keep(t, tokens, special)
        if keep.any():
            where = np.flatnonzero(valid)[keep]  # rows of the block that become table rows
            table = _table(
                store,
                reader.read,
                rows,
                where,
                t[keep],
                example[keep],
                tokens[keep],
                thresholds,
                token_text,
                ids,
            )
            if nudged:
                chose = reader.read("positions/nudged", rows)[where].astype(bool)
                table = table.append_column("nudged", pa.array(chose))
            for name, c in others.items():
                values = reader.read(name, rows)[where]
                table = table.append_column(flat_name(name), _arrow_values(values, c))
            yield table
        else:
            reader.forget()


def _table(
    store: Store,
    read: Read,
    rows: slice,
    where: np.ndarray,  # [n] rows of the block that become table rows
    t: np.ndarray,  # [n]
    example: np.ndarray,  # [n]
    tokens: np.ndarray,  # [n]
    thresholds: Thresholds,
    token_text: TokenText,
    ids: list[str],
) -> pa.Table:
    def column(name: str) -> np.ndarray:
        picked: np.ndarray = read(name, rows)[where]  # numpy's stubs: fancy indexing gives Any
        return picked

    rank = column("base/rank")
    data: dict[str, pa.Array] = {
        "example_index": pa.array(example.astype(np.int32)),
        "example_id": _example_ids(ids, example),
        "t": pa.array(t.astype(np.int32)),
        "token_id": pa.array(tokens.astype(np.int32)),
        "token": _token_strings(token_text, tokens),
    }
    for model in MODELS:
        for name, kind in MODEL_COLUMNS:
            values = rank if (model, name) == ("base", "rank") else column(f"{model}/{name}")
            data[f"{model}_{name}"] = pa.array(values, kind)
    for model in MODELS:  # the entropies again (read once: the reader hands each over once)
        entropy = data[f"{model}_entropy"].to_numpy(zero_copy_only=False)
        data[f"{model}_branching"] = pa.array(np.exp(entropy.astype(np.float64)), pa.float32())
    top1 = read("base/top_logprobs", rows)[:, 0][where]  # [n]
    data["base_top1_prob"] = pa.array(np.exp(top1.astype(np.float64)), pa.float32())
    for name in DIVERGENCES:  # format 1 has none: a null column of the same type
        data[name] = (
            pa.array(column(f"positions/{name}"))
            if store.has_pair
            else pa.nulls(len(where), pa.float32())
        )
    data["topk_kl"] = pa.array(column("positions/kl"))
    codes = pa.array(thresholds.categorize(rank).astype(np.int8))
    data["category"] = pa.DictionaryArray.from_arrays(codes, pa.array(CATEGORIES))
    published = read_block(read, rows, store)
    for name in PUBLISHED:
        kind, metric = _published_type(name), published.get(name)
        if metric is None:
            data[f"published_{name}"] = pa.nulls(len(where), kind)
        else:
            data[f"published_{name}"] = pa.array(metric[where].astype(kind.to_pandas_dtype()), kind)
    return pa.table(data, schema=SCHEMA)


def _other_columns(store: Store) -> dict[str, Column]:
    """The store's per-position arrays that `LAID_OUT` does not name: a column each."""
    return {
        name: c
        for name, c in store.columns.items()
        if name not in LAID_OUT and not name.startswith("published/")
    }


def _arrow_type(c: Column) -> pa.DataType:
    kind = pa.from_numpy_dtype(np.dtype(c.dtype))
    return pa.list_(kind) if c.per_candidate else kind


def _arrow_values(values: np.ndarray, c: Column) -> pa.Array:
    """`[n]` or `[n, k]` rows as the column's Arrow array (a list per row for `[n, k]`)."""
    if not c.per_candidate:
        return pa.array(values, _arrow_type(c))
    offsets = np.arange(0, values.size + 1, max(values.shape[1], 1), dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.reshape(-1)))


def _token_strings(token_text: TokenText, tokens: np.ndarray) -> pa.DictionaryArray:
    """Each id's text as a dictionary column: the block's distinct ids, decoded once (and cached
    across blocks), and one int32 index per row (no sort: a lookup table over the ids)."""
    tokens = np.maximum(tokens.astype(np.int64), 0)
    present = np.flatnonzero(np.bincount(tokens))  # [u] the block's distinct ids, ascending
    lookup = np.zeros(int(present[-1]) + 1, np.int32)
    lookup[present] = np.arange(len(present), dtype=np.int32)
    table = token_text.table(present)
    texts = pa.array([table.get(str(int(i)), "") for i in present], pa.string())
    return pa.DictionaryArray.from_arrays(pa.array(lookup[tokens]), texts)


def _example_ids(ids: list[str], example: np.ndarray) -> pa.DictionaryArray:
    """The ids of the block's examples as a dictionary column (an id per example, not per row)."""
    first, last = int(example.min()), int(example.max())
    return pa.DictionaryArray.from_arrays(
        pa.array((example - first).astype(np.int32)), pa.array(ids[first : last + 1], pa.string())
    )
