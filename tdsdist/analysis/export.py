"""`tdsdist export`: a store's committed positions as one Parquet table, for pandas, polars, DuckDB.

One row per answer position of a committed unit (pending units and the alignment gaps between
units are not rows). Columns, in order (`COLUMNS`):

    example_index int32, example_id string, t int32 (position in the answer), token_id int32,
    token string (`decode([id])`, SentencePiece's word-initial space restored: `token_text.py`),
    aligned_/base_ logprob float32, rank int32, entropy float32,
    kl_aligned_base, kl_base_aligned, js, tv float32 (exact, the pair head; null in format-1
    stores), topk_kl float32 (KL over the aligned top-k + tail, a lower bound: `metrics.py`),
    category dictionary<int8, string> (unshifted / marginal / shifted by the base rank).

Filters leave positions out (the same positions `analyze` leaves out), so the table holds exactly
what the statistics count. The table is streamed one block of store rows at a time, one Parquet
row group per block, so memory is bounded by the block size whatever the store's size; it is
written under a temporary name and renamed at the end, so an interrupted export leaves nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tdsdist.analysis.summary import Filters, Thresholds, _blocks
from tdsdist.analysis.token_text import TokenText
from tdsdist.errors import TdsError
from tdsdist.files import staged_file
from tdsdist.metrics import CATEGORIES
from tdsdist.store import DIVERGENCES, MODELS, Store

MODEL_COLUMNS = (("logprob", pa.float32()), ("rank", pa.int32()), ("entropy", pa.float32()))
CATEGORY_TYPE = pa.dictionary(pa.int8(), pa.string())
SCHEMA = pa.schema(
    [
        ("example_index", pa.int32()),
        ("example_id", pa.string()),
        ("t", pa.int32()),
        ("token_id", pa.int32()),
        ("token", pa.string()),
        *[(f"{m}_{name}", kind) for m in MODELS for name, kind in MODEL_COLUMNS],
        *[(name, pa.float32()) for name in DIVERGENCES],
        ("topk_kl", pa.float32()),
        ("category", CATEGORY_TYPE),
    ]
)
COLUMNS = tuple(SCHEMA.names)


def export_parquet(
    store: Store,
    path: Path | str,
    thresholds: Thresholds = Thresholds(),
    filters: Filters = Filters(),
) -> dict[str, Any]:
    """Write the table to `path` (replacing a file there, once complete); returns rows and row
    groups written."""
    path = Path(path)
    if not path.parent.is_dir():
        raise TdsError(f"{path}: the folder {path.parent} does not exist")
    if path.is_dir():
        raise TdsError(f"{path}: is a folder; give a file name (e.g. {path / 'positions.parquet'})")
    special = np.array(sorted(store.tokenizer().all_special_ids), np.int64) if filters.exclude_special_tokens else np.zeros(0, np.int64)  # fmt: skip
    token_text = TokenText(store.tokenizer())
    ids = np.array(store.ids, dtype=object)
    meta = {
        "store": str(store.path),
        "format_version": store.format_version,
        "thresholds": vars(thresholds),
        "filters": vars(filters),
        "exact_divergences": store.has_pair,
        "config": store.meta.get("fingerprint", {}),
    }
    schema = SCHEMA.with_metadata({"tdsdist": json.dumps(meta, default=str)})
    rows = groups = 0
    with staged_file(path) as tmp:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for table in _tables(store, thresholds, special, filters, token_text, ids):
                writer.write_table(table, row_group_size=max(table.num_rows, 1))
                rows, groups = rows + table.num_rows, groups + 1
    return {"path": str(path), "rows": rows, "row_groups": groups}


def _tables(store, thresholds, special, filters, token_text, ids):
    """One `pa.Table` per block of store rows, filtered positions left out."""
    for rows, valid, t, _, example in _blocks(store):
        tokens = store.read("positions/token_id", rows)[valid]
        keep = (t >= filters.exclude_first) & ~np.isin(tokens, special)
        if keep.any():
            where = np.flatnonzero(valid)[keep]  # rows of the block that become table rows
            yield _table(store, rows, where, t[keep], example[keep], tokens[keep], thresholds, token_text, ids)  # fmt: skip


def _table(store, rows, where, t, example, tokens, thresholds, token_text, ids) -> pa.Table:
    def column(name: str) -> np.ndarray:
        return store.read(name, rows)[where]

    rank = column("base/rank")
    data: dict[str, pa.Array] = {
        "example_index": pa.array(example.astype(np.int32)),
        "example_id": pa.array(ids[example], pa.string()),
        "t": pa.array(t.astype(np.int32)),
        "token_id": pa.array(tokens.astype(np.int32)),
        "token": _token_strings(token_text, tokens),
    }
    for model in MODELS:
        for name, kind in MODEL_COLUMNS:
            values = rank if (model, name) == ("base", "rank") else column(f"{model}/{name}")
            data[f"{model}_{name}"] = pa.array(values, kind)
    for name in DIVERGENCES:  # format 1 has none: a null column of the same type
        data[name] = pa.array(column(f"positions/{name}")) if store.has_pair else pa.nulls(len(where), pa.float32())  # fmt: skip
    data["topk_kl"] = pa.array(column("positions/kl"))
    codes = pa.array(thresholds.categorize(rank).astype(np.int8))
    data["category"] = pa.DictionaryArray.from_arrays(codes, pa.array(CATEGORIES))
    return pa.table(data, schema=SCHEMA)


def _token_strings(token_text: TokenText, tokens: np.ndarray) -> pa.Array:
    """Each id's text, decoded once per distinct id of the block (and cached across blocks)."""
    unique, inverse = np.unique(tokens, return_inverse=True)
    table = token_text.table(unique)
    texts = np.array([table.get(str(int(i)), "") for i in unique], dtype=object)
    return pa.array(texts[inverse], pa.string())
