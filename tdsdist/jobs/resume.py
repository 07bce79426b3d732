"""The scoring job's store: resume one made by the same configuration, or create it.

A store made by `generate --store` holds the generated answers and waits for its base
model: its open fingerprint keys are filled in once, and the plan takes the generated token ids
as the answers (re-tokenizing the answer text need not give back the ids the model generated).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tdsdist.config import ScoreConfig
from tdsdist.errors import TdsError
from tdsdist.inputs.data import Example
from tdsdist.inputs.fingerprint import BASE_KEYS, differences
from tdsdist.inputs.plan import Plan
from tdsdist.jobs.prepare import Prepared
from tdsdist.safe_replace import check_replaceable_store
from tdsdist.store import Store, StoreExists, create
from tdsdist.store.contexts import ExampleContexts, StoredContexts, add_contexts
from tdsdist.store.fields import ExampleFields, Writers, select
from tdsdist.store.units import unit_ranges


def open_or_create_store(prep: Prepared) -> Store:
    """Resume a store made by the same configuration, or create it; refuse any other store."""
    path = Path(prep.config.store)
    if path.exists() and not prep.config.overwrite:
        return resume_store(path, prep)
    if prep.config.overwrite:
        check_replaceable_store(path)
    try:
        return create_store(prep)
    except StoreExists:
        return resume_store(path, prep)


def resume_store(path: Path, prep: Prepared) -> Store:
    if not path.is_dir() or not (path / "zarr.json").exists():
        raise TdsError(f"{path}: exists and is not a tdsdist store (use another --store)")
    store = Store(path)
    stored = dict(store.meta.get("fingerprint", {}))
    adopt_head_dtype(prep, stored)
    # A store made by `generate` waits for its base model: the base keys are filled in once.
    open_keys = [k for k in BASE_KEYS if generated(store) and stored.get(k) is None]
    if generated(store) and prep.vocab_union is not None and "base_tokenizer_sha256" not in stored:
        open_keys.append("base_tokenizer_sha256")  # the base chosen now appends to the union
    # The version that made a store is recorded, not required: a later tdsdist resumes it.
    diffs = differences(stored, prep.fingerprint, (*open_keys, "tdsdist_version"))
    if diffs:
        raise TdsError(
            f"{path}: the store was made with a different configuration ({'; '.join(diffs)});"
            " use --overwrite to start over"
        )
    if "base_tokenizer_sha256" in open_keys:  # before anything is written
        check_answers_in_base(prep, store, store.read("positions/token_id"))
    if open_keys:
        stored.update({k: prep.fingerprint[k] for k in open_keys})
        store.root.attrs["tdsdist"] = {**store.meta, "fingerprint": stored, **union_meta(prep)}
        store = Store(path)
        add_base_contexts(store, prep)
    return store


def union_meta(prep: Prepared) -> dict[str, Any]:
    """`vocab_union: {base: V_b, aligned: V_a}`, only for a vocabulary union (old stores lack it)."""
    return {} if prep.vocab_union is None else {"vocab_union": prep.vocab_union.meta()}


def add_base_contexts(store: Store, prep: Prepared) -> None:
    """A store recorded by `generate` kept the instruction and the aligned context; its base
    context is known once the base template is: kept now, beside them. A store without the
    contexts group (an older release) is left as it is."""
    if not StoredContexts(store).recorded:
        return
    by_id = {it.example.id: it for it in prep.plan.items}
    if all(i in by_id for i in store.ids):
        add_contexts(store, "base", [by_id[i].base_context for i in store.ids])


def adopt_head_dtype(prep: Prepared, stored: dict[str, Any]) -> None:
    """Without `--head-dtype`, an existing store keeps the head it was made with: one without the
    key (tdsdist 0.1.0, or a float32 model) projected in the model's dtype."""
    if prep.config.head_dtype is None and "head_dtype" not in stored:
        prep.fingerprint.pop("head_dtype", None)
        prep.head_dtype = "model"


def generated(store: Store) -> bool:
    """Whether `tdsdist generate --store` made the store: its answers are the generated token
    ids, and its base side waits for a model. (The meta key keeps its 0.1.0 name: that release
    recorded the aligned side too; `jobs.legacy` reads it back from a store of format 1.)"""
    return bool(store.meta.get("recorded_aligned"))


def adopt_recorded_answers(prep: Prepared, store: Store) -> Plan:
    """The plan with the generated token ids as answers: re-tokenizing the answer text need not
    give back the ids the model generated, and the base must score exactly those."""
    by_id = {it.example.id: it for it in prep.plan.items}
    missing = [i for i in store.ids if i not in by_id]
    if missing:
        raise TdsError(
            f"{prep.config.data}: example id {missing[0]!r} of the store is not in the data"
        )
    tokens = store.read("positions/token_id")
    items = [
        dataclasses.replace(by_id[i], answer=tokens[store.rows(e)].tolist())
        for e, i in enumerate(store.ids)
    ]
    return Plan(items, unit_ranges(len(items), store.meta["unit_size"]))


def check_answers_in_base(prep: Prepared, store: Store, tokens: np.ndarray) -> None:
    """Generated answers use the aligned vocabulary: an appended id (a chat token) cannot be fed
    to the base model, which has no embedding for it."""
    if prep.vocab_union is None:
        return
    outside = np.flatnonzero(tokens >= prep.vocab_union.base)
    if outside.size:
        e = int(np.searchsorted(store.offsets, outside[0], side="right")) - 1
        token = prep.tokenizer.convert_ids_to_tokens(int(tokens[outside[0]]))
        raise TdsError(
            f"{store.path}: example {e} (id {store.ids[e]!r}): generated token {token!r} (id"
            f" {int(tokens[outside[0]])}) is appended to the aligned vocabulary and the base model"
            f" has no embedding for it (base ids < {prep.vocab_union.base}); field positions/token_id"
        )


def create_store(prep: Prepared) -> Store:
    """The store's skeleton: ids, offsets, answer tokens, flags, tokenizer, fingerprint."""
    path = Path(prep.config.store)
    items = prep.plan.items
    lengths = np.array([it.positions for it in items], dtype=np.int32)
    flags = {
        "answer_truncated": np.array([it.answer_truncated for it in items], dtype=bool),
        "aligned_context_truncated": np.array(
            [it.aligned_context_truncated for it in items], dtype=bool
        ),
        "base_context_truncated": np.array([it.base_context_truncated for it in items], dtype=bool),
        "aligned_context_length": np.array(
            [len(it.aligned_context) for it in items], dtype=np.int32
        ),
        "base_context_length": np.array([len(it.base_context) for it in items], dtype=np.int32),
    }
    return create(
        path,
        ids=[it.example.id for it in items],
        lengths=lengths,
        token_ids=np.concatenate([np.asarray(it.answer, dtype=np.int32) for it in items]),
        flags=flags,
        unit_size=prep.config.unit_size,
        top_k=prep.config.top_k,
        meta={
            "fingerprint": prep.fingerprint,
            "config": dataclasses.asdict(prep.config),
            "vocab_size": len(prep.tokenizer),
            "shared_prefix_tokens": {k: len(v) for k, v in prep.prefixes.items()},
            **union_meta(prep),
        },
        tokenizer=prep.tokenizer,
        overwrite=prep.config.overwrite,
        contexts=Writers(
            (
                ExampleContexts(
                    [it.example.instruction for it in items],
                    [it.aligned_context for it in items],
                    [it.base_context for it in items],
                ),
                ExampleFields(_kept_fields(prep.config, [it.example for it in items])),
            )
        ),
    )


def _kept_fields(config: ScoreConfig, examples: Sequence[Example]) -> dict[str, list[Any]]:
    """`--keep-fields` of the examples' scalar metadata (`store/fields.py`)."""
    texts = {config.id_field, config.instruction_field, config.input_field, config.output_field}
    records = [dict(ex.metadata) for ex in examples]
    return select(records, config.keep_fields, texts, config.data)
